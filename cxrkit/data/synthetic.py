"""Synthetic chest-radiograph phantoms with known lesions, in the real NIH and VinDr file formats.

A phantom is drawn from anatomy (body outline, lungs with vascular markings, heart, mediastinum,
trachea, spine, posterior and anterior ribs, clavicles, scapulae, hemidiaphragms, gastric bubble)
and up to five findings (consolidation, pneumothorax, nodule/mass, fibrosis, pleural effusion),
each with its lesion mask and the tight box of that mask. AP and PA differ the way they do in real
life: an AP film magnifies the heart (larger cardiothoracic ratio), has lower contrast and more
noise, projects the scapulae into the lung fields and is often taken at lower inspiration; this is
what makes AP/PA performance gaps exist to be measured.

Every image is drawn from ``np.random.default_rng((seed, dataset, index))`` (anatomy from
``(seed, dataset, patient)``, so follow-up films of one patient look alike and patient-level splits
matter), so any number of worker processes produces byte-identical files.

Output layout of :func:`generate` (``OUT`` is ``out_dir``)::

    OUT/nih/images/<image_id>.png            uint8 grayscale, size x size; ids like 00000001_000
    OUT/nih/Data_Entry_2017.csv              NIH 2017 format (CRLF, header with a trailing comma)
    OUT/nih/BBox_List_2017.csv               NIH box list: x, y, w, h in PNG pixels
    OUT/nih/masks/<image_id>.<name>.png      uint8 0/255: lung, heart, one per NIH finding name
    OUT/nih/phantoms.csv                     the same images for the generic CSV adapter
    OUT/nih/phantom_boxes.csv                image_id, finding, x1, y1, x2, y2, reader (empty)
    OUT/vindr/{train,test}/<image_id>.dicom  VinDr PhysioNet layout, uncompressed 16-bit DICOM
    OUT/vindr/annotations/annotations_{train,test}.csv   three readers' boxes (R8, R9, R10)
    OUT/vindr/annotations/image_labels_{train,test}.csv  per-reader 0/1 labels, all 28 VinDr names
    OUT/README.txt                           what was generated: seed, sizes, counts

Boxes everywhere are pixel edges of the written image: ``x1`` is the first lesion column and ``x2``
one past the last, so ``0 <= x1 < x2 <= size`` (the :class:`cxrkit.data.records.Box` contract).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrkit.data import vocab
from cxrkit.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

#: Finding keys accepted by :func:`render_phantom` (dataset-neutral spelling).
FINDINGS: tuple[str, ...] = ("consolidation", "pneumothorax", "nodule_mass", "fibrosis", "effusion")

#: NIH ChestX-ray14 names; ``nodule_mass`` is "Nodule" below :data:`MASS_MIN_MM`, "Mass" above.
NIH_NAMES: dict[str, str] = {
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "fibrosis": "Fibrosis",
    "effusion": "Effusion",
}
NIH_FINDING_NAMES: tuple[str, ...] = (
    "Consolidation",
    "Pneumothorax",
    "Nodule",
    "Mass",
    "Fibrosis",
    "Effusion",
)
NIH_NO_FINDING = "No Finding"
# Fleischner glossary: a pulmonary opacity larger than 3 cm is a mass, smaller a nodule.
MASS_MIN_MM = 30.0

#: VinDr-CXR class names of the five simulated findings.
VINDR_NAMES: dict[str, str] = {
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "nodule_mass": "Nodule/Mass",
    "fibrosis": "Pulmonary fibrosis",
    "effusion": "Pleural effusion",
}
#: VinDr-CXR PhysioNet image-level labels: 22 local labels then 6 global ones, in the file's order
#: (the adapter's own table, so the phantoms can never drift from what `prepare vindr` accepts).
VINDR_LABELS: tuple[str, ...] = (*vocab.VINDR_LOCAL, *vocab.VINDR_GLOBAL)
VINDR_NO_FINDING = "No finding"
VINDR_READERS: tuple[str, ...] = ("R8", "R9", "R10")

# The real files' header lines, byte for byte (Data_Entry ends its header, not its rows, with a
# comma and uses CRLF; the box list has three empty trailing header fields and LF line ends).
NIH_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

PHANTOMS_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "patient_id",
    "view",
    "labels",
    "mask:lung",
    "mask:heart",
    *(f"mask:{name}" for name in NIH_FINDING_NAMES),
)
VINDR_ANNOTATION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "rad_id",
    "class_name",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)
VINDR_LABEL_ID_COLUMNS: tuple[str, ...] = ("image_id", "rad_id")

# Physical scale: a 38 cm detector field across the image (NIH: ~2,700 px at 0.143 mm).
FIELD_OF_VIEW_MM = 380.0
DATASETS: tuple[str, ...] = ("nih", "vindr")
_DATASET_CODE = {"nih": 1, "vindr": 2}
_PATIENT_STREAM = 7  # second seed word for per-patient anatomy streams
_READER_STREAM = 11  # third seed word for the VinDr readers' jitter
_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_TQDM_MIN_ITEMS = 200


# ---------------------------------------------------------------------------------------------
# Anatomy and view
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Anatomy:
    """A patient's body habitus in normalised image units (0..1 of the image side).

    Shared by every film of one patient; the view (AP/PA) and inspiration vary per film.
    """

    cx: float  # midline
    half_width: float  # lateral lung margin from the midline at full inspiration
    apex_y: float  # top of the lung apices
    dome_y: float  # right hemidiaphragm dome at full PA inspiration
    cp_depth: float  # costophrenic angle below the dome
    ctr: float  # cardiothoracic ratio on a PA film
    chest_wall: float  # soft tissue lateral to the lungs
    female: bool
    lung_density: float  # aerated-lung brightness
    rib_thickness: float


def sample_anatomy(rng: np.random.Generator, *, female: bool | None = None) -> Anatomy:
    """Draw a plausible adult habitus; ``female`` (breast shadows) is random when None."""
    return Anatomy(
        cx=float(0.5 + rng.normal(0.0, 0.012)),
        half_width=float(np.clip(rng.normal(0.345, 0.015), 0.30, 0.39)),
        apex_y=float(np.clip(rng.normal(0.12, 0.012), 0.08, 0.16)),
        dome_y=float(np.clip(rng.normal(0.70, 0.02), 0.64, 0.76)),
        cp_depth=float(rng.uniform(0.06, 0.09)),
        ctr=float(np.clip(rng.normal(0.44, 0.03), 0.36, 0.52)),
        chest_wall=float(rng.uniform(0.045, 0.075)),
        female=bool(rng.random() < 0.5) if female is None else female,
        lung_density=float(rng.uniform(0.13, 0.19)),
        rib_thickness=float(rng.uniform(0.019, 0.024)),
    )


@dataclass(frozen=True)
class _ViewGeometry:
    view: str
    half_width: float
    apex_y: float
    dome_r: float  # right (image-left) dome
    dome_l: float  # left (image-right) dome, usually lower
    cp_r: float
    cp_l: float
    ctr: float
    contrast: float
    fog: float
    noise: float
    clavicle_med_y: float
    clavicle_lat_y: float
    scapula_in_lung: bool
    lesion_gain: float  # conspicuity of lesions (scatter and motion blur them on AP films)


def _view_geometry(anatomy: Anatomy, view: str, rng: np.random.Generator) -> _ViewGeometry:
    ap = view == "AP"
    # AP films are mostly supine/bedside: poorer inspiration raises the diaphragm, the heart lies
    # farther from the detector and is magnified, scatter lowers contrast, and the lower dose of a
    # portable unit leaves more quantum noise.
    inspiration = rng.uniform(0.03, 0.08) if ap else rng.uniform(-0.01, 0.02)
    magnification = rng.uniform(1.12, 1.25) if ap else rng.uniform(0.98, 1.03)
    dome_r = anatomy.dome_y - inspiration
    dome_l = dome_r + rng.uniform(0.012, 0.03)
    return _ViewGeometry(
        view=view,
        half_width=anatomy.half_width * (1.02 if ap else 1.0),
        apex_y=anatomy.apex_y + (0.01 if ap else 0.0),
        dome_r=dome_r,
        dome_l=dome_l,
        cp_r=dome_r + anatomy.cp_depth,
        cp_l=dome_l + anatomy.cp_depth,
        ctr=float(min(anatomy.ctr * magnification, 0.68)),
        contrast=rng.uniform(0.72, 0.82) if ap else rng.uniform(0.95, 1.05),
        fog=rng.uniform(0.08, 0.13) if ap else rng.uniform(0.0, 0.03),
        noise=rng.uniform(0.022, 0.03) if ap else rng.uniform(0.008, 0.012),
        # Lordotic AP projection throws the clavicles up over the apices.
        clavicle_med_y=anatomy.apex_y + (rng.uniform(0.0, 0.02) if ap else 0.1),
        clavicle_lat_y=anatomy.apex_y
        + (rng.uniform(-0.04, -0.02) if ap else rng.uniform(0.02, 0.04)),
        scapula_in_lung=ap,
        lesion_gain=rng.uniform(0.75, 0.85) if ap else 1.0,
    )


# ---------------------------------------------------------------------------------------------
# Drawing helpers (all coordinates in pixels, float; cv2 draws with 4 fractional bits)
# ---------------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fill(size: int, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Polygons (N, 2) in pixel coordinates -> bool mask (pixel centres at integer + 0.5)."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round((np.asarray(p) - 0.5) * _ONE).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def _polyline(
    canvas: np.ndarray, points: np.ndarray, *, value: float, thickness: float, closed: bool = False
) -> None:
    """Draw an anti-aliased polyline in place (float32 canvas); thickness in pixels (>= 1)."""
    pts = np.round((np.asarray(points) - 0.5) * _ONE).astype(np.int32)
    cv2.polylines(
        canvas,
        [pts],
        closed,
        float(value),
        thickness=max(1, int(round(thickness))),
        lineType=cv2.LINE_AA,
        shift=_SHIFT,
    )


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return _blur(mask.astype(np.float32), sigma)


def _ellipse(
    cx: float, cy: float, ax: float, ay: float, angle_deg: float, n: int = 64
) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1]-ish: a cells x cells grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _rotate(vectors: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate (N, 2) vectors by (N,) angles in radians (image axes: y down)."""
    c, s = np.cos(angles), np.sin(angles)
    x, y = vectors[:, 0], vectors[:, 1]
    return np.stack([c * x - s * y, s * x + c * y], 1)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of a non-empty bool mask as pixel edges (x1, y1, x2, y2), x2/y2 exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _pick_point(
    rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray
) -> tuple[float, float]:
    """A random pixel centre (x, y) where ``candidates`` is true, else where ``fallback`` is."""
    where = np.flatnonzero(candidates)
    if where.size == 0:
        where = np.flatnonzero(fallback)
    k = int(where[rng.integers(where.size)])
    size = candidates.shape[1]
    return k % size + 0.5, k // size + 0.5


