"""One film composed from its layers: regions, soft tissue, aerated lungs, findings, bones and
devices, then exposure (contrast, fog, noise) as an AP or PA film shows it.

``D`` is the density image (bright = dense) until :func:`_expose` maps it to display values.
Every step draws from the canvas' one generator, in this order, so the same generator state
gives the same phantom, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from cxrkit.synth.anatomy import (
    FIELD_OF_VIEW_MM,
    Anatomy,
    Canvas,
    body_mask,
    clavicles_and_shoulders,
    ecg_leads,
    heart_polygon,
    lung_outline,
    ribs,
    sample_anatomy,
    scapulae,
    spine,
    vessels,
    view_geometry,
)
from cxrkit.synth.drawing import blur, ellipse, fill, polyline, smooth_field, soft, tight_box
from cxrkit.synth.findings import DRAW, FINDINGS, Site, nih_name


@dataclass(kw_only=True)
class Phantom:
    """One rendered radiograph and its ground truth.

    Attributes:
        image: float32 (size, size) display intensity in [0, 1]; bright = dense (MONOCHROME2).
        masks: bool (size, size) arrays: ``lung`` (both lung fields, heart excluded), ``heart``, and
            one per rendered finding key of :data:`~cxrkit.synth.findings.FINDINGS`.
        boxes: ``(finding, x1, y1, x2, y2)`` per finding, the tight box of its mask in pixel edges
            (``0 <= x1 < x2 <= size``).
        nih_names: finding key -> NIH label (``nodule_mass`` becomes "Nodule" or "Mass" by size).
        view: "AP" or "PA".
        pixel_spacing_mm: detector pixel spacing implied by the 38 cm field of view.
        cardiothoracic_ratio: the CTR the heart was drawn with (AP magnification included).
        noise_sigma: standard deviation of the added white noise, display units.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    boxes: list[tuple[str, int, int, int, int]]
    nih_names: dict[str, str]
    view: str
    pixel_spacing_mm: float
    cardiothoracic_ratio: float
    noise_sigma: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_uint8(self) -> np.ndarray:
        """The image as uint8 (size, size), 0 = black."""
        return np.round(self.image * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class _Regions:
    """The film's masks, computed before any density so lesions can be placed inside the lungs."""

    lungs: dict[int, dict[str, np.ndarray]]  # side -> lung_outline(...)
    lung_side: dict[int, np.ndarray]  # side -> that lung field, heart and abdomen excluded
    lung: np.ndarray
    heart: np.ndarray
    aorta: np.ndarray
    abdomen: np.ndarray  # below the hemidiaphragms (liver on the image left, stomach right)


def _regions(c: Canvas) -> _Regions:
    a, g, S, u = c.a, c.g, c.size, c.u
    lungs = {side: lung_outline(c, side) for side in (-1, 1)}
    lung_poly = {side: fill(S, [lungs[side]["polygon"]]) for side in (-1, 1)}
    heart = fill(S, [heart_polygon(c)])
    knob_r = u(0.03)
    knob_y = u(0.28 + 0.5 * (g.apex_y - 0.12))
    aorta = fill(S, [ellipse(u(a.cx + 0.065), knob_y, knob_r, knob_r * 1.1, 0.0, 32)])
    dia_r, dia_l = lungs[-1]["diaphragm"], lungs[1]["diaphragm"]
    abdomen = fill(
        S,
        [
            np.concatenate(
                [
                    [[-1.0, dia_r[0, 1] + u(0.02)]],
                    dia_r,
                    dia_l[::-1],
                    [[S + 1.0, dia_l[0, 1] + u(0.02)], [S + 1.0, S + 1.0], [-1.0, S + 1.0]],
                ]
            )
        ],
    )
    heart &= ~abdomen
    lung_side = {side: lung_poly[side] & ~heart & ~aorta & ~abdomen for side in (-1, 1)}
    lung = lung_side[-1] | lung_side[1]
    return _Regions(
        lungs=lungs, lung_side=lung_side, lung=lung, heart=heart, aorta=aorta, abdomen=abdomen
    )


def _soft_tissue(c: Canvas, r: _Regions) -> tuple[np.ndarray, np.ndarray]:
    """Body, mediastinum, neck, abdomen, airway, gastric bubble, breasts: ``(D, body mask)``."""
    rng, a, g, S, u, sc = c.rng, c.a, c.g, c.size, c.u, c.scale
    xg, yg = c.xg, c.yg
    lungs, heart, aorta, abdomen = r.lungs, r.heart, r.aorta, r.abdomen
    body = body_mask(c)
    D = np.full((S, S), 0.05, np.float32)
    D[body] = 0.42
    mid_y = u(0.5 * (g.dome_r + g.dome_l))
    band = (np.abs(xg - u(a.cx)) < u(0.085)) & (yg < mid_y) & (yg > u(g.apex_y))
    dense = (band | heart | aorta) & body
    D[dense] = 0.68
    # the upper abdomen is dense inside the costal margins and no denser than the chest wall
    # outside them, so no edge runs across the flank
    flank = np.clip((u(g.half_width + 0.01) - np.abs(xg - u(a.cx))) / u(0.07), 0.0, 1.0)
    D = np.where(abdomen & body, 0.42 + 0.26 * flank, D).astype(np.float32)
    neck = (np.abs(xg - u(a.cx)) < u(0.07)) & (yg <= u(g.apex_y)) & body
    D[neck] = 0.58
    D = blur(D, 1.2 * sc)
    # body thickness: brighter towards the midline and down into the abdomen
    D += body * (0.06 * np.exp(-(((xg - u(a.cx)) / u(0.3)) ** 2))).astype(np.float32)
    D += (abdomen & body) * np.clip((yg - u(g.dome_r)) / u(0.4), 0, 1) * 0.06
    # trachea and main bronchi: an air column down the midline to the carina
    carina = np.array([u(a.cx + 0.005), u(0.30 + 0.5 * (g.apex_y - 0.12))])
    airway = np.zeros((S, S), np.float32)
    polyline(
        airway,
        np.array([[u(a.cx), -1.0], [u(a.cx), u(0.15)], carina]),
        value=1.0,
        thickness=u(0.034),
    )
    for side in (-1, 1):
        end = carina + np.array([side * u(0.055), u(0.045 if side < 0 else 0.06)])
        polyline(airway, np.stack([carina, end]), value=0.8, thickness=u(0.02))
    D -= blur(airway, 1.5 * sc) * body * 0.15
    # gastric bubble under the left hemidiaphragm
    bubble = fill(
        S,
        [
            ellipse(
                lungs[1]["dome"][0] + u(0.02),
                lungs[1]["dome"][1] + u(0.05),
                u(rng.uniform(0.03, 0.05)),
                u(0.025),
                rng.uniform(-10, 10),
            )
        ],
    )
    D -= soft(bubble & abdomen, 1.5 * sc) * rng.uniform(0.12, 0.22)
    if a.female:
        for side in (-1, 1):
            cpx, cpy = lungs[side]["cp"]
            breast = fill(
                S, [ellipse(cpx - side * u(0.09), cpy - u(0.06), u(0.14), u(0.1), side * 15.0)]
            )
            D += soft(breast & body, 5.0 * sc) * 0.07
    return D, body


def _aerated_lungs(c: Canvas, r: _Regions, D: np.ndarray) -> tuple[np.ndarray, ...]:
    """Aerated density with soft-tissue overlap at the margins, hilar shadows and vessels:
    ``(D, soft lung mask, distance to the lung edge, vessel layer)``."""
    rng, a, g, S, u, sc = c.rng, c.a, c.g, c.size, c.u, c.scale
    xg, yg = c.xg, c.yg
    lungs, lung = r.lungs, r.lung
    lung_f = soft(lung, 0.9 * sc)
    dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3)
    rim = np.exp(-dist / u(0.05))
    vertical = np.clip((yg - u(g.apex_y)) / u(g.dome_r - g.apex_y), 0, 1)
    texture = smooth_field(rng, S, max(12, S // 8))
    lung_value = a.lung_density + 0.16 * rim + 0.04 * vertical + 0.015 * texture
    D = D * (1.0 - lung_f) + lung_f * lung_value
    # hilar shadows (pulmonary arteries)
    for side in (-1, 1):
        hx, hy = lungs[side]["hilum"]
        D += (0.10 * np.exp(-(((xg - hx) / u(0.035)) ** 2 + ((yg - hy) / u(0.06)) ** 2))).astype(
            np.float32
        )
    markings = vessels(c, lungs) * lung_f
    return D, lung_f, dist, markings


def _findings(
    c: Canvas, r: _Regions, D: np.ndarray, markings: np.ndarray, site: Site, findings: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str], float | None]:
    """Draw each finding once; ``(D, masks, NIH names, nodule diameter in mm or None)``."""
    g, S = c.g, c.size
    masks: dict[str, np.ndarray] = {"lung": r.lung, "heart": r.heart}
    nih: dict[str, str] = {}
    nodule_mm = None
    lesion = np.zeros((S, S), np.float32)
    keep_vessels = np.ones((S, S), np.float32)
    for finding in findings:
        drawn = DRAW[finding](c, site)
        masks[finding] = drawn.mask
        lesion += drawn.add * g.lesion_gain
        keep_vessels *= drawn.keep
        if drawn.blend is not None:  # fluid replaces lung density (effusion)
            weight, value = drawn.blend
            weight = weight * g.lesion_gain
            D = D * (1.0 - weight) + weight * value
        nih[finding] = nih_name(finding, drawn)
        if drawn.size_mm is not None:
            nodule_mm = drawn.size_mm
    D += markings * keep_vessels + lesion
    return D, masks, nih, nodule_mm


def _bones_and_devices(
    c: Canvas, r: _Regions, D: np.ndarray, body: np.ndarray, lung_f: np.ndarray
) -> np.ndarray:
    rng, g, sc = c.rng, c.g, c.scale
    lungs, abdomen = r.lungs, r.abdomen
    D += spine(c, body) * (1.0 - 0.6 * soft(abdomen, 2.0 * sc))
    D += ribs(c, lungs, lung_f, body)
    D += clavicles_and_shoulders(c, body)
    D += scapulae(c, lungs, body)
    if g.view == "AP" and rng.random() < 0.6:
        D += ecg_leads(c, body)
    return D


def _expose(c: Canvas, D: np.ndarray) -> np.ndarray:
    """Density -> display image in [0, 1]: contrast and fog of the view, heel effect, gamma, blur,
    quantum noise (white and correlated)."""
    rng, g, S, sc = c.rng, c.g, c.size, c.scale
    xg = c.xg
    D = np.clip(D, 0.0, 1.2)
    D = g.fog + g.contrast * (D - 0.05) * (1.0 - g.fog) / 0.95
    D += 0.025 * smooth_field(rng, S, 4) + 0.02 * (xg / S - 0.5) * rng.choice([-1, 1])
    D = np.clip(D, 0.0, 1.0) ** rng.uniform(0.9, 1.1)
    D = blur(D.astype(np.float32), 0.5 * sc)
    noise = rng.standard_normal((S, S), dtype=np.float32) * g.noise
    noise += blur(rng.standard_normal((S, S), dtype=np.float32), 1.2 * sc) * (g.noise * 1.2)
    image = np.clip(D + noise, 0.0, 1.0).astype(np.float32)
    return image


def render(c: Canvas, findings: Sequence[str]) -> Phantom:
    """Compose one film on ``c`` with ``findings`` (distinct keys of :data:`FINDINGS`)."""
    r = _regions(c)
    D, body = _soft_tissue(c, r)
    D, lung_f, dist, markings = _aerated_lungs(c, r, D)
    site = Site(lungs=r.lungs, lung_side=r.lung_side, dist=dist)
    D, masks, nih, nodule_mm = _findings(c, r, D, markings, site, findings)
    D = _bones_and_devices(c, r, D, body, lung_f)
    image = _expose(c, D)
    return Phantom(
        image=image,
        masks=masks,
        boxes=[(f, *tight_box(masks[f])) for f in findings],
        nih_names=nih,
        view=c.g.view,
        pixel_spacing_mm=FIELD_OF_VIEW_MM / c.size,
        cardiothoracic_ratio=c.g.ctr,
        noise_sigma=c.g.noise,
        meta={"nodule_mm": nodule_mm},
    )


def render_phantom(
    *,
    rng: np.random.Generator,
    size: int,
    view: str,
    findings: Sequence[str],
    anatomy: Anatomy | None = None,
) -> Phantom:
    """Render one phantom in memory.

    Args:
        rng: the only source of randomness; the same generator state gives the same phantom.
        size: image side in pixels (>= 64).
        view: "PA" or "AP".
        findings: distinct keys of :data:`FINDINGS`, each drawn once in one lung; empty = normal.
        anatomy: the patient's habitus (see :func:`sample_anatomy`); drawn from ``rng`` when None.

    Returns:
        A :class:`Phantom`; its boxes are the tight boxes of the finding masks.
    """
    if view not in ("PA", "AP"):
        raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; known: {FINDINGS}")
    if len(set(findings)) != len(findings):
        raise ValueError(f"findings must be distinct, got {list(findings)}")
    anatomy = anatomy if anatomy is not None else sample_anatomy(rng)
    geo = view_geometry(anatomy, view, rng)
    return render(Canvas.create(rng=rng, size=size, anatomy=anatomy, geo=geo), findings)
