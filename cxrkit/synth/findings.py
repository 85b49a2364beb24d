"""The five simulated findings: where each lesion goes, its shape, and how it changes the film.

Each draw function places one lesion in one lung (:func:`pick_side`) and returns a
:class:`Lesion`; :data:`DRAW` maps a finding key of :data:`FINDINGS` to its function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from cxrkit.synth.anatomy import FIELD_OF_VIEW_MM, Canvas
from cxrkit.synth.drawing import (
    ONE,
    SHIFT,
    blur,
    fill,
    pick_point,
    polyline,
    smooth_field,
    soft,
    tight_box,
)

#: Finding keys accepted by :func:`cxrkit.synth.render_phantom` (dataset-neutral spelling).
FINDINGS: tuple[str, ...] = ("consolidation", "pneumothorax", "nodule_mass", "fibrosis", "effusion")

#: NIH ChestX-ray14 names; ``nodule_mass`` is "Nodule" below :data:`MASS_MIN_MM`, "Mass" above.
NIH_NAMES: dict[str, str] = {
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "fibrosis": "Fibrosis",
    "effusion": "Effusion",
}
# Fleischner glossary: a pulmonary opacity larger than 3 cm is a mass, smaller a nodule.
MASS_MIN_MM = 30.0


@dataclass(frozen=True)
class Site:
    """Where lesions may go: each lung's outline (:func:`~cxrkit.synth.anatomy.lung_outline`),
    each lung field as a bool mask (side -1 / +1), and the distance to the lung edge in pixels."""

    lungs: dict[int, dict[str, np.ndarray]]
    lung_side: dict[int, np.ndarray]
    dist: np.ndarray


class Lesion(NamedTuple):
    """One drawn finding.

    Attributes:
        mask: bool (size, size), the ground truth (its tight box is the finding's box).
        add: float32 density added to the film.
        keep: factor on the vessel markings (1 = untouched; opacities and air hide them).
        blend: ``(weight, value)`` when the lesion replaces lung density (fluid), else None.
        size_mm: the diameter of a nodule or mass.
    """

    mask: np.ndarray
    add: np.ndarray
    keep: np.ndarray | float
    blend: tuple[np.ndarray, np.ndarray] | None
    size_mm: float | None = None


def nih_name(finding: str, lesion: Lesion) -> str:
    """The NIH label of a drawn finding (nodule or mass by the 3 cm rule)."""
    if finding == "nodule_mass":
        return "Mass" if lesion.size_mm is not None and lesion.size_mm > MASS_MIN_MM else "Nodule"
    return NIH_NAMES.get(finding, "")


def pick_side(c: Canvas) -> int:
    return int(c.rng.choice([-1, 1]))


def nodule_mass(c: Canvas, site: Site) -> Lesion:
    rng, S, sc = c.rng, c.size, c.scale
    mass = rng.random() < 0.4
    diameter_mm = rng.uniform(32.0, 60.0) if mass else rng.uniform(10.0, 28.0)
    radius = max(0.5 * diameter_mm / (FIELD_OF_VIEW_MM / S), 1.6)
    side = pick_side(c)
    region = site.lung_side[side]
    dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
    if dist.max() < radius + 1:
        radius = max(float(dist.max()) - 1.0, 1.6)
    cx, cy = pick_point(rng, dist > radius + 1.0, dist >= dist.max() - 0.5)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = 1.0 + sum(
        rng.uniform(0, 0.12 if mass else 0.06) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        for k in (2, 3, 5)
    )
    pts = np.stack([cx + radius * wobble * np.cos(t), cy + radius * wobble * np.sin(t)], 1)
    m = fill(S, [pts]) & region
    if not m.any():  # sub-pixel nodule: keep at least its centre pixel
        m[int(cy), int(cx)] = True
    amp = rng.uniform(0.30, 0.40) if mass else rng.uniform(0.26, 0.34)
    # denser centre (a sphere is thickest through its middle)
    d = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    profile = np.sqrt(np.clip(d / max(radius * 0.6, 1.0), 0, 1))
    add = blur(profile.astype(np.float32), max(0.6 * sc, radius * 0.06)) * amp
    return Lesion(m, add, np.ones_like(add), None, size_mm=float(diameter_mm))


def consolidation(c: Canvas, site: Site) -> Lesion:
    rng, S, sc, u = c.rng, c.size, c.scale, c.u
    xg, yg = c.xg, c.yg
    side = pick_side(c)
    region = site.lung_side[side]
    dist = site.dist
    ys = np.flatnonzero(region.any(axis=1))
    lower = yg > ys[0] + 0.35 * (ys[-1] - ys[0])
    cx, cy = pick_point(rng, region & (dist > u(0.04)) & lower, region)
    field_ = np.zeros((S, S), np.float32)
    spread = u(rng.uniform(0.05, 0.1))
    for _ in range(int(rng.integers(3, 6))):
        ox, oy = rng.normal(0, spread * 0.6, 2)
        sx, sy = spread * rng.uniform(0.5, 0.9), spread * rng.uniform(0.5, 0.9)
        gx = np.exp(-0.5 * ((xg[0] - cx - ox) / sx) ** 2)
        gy = np.exp(-0.5 * ((yg[:, 0] - cy - oy) / sy) ** 2)
        field_ = np.maximum(field_, np.outer(gy, gx).astype(np.float32))
    texture = 1.0 + 0.35 * smooth_field(rng, S, max(8, S // 12))
    patchy = field_ * texture
    m = (patchy > 0.45) & region
    if m.sum() < 4:
        m = (field_ > 0.2) & region
    if not m.any():
        m = region & (np.hypot(xg - cx, yg - cy) < spread)
    amp = rng.uniform(0.22, 0.32)
    add = np.clip(patchy / 0.45, 0, 1.6) ** 1.2 * soft(region, 1.0 * sc) * amp * 0.7
    # air bronchograms: aerated bronchi stay dark inside the opacified lobe
    hx, hy = site.lungs[side]["hilum"]
    bronchi = np.zeros((S, S), np.float32)
    direction = np.array([cx - hx, cy - hy])
    direction /= np.linalg.norm(direction) + 1e-6
    for _ in range(int(rng.integers(2, 4))):
        start = np.array([cx, cy]) - direction * spread * rng.uniform(0.6, 1.0)
        ang = rng.normal(0, 0.35)
        c, s = math.cos(ang), math.sin(ang)
        d = np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
        mid = start + d * spread + rng.normal(0, spread * 0.15, 2)
        end = mid + d * spread * 0.8
        polyline(bronchi, np.stack([start, mid, end]), value=1.0, thickness=1.4 * sc)
    add -= blur(bronchi, 0.6 * sc) * m * amp * 0.4
    keep = 1.0 - 0.7 * np.clip(patchy / 0.45, 0, 1)
    return Lesion(m, add, keep.astype(np.float32), None)


def fibrosis(c: Canvas, site: Site) -> Lesion:
    rng, S, sc, u = c.rng, c.size, c.scale, c.u
    xg, yg = c.xg, c.yg
    side = pick_side(c)
    region_lung = site.lung_side[side]
    cpx, cpy = site.lungs[side]["cp"]
    ex, ey = cpx - side * u(rng.uniform(0.06, 0.1)), cpy - u(rng.uniform(0.1, 0.16))
    rx, ry = u(rng.uniform(0.08, 0.12)), u(rng.uniform(0.11, 0.17))
    zone = ((xg - ex) / rx) ** 2 + ((yg - ey) / ry) ** 2 < 1.0
    m = zone & region_lung
    if m.sum() < 8:
        m = region_lung & (yg > u(0.45))
    x1, y1, x2, y2 = tight_box(m)
    net = np.zeros((S, S), np.float32)
    count = int(max(20, (x2 - x1) * (y2 - y1) / (18.0 * sc * sc)))
    px = rng.uniform(x1, x2, count)
    py = rng.uniform(y1, y2, count)
    ang = rng.uniform(0, np.pi, count)
    length = u(0.022) * rng.uniform(0.5, 1.2, count)
    for i in range(count):
        dx, dy = math.cos(ang[i]) * length[i], math.sin(ang[i]) * length[i]
        pts = np.array([[px[i] - dx, py[i] - dy], [px[i] + dx, py[i] + dy]])
        polyline(net, pts, value=1.0, thickness=1.0 * sc)
    # honeycombing: small cystic rings in the most affected (lowest, outermost) part
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = pick_point(rng, m & (yg > ey), m)
        r = u(rng.uniform(0.008, 0.014))
        cv2.circle(
            net,
            (int(cx * ONE), int(cy * ONE)),
            int(r * ONE),
            1.0,
            thickness=max(1, int(sc)),
            lineType=cv2.LINE_AA,
            shift=SHIFT,
        )
    weight = soft(m, 2.0 * sc)
    amp = rng.uniform(0.07, 0.12)
    add = (np.clip(blur(net, 0.6 * sc), 0, 1) * amp + 0.03) * weight
    return Lesion(m, add.astype(np.float32), 1.0 - 0.5 * weight, None)


def effusion(c: Canvas, site: Site) -> Lesion:
    rng, u = c.rng, c.u
    xg, yg = c.xg, c.yg
    side = pick_side(c)
    lung_side = site.lung_side[side]
    lungs = site.lungs[side]
    x_lat, y_cp = lungs["cp"]
    dome_y = lungs["dome"][1]
    x_med = u(c.a.cx + side * 0.05)
    height = u(rng.uniform(0.06, 0.2))
    q = np.clip((xg - x_med) / (x_lat - x_med), 0.0, 1.0)
    # meniscus: fluid climbs highest along the lateral chest wall
    top = (y_cp - height) + (height + (y_cp - dome_y) + u(0.03)) * (1.0 - q) ** 2
    m = lung_side & (yg > top)
    if m.sum() < 8:
        top = top - u(0.05)
        m = lung_side & (yg > top)
    if not m.any():  # a tiny image: keep at least the costophrenic recess
        rows = np.flatnonzero(lung_side.any(axis=1))
        top = np.full_like(top, rows[-1] - 3.0)
        m = lung_side & (yg > top)
    weight = np.clip((yg - top) / u(0.035), 0.0, 1.0) * soft(lung_side, 1.0)
    value = 0.62 + 0.06 * np.clip((yg - top) / u(0.15), 0, 1)
    keep = 1.0 - weight
    return Lesion(m, np.zeros_like(weight), keep.astype(np.float32), (weight, value))


def pneumothorax(c: Canvas, site: Site) -> Lesion:
    rng, S, sc, u = c.rng, c.size, c.scale, c.u
    side = pick_side(c)
    outline = site.lungs[side]
    poly = outline["polygon"]
    hx, hy = outline["hilum"]
    hilum = np.array([hx, hy + u(0.08)])
    v = poly - hilum
    norm = np.linalg.norm(v, axis=1) + 1e-6
    up = -v[:, 1] / norm
    lateral = side * v[:, 0] / norm
    # the lung falls away from the apex and lateral wall towards the hilum
    reach = np.clip(0.9 * up + 0.55 * lateral + 0.15, 0.0, 1.0) ** 1.5
    depth = rng.uniform(0.08, 0.32)
    retracted = hilum + v * (1.0 - depth * reach)[:, None]
    collapsed = fill(S, [retracted])
    region = site.lung_side[side]
    m = region & ~collapsed
    if m.sum() < 8:
        retracted = hilum + v * (1.0 - 0.45 * reach)[:, None]
        collapsed = fill(S, [retracted])
        m = region & ~collapsed
    if not m.any():  # a tiny image: keep at least the apical cap
        rows = np.flatnonzero(region.any(axis=1))
        m = region & (c.yg < rows[0] + 3)
    line = np.zeros((S, S), np.float32)
    polyline(line, retracted, value=1.0, thickness=1.0 * sc, closed=True)
    near = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & region
    m_f = soft(m, 0.7 * sc)
    add = (
        blur(line, 0.4 * sc) * near * rng.uniform(0.08, 0.14)  # visceral pleural line
        - m_f * rng.uniform(0.03, 0.06)  # no lung tissue, only air
        + soft(collapsed & region, 1.0 * sc) * 0.03 * depth / 0.25  # denser collapsed lung
    )
    return Lesion(m, add.astype(np.float32), 1.0 - m_f, None)


DRAW: dict[str, Callable[[Canvas, Site], Lesion]] = {
    "consolidation": consolidation,
    "pneumothorax": pneumothorax,
    "nodule_mass": nodule_mass,
    "fibrosis": fibrosis,
    "effusion": effusion,
}