# ---------------------------------------------------------------------------------------------
# Phantom
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Phantom:
    """One rendered radiograph and its ground truth.

    Attributes:
        image: float32 (size, size) display intensity in [0, 1]; bright = dense (MONOCHROME2).
        masks: bool (size, size) arrays: ``lung`` (both lung fields, heart excluded), ``heart``, and
            one per rendered finding key of :data:`FINDINGS`.
        boxes: ``(finding, x1, y1, x2, y2)`` per finding, the tight box of its mask in pixel edges
            (``0 <= x1 < x2 <= size``).
        nih_names: finding key -> NIH label (``nodule_mass`` becomes "Nodule" or "Mass" by size).
        view: "AP" or "PA".
        pixel_spacing_mm: detector pixel spacing implied by :data:`FIELD_OF_VIEW_MM`.
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


class _Renderer:
    """Draws one phantom. Pixel units throughout; ``u(x)`` turns image fractions into pixels."""

    def __init__(
        self, *, rng: np.random.Generator, size: int, anatomy: Anatomy, geo: _ViewGeometry
    ) -> None:
        self.rng = rng
        self.size = size
        self.a = anatomy
        self.g = geo
        self.scale = size / 256.0  # drawing sizes are tuned at 256 px
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.xg = xx + 0.5  # pixel-centre coordinates
        self.yg = yy + 0.5

    def u(self, fraction: float) -> float:
        return float(fraction) * self.size

    # -- anatomy outlines ---------------------------------------------------------------------

    def lung_outline(self, side: int) -> dict[str, np.ndarray]:
        """Outline of one lung (side -1: image left = patient right; +1: image right)."""
        a, g, u = self.a, self.g, self.u
        cx = a.cx
        top = g.apex_y
        dome = g.dome_r if side < 0 else g.dome_l
        cp = g.cp_r if side < 0 else g.cp_l
        apex_x = 0.15 + 0.01 * side
        # lateral border: apex -> costophrenic angle, widening under the upper ribs
        t = np.linspace(0.0, 1.0, 48)
        y_lat = top + t * (cp - top)
        widen = np.sin(0.5 * np.pi * np.clip(t / 0.85, 0.0, 1.0)) ** 0.6
        x_lat = cx + side * (apex_x + (g.half_width - apex_x) * widen)
        # hemidiaphragm: from the costophrenic angle up over the dome to the cardiophrenic angle
        p = np.linspace(0.0, 1.0, 40)[1:]
        x_med_bottom = cx + side * 0.06
        x_dia = x_lat[-1] + (x_med_bottom - x_lat[-1]) * p
        peak = 0.55
        y_dia = np.where(
            p < peak,
            dome + (cp - dome) * (np.clip(peak - p, 0, None) / peak) ** 2.0,
            dome + 0.03 * (np.clip(p - peak, 0, None) / (1.0 - peak)) ** 2,
        )
        # medial border: mediastinum (SVC on the right, aortic knob and pulmonary trunk on the
        # left), turning into the rounded apex at the top
        y_med = np.linspace(dome + 0.03, top, 48)[1:-1]
        if side < 0:
            medial = 0.065 + 0.01 * np.clip((y_med - 0.2) / 0.2, 0, 1)
        else:
            medial = 0.06 + 0.02 * np.exp(-(((y_med - 0.37) / 0.05) ** 2))
        blend = np.clip((y_med - top) / 0.16, 0.0, 1.0)
        x_med = cx + side * (apex_x + (medial - apex_x) * np.sin(0.5 * np.pi * blend) ** 0.8)
        pts = np.concatenate(
            [
                np.stack([x_lat, y_lat], 1),
                np.stack([x_dia, y_dia], 1),
                np.stack([x_med, y_med], 1),
            ]
        )
        return {
            "polygon": pts * self.size,
            "diaphragm": np.stack([x_dia, y_dia], 1) * self.size,
            "cp": np.array([u(x_lat[-1]), u(cp)]),
            "dome": np.array([u(x_dia[int(peak * 39)]), u(dome)]),
            "hilum": np.array([u(cx + side * 0.11), u(0.37 + 0.3 * (dome - 0.66))]),
        }

    def heart_polygon(self) -> np.ndarray:
        """Cardiac silhouette: right atrial arc on the image left, left ventricle to the apex.

        Its widest horizontal extent is ``ctr * 2 * half_width`` (the cardiothoracic ratio).
        """
        a, g = self.a, self.g
        width = g.ctr * 2.0 * g.half_width
        right, left = 0.34 * width, 0.66 * width
        base = 0.5 * (g.dome_r + g.dome_l) + 0.035  # below the domes; clipped by the abdomen
        height = 0.2 + 0.35 * width
        top = base - height
        t = np.linspace(0.0, 1.0, 32)
        # right border: from the SVC junction bulging out (right atrium) to the cardiophrenic angle
        y_r = top + 0.25 * height + t * 0.75 * height
        x_r = a.cx - 0.06 - (right - 0.06) * np.sin(np.pi * (0.15 + 0.85 * t) * 0.62) ** 0.7
        # left border: below the pulmonary trunk, out along the left ventricle to the apex
        y_l = top + t * (height - 0.03)
        x_l = a.cx + 0.06 + (left - 0.06) * np.sin(0.5 * np.pi * t) ** 1.3
        apex = np.array([[a.cx + left - 0.02, base], [a.cx - right * 0.8, base + 0.01]])
        pts = np.concatenate([np.stack([x_l, y_l], 1), apex, np.stack([x_r, y_r], 1)[::-1]])
        return pts * self.size

    # -- the film -----------------------------------------------------------------------------

    def render(self, findings: Sequence[str]) -> Phantom:
        """Compose the film. ``D`` is the density image (bright = dense) until exposure maps it to
        display values; masks are computed first so lesions can be placed inside the lungs."""
        rng, a, g, S, u = self.rng, self.a, self.g, self.size, self.u
        sc = self.scale
        xg, yg = self.xg, self.yg

        lungs = {side: self.lung_outline(side) for side in (-1, 1)}
        lung_poly = {side: _fill(S, [lungs[side]["polygon"]]) for side in (-1, 1)}
        heart = _fill(S, [self.heart_polygon()])
        knob_r = u(0.03)
        knob_y = u(0.28 + 0.5 * (g.apex_y - 0.12))
        aorta = _fill(S, [_ellipse(u(a.cx + 0.065), knob_y, knob_r, knob_r * 1.1, 0.0, 32)])
        # below the hemidiaphragms (liver on the image left, stomach on the right)
        dia_r, dia_l = lungs[-1]["diaphragm"], lungs[1]["diaphragm"]
        abdomen = _fill(
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

        # ---- soft tissue --------------------------------------------------------------------
        body = self.body_mask()
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
        D = _blur(D, 1.2 * sc)
        # body thickness: brighter towards the midline and down into the abdomen
        D += body * (0.06 * np.exp(-(((xg - u(a.cx)) / u(0.3)) ** 2))).astype(np.float32)
        D += (abdomen & body) * np.clip((yg - u(g.dome_r)) / u(0.4), 0, 1) * 0.06
        # trachea and main bronchi: an air column down the midline to the carina
        carina = np.array([u(a.cx + 0.005), u(0.30 + 0.5 * (g.apex_y - 0.12))])
        airway = np.zeros((S, S), np.float32)
        _polyline(
            airway,
            np.array([[u(a.cx), -1.0], [u(a.cx), u(0.15)], carina]),
            value=1.0,
            thickness=u(0.034),
        )
        for side in (-1, 1):
            end = carina + np.array([side * u(0.055), u(0.045 if side < 0 else 0.06)])
            _polyline(airway, np.stack([carina, end]), value=0.8, thickness=u(0.02))
        D -= _blur(airway, 1.5 * sc) * body * 0.15
        # gastric bubble under the left hemidiaphragm
        bubble = _fill(
            S,
            [
                _ellipse(
                    lungs[1]["dome"][0] + u(0.02),
                    lungs[1]["dome"][1] + u(0.05),
                    u(rng.uniform(0.03, 0.05)),
                    u(0.025),
                    rng.uniform(-10, 10),
                )
            ],
        )
        D -= _soft(bubble & abdomen, 1.5 * sc) * rng.uniform(0.12, 0.22)
        if a.female:
            for side in (-1, 1):
                cpx, cpy = lungs[side]["cp"]
                breast = _fill(
                    S, [_ellipse(cpx - side * u(0.09), cpy - u(0.06), u(0.14), u(0.1), side * 15.0)]
                )
                D += _soft(breast & body, 5.0 * sc) * 0.07

        # ---- lungs: aerated density with soft-tissue overlap at the margins -----------------
        lung_f = _soft(lung, 0.9 * sc)
        dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3)
        rim = np.exp(-dist / u(0.05))
        vertical = np.clip((yg - u(g.apex_y)) / u(g.dome_r - g.apex_y), 0, 1)
        texture = _smooth_field(rng, S, max(12, S // 8))
        lung_value = a.lung_density + 0.16 * rim + 0.04 * vertical + 0.015 * texture
        D = D * (1.0 - lung_f) + lung_f * lung_value
        # hilar shadows (pulmonary arteries)
        for side in (-1, 1):
            hx, hy = lungs[side]["hilum"]
            D += (
                0.10 * np.exp(-(((xg - hx) / u(0.035)) ** 2 + ((yg - hy) / u(0.06)) ** 2))
            ).astype(np.float32)
        vessels = self.vessels(lungs) * lung_f

        # ---- findings -----------------------------------------------------------------------
        masks: dict[str, np.ndarray] = {"lung": lung, "heart": heart}
        nih: dict[str, str] = {}
        ctx = {
            "lungs": lungs,
            "lung_side": lung_side,
            "heart": heart,
            "dist": dist,
        }
        lesion = np.zeros((S, S), np.float32)
        keep_vessels = np.ones((S, S), np.float32)
        for finding in findings:
            m, add, suppress, blend = getattr(self, f"_{finding}")(ctx)
            masks[finding] = m
            lesion += add * g.lesion_gain
            keep_vessels *= suppress
            if blend is not None:  # fluid replaces lung density (effusion)
                weight, value = blend
                weight = weight * g.lesion_gain
                D = D * (1.0 - weight) + weight * value
            nih[finding] = NIH_NAMES.get(finding, "")
            if finding == "nodule_mass":
                nih[finding] = "Mass" if ctx["nodule_mm"] > MASS_MIN_MM else "Nodule"
        D += vessels * keep_vessels + lesion

        # ---- bones and devices --------------------------------------------------------------
        D += self.spine(body) * (1.0 - 0.6 * _soft(abdomen, 2.0 * sc))
        D += self.ribs(lungs, lung_f, body)
        D += self.clavicles_and_shoulders(body)
        D += self.scapulae(lungs, body)
        if g.view == "AP" and rng.random() < 0.6:
            D += self.ecg_leads(body)

        # ---- exposure ---------------------------------------------------------------------
        D = np.clip(D, 0.0, 1.2)
        D = g.fog + g.contrast * (D - 0.05) * (1.0 - g.fog) / 0.95
        D += 0.025 * _smooth_field(rng, S, 4) + 0.02 * (xg / S - 0.5) * rng.choice([-1, 1])
        D = np.clip(D, 0.0, 1.0) ** rng.uniform(0.9, 1.1)
        D = _blur(D.astype(np.float32), 0.5 * sc)
        noise = rng.standard_normal((S, S), dtype=np.float32) * g.noise
        noise += _blur(rng.standard_normal((S, S), dtype=np.float32), 1.2 * sc) * (g.noise * 1.2)
        image = np.clip(D + noise, 0.0, 1.0).astype(np.float32)

        boxes = [(f, *_tight_box(masks[f])) for f in findings]
        return Phantom(
            image=image,
            masks=masks,
            boxes=boxes,
            nih_names=nih,
            view=g.view,
            pixel_spacing_mm=FIELD_OF_VIEW_MM / S,
            cardiothoracic_ratio=g.ctr,
            noise_sigma=g.noise,
            meta={"nodule_mm": ctx.get("nodule_mm")},
        )

    # -- anatomy layers -----------------------------------------------------------------------

    def body_mask(self) -> np.ndarray:
        """Neck, shoulders, chest wall and arms."""
        a, g, S = self.a, self.g, self.size
        cx = a.cx
        wall = g.half_width + a.chest_wall
        t = np.linspace(0.0, 1.0, 16)
        # neck, then the trapezius slope rounding over the shoulder down the arm
        slope_x = cx + 0.09 + (wall + 0.16 - 0.09) * t
        slope_y = 0.03 + 0.09 * t**1.6
        right = [(cx + 0.075, -0.01), (cx + 0.08, 0.02)]
        right += list(zip(slope_x, slope_y, strict=True))
        right += [(cx + wall + 0.22, 0.16), (cx + wall + 0.22, 1.01)]
        pts = np.array(right + [(2 * cx - x, y) for x, y in right[::-1]], np.float64) * S
        body = _fill(S, [pts])
        return body

    def vessels(self, lungs: dict[int, dict[str, np.ndarray]]) -> np.ndarray:
        """Branching pulmonary vessels from each hilum, tapering and fading to the periphery.

        The tree grows one generation at a time for all branches at once (one cv2 call each).
        """
        rng, S, sc, u = self.rng, self.size, self.scale, self.u
        canvas = np.zeros((S, S), np.float32)
        for side in (-1, 1):
            trunks = np.deg2rad(np.array([-80, -55, -30, -5, 20, 45, 70, 95]) + rng.normal(0, 6, 8))
            dirs = np.stack([side * np.cos(trunks), np.sin(trunks)], 1)
            starts = np.tile(lungs[side]["hilum"], (len(trunks), 1))
            length = u(0.09) * rng.uniform(0.8, 1.2, len(trunks))
            width, value = 2.4 * sc, 0.1
            for _generation in range(5):
                n = len(starts)
                dirs = _rotate(dirs, rng.normal(0.0, 0.25, n))
                ends = starts + dirs * length[:, None]
                mids = (
                    0.5 * (starts + ends) + rng.normal(0.0, 1.0, (n, 2)) * (0.08 * length)[:, None]
                )
                segments = np.round((np.stack([starts, mids, ends], 1) - 0.5) * _ONE).astype(
                    np.int32
                )
                cv2.polylines(
                    canvas,
                    list(segments),
                    False,
                    value,
                    thickness=max(1, int(round(width))),
                    lineType=cv2.LINE_AA,
                    shift=_SHIFT,
                )
                # every branch forks in two, narrower, shorter and fainter
                spread = np.deg2rad(rng.uniform(18, 38, (n, 2))) * np.array([-1.0, 1.0])
                dirs = _rotate(np.repeat(dirs, 2, axis=0), spread.ravel())
                starts = np.repeat(ends, 2, axis=0)
                length = np.repeat(length, 2) * rng.uniform(0.62, 0.8, 2 * n)
                width, value = max(width * 0.7, 1.0), value * 0.78
        return _blur(canvas, 0.6 * sc)

    def spine(self, body: np.ndarray) -> np.ndarray:
        a, u, sc = self.a, self.u, self.scale
        xg, yg = self.xg, self.yg
        half = u(0.03)
        column = np.clip(1.0 - (np.abs(xg - u(a.cx)) / half) ** 4, 0, 1)
        # vertebral bodies separated by darker discs, height ~ the posterior rib spacing
        pitch = u((a.dome_y - a.apex_y + 0.04) / 9.6)
        phase = (yg - u(a.apex_y - 0.055)) / pitch
        bodies = 0.75 + 0.25 * np.clip(np.abs(np.sin(np.pi * phase)) * 3.0, 0, 1)
        # pedicles: paired ovals at the lateral margins of each body
        ped = np.exp(-(((np.abs(xg - u(a.cx)) - half * 0.7) / u(0.007)) ** 2)) * np.clip(
            np.cos(2 * np.pi * phase) * 2.0 - 1.0, 0, 1
        )
        fade = np.clip(yg / u(0.1), 0.3, 1.0)
        return _blur((0.05 * column * bodies + 0.03 * ped) * fade * body, 0.6 * sc).astype(
            np.float32
        )

    def ribs(self, lungs: dict[int, dict[str, np.ndarray]], lung_f: np.ndarray, body: np.ndarray):
        """Posterior ribs (arcs from the spine) and fainter anterior ribs, with bright cortices."""
        a, g, u, S, sc, rng = self.a, self.g, self.u, self.size, self.scale, self.rng
        canvas = np.zeros((S, S), np.float32)
        thick = u(a.rib_thickness)
        spacing = (a.dome_y + 0.04 - a.apex_y) / 9.6
        t = np.linspace(0.0, 1.0, 28)[:, None]
        basis = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], 1)
        for side in (-1, 1):
            for k in range(12):
                y0 = a.apex_y - 0.045 + k * spacing + rng.normal(0, 0.002)
                reach = (0.17, 0.25, 0.3)[k] if k < 3 else g.half_width + 0.005 * (k - 3)
                arch = 0.065 - 0.002 * k
                ctrl = np.array(
                    [
                        (a.cx + side * 0.025, y0),
                        (a.cx + side * (0.025 + 0.4 * reach), y0 - arch),
                        (a.cx + side * (reach * 0.95), y0 - arch * 0.6),
                        (a.cx + side * (reach + 0.025), y0 + 0.085 + 0.01 * min(k, 4)),
                    ]
                )
                if k == 0:  # the first rib is a tight arc around the apex
                    ctrl[1:, 1] += np.array([-0.03, -0.01, 0.02])
                pts = (basis @ ctrl) * S
                width = thick * (0.8 if k < 2 else 1.0)
                _polyline(canvas, pts, value=1.0, thickness=width)
                _polyline(canvas, pts, value=0.5, thickness=max(width - 2.2 * sc, 1.0))
                # anterior rib: from the lateral end medially and downwards to the cartilage
                if 0 < k < 9:
                    x_end, y_end = ctrl[3]
                    actrl = np.array(
                        [
                            (x_end, y_end),
                            (x_end - side * 0.03, y_end + 0.04),
                            (a.cx + side * (reach * 0.55), y_end + 0.09),
                            (a.cx + side * 0.12, y_end + 0.14),
                        ]
                    )
                    _polyline(canvas, (basis @ actrl) * S, value=0.4, thickness=width * 0.9)
        canvas = _blur(canvas, 0.6 * sc)
        # a rib shows best against aerated lung; the mediastinum and abdomen all but hide it
        thorax_x = np.abs(self.xg - u(a.cx)) < u(g.half_width + a.chest_wall)
        weight = 0.15 * lung_f + 0.04 * (1.0 - lung_f) * (body & thorax_x)
        return canvas * weight

    def clavicles_and_shoulders(self, body: np.ndarray) -> np.ndarray:
        """S-shaped clavicles, humeral heads and shafts."""
        a, g, u, S, sc = self.a, self.g, self.u, self.size, self.scale
        canvas = np.zeros((S, S), np.float32)
        wall = g.half_width + a.chest_wall
        for side in (-1, 1):
            t = np.linspace(0.0, 1.0, 28)
            x = a.cx + side * (0.03 + (wall - 0.03) * t)
            y = g.clavicle_med_y + (g.clavicle_lat_y - g.clavicle_med_y) * t
            y = y - 0.012 * np.sin(np.pi * t) - 0.008 * np.sin(2 * np.pi * t)
            pts = np.stack([x, y], 1) * S
            _polyline(canvas, pts, value=1.0, thickness=u(0.025))
            _polyline(canvas, pts, value=0.55, thickness=max(u(0.025) - 2.4 * sc, 1.0))
            # humeral head below the acromion, and the shaft down the arm
            hx = u(a.cx + side * (wall + 0.11))
            hy = u(g.clavicle_lat_y + 0.07)
            canvas += _fill(S, [_ellipse(hx, hy, u(0.065), u(0.06), 0.0, 48)]) * 0.85
            shaft = np.array(
                [
                    (hx - u(0.03), hy),
                    (hx + u(0.03), hy),
                    (hx + u(0.027) + side * u(0.03), S + 1.0),
                    (hx - u(0.027) + side * u(0.03), S + 1.0),
                ]
            )
            canvas += _fill(S, [shaft]) * 0.6
        return _blur(np.minimum(canvas, 1.0) * 0.2 * body, 0.7 * sc)

    def scapulae(self, lungs: dict[int, dict[str, np.ndarray]], body: np.ndarray) -> np.ndarray:
        """Scapular blades; projected over the upper lateral lung fields on AP films."""
        a, g, S, sc = self.a, self.g, self.size, self.scale
        canvas = np.zeros((S, S), np.float32)
        inward = 0.1 if g.scapula_in_lung else -0.02
        for side in (-1, 1):
            lat = a.cx + side * (g.half_width + a.chest_wall + 0.02)
            med = a.cx + side * (g.half_width - inward)
            tri = (
                np.array(
                    [
                        (lat, g.apex_y + 0.02),
                        (med, g.apex_y + 0.06),
                        (med + side * 0.03, 0.47),
                        (lat + side * 0.01, 0.4),
                    ]
                )
                * S
            )
            canvas += _fill(S, [tri])
        return _blur(canvas, 1.0 * sc) * 0.07 * body

    def ecg_leads(self, body: np.ndarray) -> np.ndarray:
        """Monitoring electrodes and their wires, as on most bedside (AP) films."""
        rng, u, S, sc = self.rng, self.u, self.size, self.scale
        canvas = np.zeros((S, S), np.float32)
        for _ in range(int(rng.integers(2, 5))):
            x, y = u(rng.uniform(0.2, 0.8)), u(rng.uniform(0.12, 0.35))
            r = u(0.014)
            cv2.circle(
                canvas,
                (int(x * _ONE), int(y * _ONE)),
                int(r * _ONE),
                1.0,
                thickness=max(1, int(1.5 * sc)),
                lineType=cv2.LINE_AA,
                shift=_SHIFT,
            )
            t = np.linspace(0, 1, 12)
            wx = x + (rng.uniform(-0.4, 0.4) * t + 0.05 * np.sin(3 * t)) * S
            wy = y + (rng.uniform(-0.3, -0.1) * t) * S
            _polyline(canvas, np.stack([wx, wy], 1), value=0.8, thickness=1.0 * sc)
        return _blur(canvas, 0.5 * sc) * 0.45

    # -- findings: each returns (mask, additive layer, vessel keep factor, density blend) --------

    def _side(self) -> int:
        return int(self.rng.choice([-1, 1]))

    def _nodule_mass(self, ctx: dict[str, Any]):
        rng, S, sc = self.rng, self.size, self.scale
        mass = rng.random() < 0.4
        diameter_mm = rng.uniform(32.0, 60.0) if mass else rng.uniform(10.0, 28.0)
        ctx["nodule_mm"] = float(diameter_mm)
        radius = max(0.5 * diameter_mm / (FIELD_OF_VIEW_MM / S), 1.6)
        side = self._side()
        region = ctx["lung_side"][side]
        dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
        if dist.max() < radius + 1:
            radius = max(float(dist.max()) - 1.0, 1.6)
        cx, cy = _pick_point(rng, dist > radius + 1.0, dist >= dist.max() - 0.5)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        wobble = 1.0 + sum(
            rng.uniform(0, 0.12 if mass else 0.06) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
            for k in (2, 3, 5)
        )
        pts = np.stack([cx + radius * wobble * np.cos(t), cy + radius * wobble * np.sin(t)], 1)
        m = _fill(S, [pts]) & region
        if not m.any():  # sub-pixel nodule: keep at least its centre pixel
            m[int(cy), int(cx)] = True
        amp = rng.uniform(0.30, 0.40) if mass else rng.uniform(0.26, 0.34)
        # denser centre (a sphere is thickest through its middle)
        d = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
        profile = np.sqrt(np.clip(d / max(radius * 0.6, 1.0), 0, 1))
        add = _blur(profile.astype(np.float32), max(0.6 * sc, radius * 0.06)) * amp
        return m, add, np.ones_like(add), None

    def _consolidation(self, ctx: dict[str, Any]):
        rng, S, sc, u = self.rng, self.size, self.scale, self.u
        xg, yg = self.xg, self.yg
        side = self._side()
        region = ctx["lung_side"][side]
        dist = ctx["dist"]
        ys = np.flatnonzero(region.any(axis=1))
        lower = yg > ys[0] + 0.35 * (ys[-1] - ys[0])
        cx, cy = _pick_point(rng, region & (dist > u(0.04)) & lower, region)
        field_ = np.zeros((S, S), np.float32)
        spread = u(rng.uniform(0.05, 0.1))
        for _ in range(int(rng.integers(3, 6))):
            ox, oy = rng.normal(0, spread * 0.6, 2)
            sx, sy = spread * rng.uniform(0.5, 0.9), spread * rng.uniform(0.5, 0.9)
            gx = np.exp(-0.5 * ((xg[0] - cx - ox) / sx) ** 2)
            gy = np.exp(-0.5 * ((yg[:, 0] - cy - oy) / sy) ** 2)
            field_ = np.maximum(field_, np.outer(gy, gx).astype(np.float32))
        texture = 1.0 + 0.35 * _smooth_field(rng, S, max(8, S // 12))
        patchy = field_ * texture
        m = (patchy > 0.45) & region
        if m.sum() < 4:
            m = (field_ > 0.2) & region
        if not m.any():
            m = region & (np.hypot(xg - cx, yg - cy) < spread)
        amp = rng.uniform(0.22, 0.32)
        add = np.clip(patchy / 0.45, 0, 1.6) ** 1.2 * _soft(region, 1.0 * sc) * amp * 0.7
        # air bronchograms: aerated bronchi stay dark inside the opacified lobe
        hx, hy = ctx["lungs"][side]["hilum"]
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
            _polyline(bronchi, np.stack([start, mid, end]), value=1.0, thickness=1.4 * sc)
        add -= _blur(bronchi, 0.6 * sc) * m * amp * 0.4
        keep = 1.0 - 0.7 * np.clip(patchy / 0.45, 0, 1)
        return m, add, keep.astype(np.float32), None

    def _fibrosis(self, ctx: dict[str, Any]):
        rng, S, sc, u = self.rng, self.size, self.scale, self.u
        xg, yg = self.xg, self.yg
        side = self._side()
        region_lung = ctx["lung_side"][side]
        cpx, cpy = ctx["lungs"][side]["cp"]
        ex, ey = cpx - side * u(rng.uniform(0.06, 0.1)), cpy - u(rng.uniform(0.1, 0.16))
        rx, ry = u(rng.uniform(0.08, 0.12)), u(rng.uniform(0.11, 0.17))
        zone = ((xg - ex) / rx) ** 2 + ((yg - ey) / ry) ** 2 < 1.0
        m = zone & region_lung
        if m.sum() < 8:
            m = region_lung & (yg > u(0.45))
        x1, y1, x2, y2 = _tight_box(m)
        net = np.zeros((S, S), np.float32)
        count = int(max(20, (x2 - x1) * (y2 - y1) / (18.0 * sc * sc)))
        px = rng.uniform(x1, x2, count)
        py = rng.uniform(y1, y2, count)
        ang = rng.uniform(0, np.pi, count)
        length = u(0.022) * rng.uniform(0.5, 1.2, count)
        for i in range(count):
            dx, dy = math.cos(ang[i]) * length[i], math.sin(ang[i]) * length[i]
            pts = np.array([[px[i] - dx, py[i] - dy], [px[i] + dx, py[i] + dy]])
            _polyline(net, pts, value=1.0, thickness=1.0 * sc)
        # honeycombing: small cystic rings in the most affected (lowest, outermost) part
        for _ in range(int(rng.integers(3, 9))):
            cx, cy = _pick_point(rng, m & (yg > ey), m)
            r = u(rng.uniform(0.008, 0.014))
            cv2.circle(
                net,
                (int(cx * _ONE), int(cy * _ONE)),
                int(r * _ONE),
                1.0,
                thickness=max(1, int(sc)),
                lineType=cv2.LINE_AA,
                shift=_SHIFT,
            )
        weight = _soft(m, 2.0 * sc)
        amp = rng.uniform(0.07, 0.12)
        add = (np.clip(_blur(net, 0.6 * sc), 0, 1) * amp + 0.03) * weight
        return m, add.astype(np.float32), 1.0 - 0.5 * weight, None

    def _effusion(self, ctx: dict[str, Any]):
        rng, u = self.rng, self.u
        xg, yg = self.xg, self.yg
        side = self._side()
        lung_side = ctx["lung_side"][side]
        lungs = ctx["lungs"][side]
        x_lat, y_cp = lungs["cp"]
        dome_y = lungs["dome"][1]
        x_med = u(self.a.cx + side * 0.05)
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
        weight = np.clip((yg - top) / u(0.035), 0.0, 1.0) * _soft(lung_side, 1.0)
        value = 0.62 + 0.06 * np.clip((yg - top) / u(0.15), 0, 1)
        keep = 1.0 - weight
        return m, np.zeros_like(weight), keep.astype(np.float32), (weight, value)

    def _pneumothorax(self, ctx: dict[str, Any]):
        rng, S, sc, u = self.rng, self.size, self.scale, self.u
        side = self._side()
        outline = ctx["lungs"][side]
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
        collapsed = _fill(S, [retracted])
        region = ctx["lung_side"][side]
        m = region & ~collapsed
        if m.sum() < 8:
            retracted = hilum + v * (1.0 - 0.45 * reach)[:, None]
            collapsed = _fill(S, [retracted])
            m = region & ~collapsed
        if not m.any():  # a tiny image: keep at least the apical cap
            rows = np.flatnonzero(region.any(axis=1))
            m = region & (self.yg < rows[0] + 3)
        line = np.zeros((S, S), np.float32)
        _polyline(line, retracted, value=1.0, thickness=1.0 * sc, closed=True)
        near = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & region
        m_f = _soft(m, 0.7 * sc)
        add = (
            _blur(line, 0.4 * sc) * near * rng.uniform(0.08, 0.14)  # visceral pleural line
            - m_f * rng.uniform(0.03, 0.06)  # no lung tissue, only air
            + _soft(collapsed & region, 1.0 * sc) * 0.03 * depth / 0.25  # denser collapsed lung
        )
        return m, add.astype(np.float32), 1.0 - m_f, None


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
    geo = _view_geometry(anatomy, view, rng)
    return _Renderer(rng=rng, size=size, anatomy=anatomy, geo=geo).render(findings)


# ---------------------------------------------------------------------------------------------
# Dataset plan: who, which view, which findings (deterministic from the seed alone)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlannedImage:
    """One image of a generated dataset: who, which view, which findings, how it is stored."""

    dataset: str
    index: int
    image_id: str
    patient_id: str
    patient_number: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]
    split: str  # VinDr: "train" / "test"; NIH: ""
    photometric: str  # VinDr: MONOCHROME1 / MONOCHROME2
    bits_stored: int  # VinDr: 12 or 14


def _hex_id(*parts: object) -> str:
    return hashlib.md5(":".join(str(p) for p in parts).encode()).hexdigest()


def plan_dataset(
    dataset: str, *, n: int, seed: int, abnormal_fraction: float, ap_fraction: float
) -> list[PlannedImage]:
    """Patients, follow-ups, views and findings of one dataset, in file order.

    Depends only on its arguments (not on the image size), so :func:`render_planned` can redraw any
    written image in memory, e.g. to compare a reader's output with the intended display.
    """
    code = _DATASET_CODE[dataset]
    rng = np.random.default_rng([seed, code, 0])
    # patients: most have one film, some 2-4 follow-ups (so patient-level splits matter)
    patients: list[tuple[int, int, int, str]] = []  # (patient number, films, age, sex)
    total = 0
    while total < n:
        films = 1 if rng.random() < 0.7 else int(rng.integers(2, 5))
        films = min(films, n - total)
        patients.append(
            (len(patients) + 1, films, int(rng.integers(18, 91)), str(rng.choice(["M", "F"])))
        )
        total += films
    abnormal = np.zeros(n, bool)
    abnormal[rng.permutation(n)[: int(round(n * abnormal_fraction))]] = True
    views = np.where(rng.random(n) < ap_fraction, "AP", "PA")
    # VinDr: whole patients go to train until ~80% of the films are there
    split_of: dict[int, str] = {}
    if dataset == "vindr":
        in_train = 0
        for k in rng.permutation(len(patients)):
            number, films = patients[k][0], patients[k][1]
            split_of[number] = "train" if in_train < 0.8 * n else "test"
            in_train += films if split_of[number] == "train" else 0
    items: list[PlannedImage] = []
    for number, films, age, sex in patients:
        patient_id = (
            str(number) if dataset == "nih" else _hex_id(seed, "vindr-patient", number)[:16]
        )
        for follow_up in range(films):
            i = len(items)
            findings: tuple[str, ...] = ()
            if abnormal[i]:
                k = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
                chosen = set(rng.choice(len(FINDINGS), size=k, replace=False).tolist())
                findings = tuple(f for j, f in enumerate(FINDINGS) if j in chosen)
            image_id = (
                f"{number:08d}_{follow_up:03d}" if dataset == "nih" else _hex_id(seed, dataset, i)
            )
            items.append(
                PlannedImage(
                    dataset=dataset,
                    index=i,
                    image_id=image_id,
                    patient_id=patient_id,
                    patient_number=number,
                    follow_up=follow_up,
                    age=min(age + (follow_up + 1) // 3, 95),
                    sex=sex,
                    view=str(views[i]),
                    findings=findings,
                    split=split_of.get(number, ""),
                    photometric="MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2",
                    bits_stored=int(rng.choice([12, 14])),
                )
            )
    return items


def render_planned(item: PlannedImage, *, seed: int, size: int) -> Phantom:
    """Draw the phantom :func:`generate` writes for ``item`` (same seed and size -> same pixels)."""
    code = _DATASET_CODE[item.dataset]
    anatomy = sample_anatomy(
        np.random.default_rng([seed, code, 2, item.patient_number]), female=item.sex == "F"
    )
    return render_phantom(
        rng=np.random.default_rng([seed, code, 1, item.index]),
        size=size,
        view=item.view,
        findings=item.findings,
        anatomy=anatomy,
    )


# ---------------------------------------------------------------------------------------------
# Writers (every file: temp name in the same folder, then os.replace)
# ---------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def _write_nih_item(item: PlannedImage, phantom: Phantom, root: Path) -> dict[str, Any]:
    _write_atomic(root / "images" / f"{item.image_id}.png", _png_bytes(phantom.to_uint8()))
    masks: dict[str, str] = {}
    for key, mask in phantom.masks.items():
        name = phantom.nih_names.get(key, key)  # lung, heart, or the NIH finding name
        rel = f"masks/{item.image_id}.{name}.png"
        _write_atomic(root / rel, _png_bytes(mask.astype(np.uint8) * 255))
        masks[name] = rel
    return {
        "labels": sorted(phantom.nih_names[f] for f in item.findings),
        "boxes": [(phantom.nih_names[f], x1, y1, x2, y2) for f, x1, y1, x2, y2 in phantom.boxes],
        "masks": masks,
    }


def _reader_boxes(
    item: PlannedImage, phantom: Phantom, *, seed: int, size: int
) -> list[tuple[str, str, tuple[float, float, float, float] | None]]:
    """Three readers' boxes: each finding boxed by each reader with a few % jitter per edge;
    now and then one reader misses a finding. A reader with no box reports "No finding"."""
    rng = np.random.default_rng([seed, _DATASET_CODE[item.dataset], 3, item.index])
    per_reader: dict[str, list[tuple[str, str, tuple[float, float, float, float] | None]]] = {
        r: [] for r in VINDR_READERS
    }
    for finding, x1, y1, x2, y2 in phantom.boxes:
        missing = int(rng.integers(len(VINDR_READERS))) if rng.random() < 0.12 else -1
        w, h = x2 - x1, y2 - y1
        for r, reader in enumerate(VINDR_READERS):
            jitter = np.clip(rng.normal(0.0, 0.025, 4), -0.06, 0.06) * np.array([w, h, w, h])
            if r == missing:
                continue
            bx1, by1, bx2, by2 = np.round(np.array([x1, y1, x2, y2]) + jitter, 1)
            bx1, bx2 = max(0.0, bx1), min(float(size), bx2)
            by1, by2 = max(0.0, by1), min(float(size), by2)
            if bx2 - bx1 < 1.0 or by2 - by1 < 1.0:
                bx1, by1, bx2, by2 = float(x1), float(y1), float(x2), float(y2)
            per_reader[reader].append((reader, VINDR_NAMES[finding], (bx1, by1, bx2, by2)))
    rows = []
    for reader in VINDR_READERS:
        rows.extend(per_reader[reader] or [(reader, VINDR_NO_FINDING, None)])
    return rows


def _dicom_bytes(item: PlannedImage, phantom: Phantom, *, seed: int) -> bytes:
    """The phantom as an uncompressed 16-bit DX DICOM (explicit VR little endian).

    Stored values span ``[lo, hi]`` inside ``BitsStored``; the window covers exactly that span in
    rescaled units, so Modality LUT + window (+ inversion for MONOCHROME1) gives back the display
    image up to quantisation.
    """
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng([seed, _DATASET_CODE[item.dataset], 4, item.index])
    size = phantom.image.shape[0]
    top = (1 << item.bits_stored) - 1
    lo = int(round(top * rng.uniform(0.02, 0.1)))
    hi = int(round(top * rng.uniform(0.85, 0.97)))
    stored = np.round(lo + phantom.image.astype(np.float64) * (hi - lo)).astype(np.uint16)
    center = 0.5 * (lo + hi)
    if item.photometric == "MONOCHROME1":  # bright = low values: invert the stored data
        stored = (top - stored).astype(np.uint16)
        center = top - center
    slope, intercept = (1.0, 0.0) if rng.random() < 0.7 else (2.0, -1024.0)

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["cxrkit-synth", str(seed), item.image_id, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyDate = "20200101"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.PatientID = item.patient_id
    ds.PatientSex = item.sex
    ds.PatientAge = f"{item.age:03d}Y"
    ds.ViewPosition = item.view
    ds.SeriesNumber = 1
    ds.InstanceNumber = item.follow_up + 1
    spacing = f"{phantom.pixel_spacing_mm:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = item.photometric
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = item.bits_stored
    ds.HighBit = item.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center * slope + intercept:.1f}"
    ds.WindowWidth = f"{(hi - lo) * slope:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _write_vindr_item(
    item: PlannedImage, phantom: Phantom, root: Path, *, seed: int
) -> dict[str, Any]:
    _write_atomic(
        root / item.split / f"{item.image_id}.dicom", _dicom_bytes(item, phantom, seed=seed)
    )
    return {"readers": _reader_boxes(item, phantom, seed=seed, size=phantom.image.shape[0])}


def _work(job: tuple[PlannedImage, int, int, str]) -> dict[str, Any]:
    """Render and write one image (runs in a worker process); returns what the CSVs need."""
    item, seed, size, out_dir = job
    phantom = render_planned(item, seed=seed, size=size)
    root = Path(out_dir) / item.dataset
    if item.dataset == "nih":
        result = _write_nih_item(item, phantom, root)
    else:
        result = _write_vindr_item(item, phantom, root, seed=seed)
    result["view"] = phantom.view
    result["nih_names"] = phantom.nih_names
    return result


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _csv_text(rows: Sequence[Sequence[object]], *, newline: str = "\n") -> bytes:
    """Plain CSV (no value here needs quoting: names hold no comma, quote or newline)."""
    return "".join(
        ",".join("" if v is None else str(v) for v in row) + newline for row in rows
    ).encode()


def _write_nih_tables(
    root: Path, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> None:
    spacing = FIELD_OF_VIEW_MM
    entry = [NIH_DATA_ENTRY_HEADER]
    bbox = [NIH_BBOX_HEADER]
    phantoms = [",".join(PHANTOMS_COLUMNS)]
    boxes = ["image_id,finding,x1,y1,x2,y2,reader"]
    for item, res in zip(items, results, strict=True):
        size = int(res["size"])
        pix = f"{spacing / size:.3f}"
        labels = "|".join(res["labels"]) or NIH_NO_FINDING
        # rows carry 11 values; only the header has the trailing comma (as in NIH's file)
        entry.append(
            f"{item.image_id}.png,{labels},{item.follow_up},{item.patient_number},{item.age},"
            f"{item.sex},{item.view},{size},{size},{pix},{pix}"
        )
        for name, x1, y1, x2, y2 in res["boxes"]:
            bbox.append(
                f"{item.image_id}.png,{name},{float(x1)!r},{float(y1)!r},"
                f"{float(x2 - x1)!r},{float(y2 - y1)!r}"
            )
            boxes.append(f"{item.image_id},{name},{x1},{y1},{x2},{y2},")
        masks = res["masks"]
        phantoms.append(
            ",".join(
                [
                    item.image_id,
                    f"images/{item.image_id}.png",
                    item.patient_id,
                    item.view,
                    labels,
                    masks["lung"],
                    masks["heart"],
                    *(masks.get(name, "") for name in NIH_FINDING_NAMES),
                ]
            )
        )
    _write_atomic(root / "Data_Entry_2017.csv", ("\r\n".join(entry) + "\r\n").encode())
    _write_atomic(root / "BBox_List_2017.csv", ("\n".join(bbox) + "\n").encode())
    _write_atomic(root / "phantoms.csv", ("\n".join(phantoms) + "\n").encode())
    _write_atomic(root / "phantom_boxes.csv", ("\n".join(boxes) + "\n").encode())


def _write_vindr_tables(
    root: Path, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> None:
    annotations_dir = root / "annotations"
    annotations_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ann = [",".join(VINDR_ANNOTATION_COLUMNS)]
        labels = [",".join((*VINDR_LABEL_ID_COLUMNS, *VINDR_LABELS))]
        for item, res in zip(items, results, strict=True):
            if item.split != split:
                continue
            found: dict[str, set[str]] = {r: set() for r in VINDR_READERS}
            for reader, class_name, box in res["readers"]:
                found[reader].add(class_name)
                coords = ["", "", "", ""] if box is None else [f"{v:.1f}" for v in box]
                ann.append(",".join([item.image_id, reader, class_name, *coords]))
            for reader in VINDR_READERS:
                flags = ["1" if name in found[reader] else "0" for name in VINDR_LABELS]
                labels.append(",".join([item.image_id, reader, *flags]))
        _write_atomic(
            annotations_dir / f"annotations_{split}.csv", ("\n".join(ann) + "\n").encode()
        )
        _write_atomic(
            annotations_dir / f"image_labels_{split}.csv", ("\n".join(labels) + "\n").encode()
        )


# ---------------------------------------------------------------------------------------------
# generate()
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SynthSummary:
    """What :func:`generate` wrote. ``counts[dataset]`` holds images, normal, abnormal, AP, PA,
    train/test (VinDr), patients, and one count per finding name of that dataset."""

    out_dir: Path
    n: int
    size: int
    seed: int
    datasets: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    seconds: float


def _validate(
    *,
    n: int,
    size: int,
    abnormal_fraction: float,
    ap_fraction: float,
    workers: int,
    datasets: Sequence[str],
) -> None:
    if n < 1:
        raise ConfigError(f"--n must be at least 1 image, got {n}")
    if not 64 <= size <= 4096:
        raise ConfigError(f"--size must be between 64 and 4096 pixels, got {size}")
    for name, value in (("--abnormal-fraction", abnormal_fraction), ("--ap-fraction", ap_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise ConfigError(
            f"--datasets must be a non-empty subset of {DATASETS}, got {list(datasets)}"
        )


def _results(
    jobs: list[tuple[PlannedImage, int, int, str]], *, workers: int, progress: bool
) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(
        total=len(jobs),
        desc="cxrkit synth",
        unit="img",
        disable=not progress or len(jobs) < _TQDM_MIN_ITEMS,
    )
    try:
        if workers == 1:
            for job in jobs:
                yield _work(job)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: callers (the demo, tests) may already run torch/OpenMP threads
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                chunk = max(1, min(32, len(jobs) // (8 * workers)))
                for result in pool.map(_work, jobs, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()


def generate(
    *,
    out_dir: Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    abnormal_fraction: float = 0.4,
    ap_fraction: float = 0.45,
    workers: int = 1,
    datasets: Sequence[str] = DATASETS,
    progress: bool = True,
) -> SynthSummary:
    """Write ``n`` phantoms per dataset under ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: output root; created if needed. Files of an earlier run are overwritten, never
            deleted.
        n: images per dataset (VinDr splits them ~80/20 train/test by patient).
        size: image side in pixels.
        seed: same seed -> byte-identical files, whatever ``workers`` is.
        abnormal_fraction: exact share of images with at least one finding.
        ap_fraction: probability of an AP film.
        workers: processes rendering in parallel.
        datasets: any of "nih", "vindr".
        progress: show a tqdm bar (only for 200 images or more).

    Raises:
        ConfigError: an argument out of range.
    """
    datasets = tuple(dict.fromkeys(datasets))
    _validate(
        n=n,
        size=size,
        abnormal_fraction=abnormal_fraction,
        ap_fraction=ap_fraction,
        workers=workers,
        datasets=datasets,
    )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    start = time.perf_counter()
    plans = {
        d: plan_dataset(
            d, n=n, seed=seed, abnormal_fraction=abnormal_fraction, ap_fraction=ap_fraction
        )
        for d in datasets
    }
    for d in datasets:
        sub = ["images", "masks"] if d == "nih" else ["train", "test", "annotations"]
        for name in sub:
            (out_dir / d / name).mkdir(parents=True, exist_ok=True)
    jobs = [(item, seed, size, str(out_dir)) for d in datasets for item in plans[d]]
    results = list(_results(jobs, workers=min(workers, len(jobs)), progress=progress))
    for result in results:
        result["size"] = size
    counts: dict[str, dict[str, int]] = {}
    offset = 0
    for d in datasets:
        items, res = plans[d], results[offset : offset + len(plans[d])]
        offset += len(items)
        if d == "nih":
            _write_nih_tables(out_dir / "nih", items, res)
        else:
            _write_vindr_tables(out_dir / "vindr", items, res)
        counts[d] = _count(d, items, res)
    summary = SynthSummary(
        out_dir=out_dir,
        n=n,
        size=size,
        seed=seed,
        datasets=datasets,
        counts=counts,
        seconds=time.perf_counter() - start,
    )
    _write_atomic(out_dir / "README.txt", _readme(summary, abnormal_fraction, ap_fraction).encode())
    return summary


def _count(
    dataset: str, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> dict[str, int]:
    c: Counter[str] = Counter()
    c["images"] = len(items)
    c["patients"] = len({i.patient_number for i in items})
    for item, res in zip(items, results, strict=True):
        c["abnormal" if item.findings else "normal"] += 1
        c[item.view] += 1
        if item.split:
            c[item.split] += 1
        if dataset == "nih":
            c.update(res["labels"])
        else:
            c.update(VINDR_NAMES[f] for f in item.findings)
    return dict(c)


def _readme(summary: SynthSummary, abnormal_fraction: float, ap_fraction: float) -> str:
    lines = [
        "Synthetic chest-radiograph phantoms written by `cxrkit synth` (cxrkit.data.synthetic).",
        "Not patient data: every image is drawn from geometry and noise.",
        "",
        f"seed: {summary.seed}",
        f"images per dataset: {summary.n}",
        f"image size: {summary.size} x {summary.size} px "
        f"({FIELD_OF_VIEW_MM / summary.size:.3f} mm per pixel)",
        f"abnormal fraction: {abnormal_fraction}",
        f"AP fraction: {ap_fraction}",
        "Same seed and arguments -> byte-identical files.",
        "",
    ]
    for d in summary.datasets:
        lines.append(f"[{d}]")
        lines.extend(f"  {k}: {v}" for k, v in sorted(summary.counts[d].items()))
        lines.append("")
    lines += [
        "Layout:",
        "  nih/images/<image_id>.png, nih/masks/<image_id>.<name>.png (lung, heart, findings)",
        "  nih/Data_Entry_2017.csv, nih/BBox_List_2017.csv (NIH 2017 formats)",
        "  nih/phantoms.csv, nih/phantom_boxes.csv (generic CSV adapter)",
        "  vindr/{train,test}/<image_id>.dicom, vindr/annotations/*.csv (VinDr-CXR PhysioNet",
        f"  layout; readers {', '.join(VINDR_READERS)})",
        "",
    ]
    return "\n".join(lines)
