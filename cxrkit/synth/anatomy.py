"""The patient and the view: body habitus, AP/PA geometry, and the anatomical layers of a film
(outlines of lungs and heart; body, vessels, spine, ribs, clavicles, scapulae; ECG leads).

Each layer is a function of a :class:`Canvas` and draws from its generator, so the order in
which :mod:`cxrkit.synth.rendering` calls them is part of what makes a seed reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrkit.synth.drawing import ONE, SHIFT, blur, ellipse, fill, polyline, rotate

# Physical scale: a 38 cm detector field across the image (NIH: ~2,700 px at 0.143 mm).
FIELD_OF_VIEW_MM = 380.0


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
class ViewGeometry:
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


def view_geometry(anatomy: Anatomy, view: str, rng: np.random.Generator) -> ViewGeometry:
    ap = view == "AP"
    # AP films are mostly supine/bedside: poorer inspiration raises the diaphragm, the heart lies
    # farther from the detector and is magnified, scatter lowers contrast, and the lower dose of a
    # portable unit leaves more quantum noise.
    inspiration = rng.uniform(0.03, 0.08) if ap else rng.uniform(-0.01, 0.02)
    magnification = rng.uniform(1.12, 1.25) if ap else rng.uniform(0.98, 1.03)
    dome_r = anatomy.dome_y - inspiration
    dome_l = dome_r + rng.uniform(0.012, 0.03)
    return ViewGeometry(
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


@dataclass(frozen=True)
class Canvas:
    """What every layer of one film draws with: the generator, the patient, the view, and the
    pixel grid. Pixel units throughout; :meth:`u` turns image fractions into pixels; drawing sizes
    are tuned at 256 px and scaled by ``scale``."""

    rng: np.random.Generator
    size: int
    a: Anatomy
    g: ViewGeometry
    scale: float
    xg: np.ndarray  # (size, size) float32 pixel-centre x
    yg: np.ndarray  # (size, size) float32 pixel-centre y

    @classmethod
    def create(
        cls, *, rng: np.random.Generator, size: int, anatomy: Anatomy, geo: ViewGeometry
    ) -> Canvas:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        return cls(
            rng=rng, size=size, a=anatomy, g=geo, scale=size / 256.0, xg=xx + 0.5, yg=yy + 0.5
        )

    def u(self, fraction: float) -> float:
        return float(fraction) * self.size


# -- outlines -----------------------------------------------------------------------------------


def lung_outline(c: Canvas, side: int) -> dict[str, np.ndarray]:
    """Outline of one lung (side -1: image left = patient right; +1: image right)."""
    a, g, u = c.a, c.g, c.u
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
        "polygon": pts * c.size,
        "diaphragm": np.stack([x_dia, y_dia], 1) * c.size,
        "cp": np.array([u(x_lat[-1]), u(cp)]),
        "dome": np.array([u(x_dia[int(peak * 39)]), u(dome)]),
        "hilum": np.array([u(cx + side * 0.11), u(0.37 + 0.3 * (dome - 0.66))]),
    }


def heart_polygon(c: Canvas) -> np.ndarray:
    """Cardiac silhouette: right atrial arc on the image left, left ventricle to the apex.

    Its widest horizontal extent is ``ctr * 2 * half_width`` (the cardiothoracic ratio).
    """
    a, g = c.a, c.g
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
    return pts * c.size


# -- layers -------------------------------------------------------------------------------------


def body_mask(c: Canvas) -> np.ndarray:
    """Neck, shoulders, chest wall and arms."""
    a, g, S = c.a, c.g, c.size
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
    body = fill(S, [pts])
    return body


def vessels(c: Canvas, lungs: dict[int, dict[str, np.ndarray]]) -> np.ndarray:
    """Branching pulmonary vessels from each hilum, tapering and fading to the periphery.

    The tree grows one generation at a time for all branches at once (one cv2 call each).
    """
    rng, S, sc, u = c.rng, c.size, c.scale, c.u
    canvas = np.zeros((S, S), np.float32)
    for side in (-1, 1):
        trunks = np.deg2rad(np.array([-80, -55, -30, -5, 20, 45, 70, 95]) + rng.normal(0, 6, 8))
        dirs = np.stack([side * np.cos(trunks), np.sin(trunks)], 1)
        starts = np.tile(lungs[side]["hilum"], (len(trunks), 1))
        length = u(0.09) * rng.uniform(0.8, 1.2, len(trunks))
        width, value = 2.4 * sc, 0.1
        for _generation in range(5):
            n = len(starts)
            dirs = rotate(dirs, rng.normal(0.0, 0.25, n))
            ends = starts + dirs * length[:, None]
            mids = 0.5 * (starts + ends) + rng.normal(0.0, 1.0, (n, 2)) * (0.08 * length)[:, None]
            segments = np.round((np.stack([starts, mids, ends], 1) - 0.5) * ONE).astype(np.int32)
            cv2.polylines(
                canvas,
                list(segments),
                False,
                value,
                thickness=max(1, int(round(width))),
                lineType=cv2.LINE_AA,
                shift=SHIFT,
            )
            # every branch forks in two, narrower, shorter and fainter
            spread = np.deg2rad(rng.uniform(18, 38, (n, 2))) * np.array([-1.0, 1.0])
            dirs = rotate(np.repeat(dirs, 2, axis=0), spread.ravel())
            starts = np.repeat(ends, 2, axis=0)
            length = np.repeat(length, 2) * rng.uniform(0.62, 0.8, 2 * n)
            width, value = max(width * 0.7, 1.0), value * 0.78
    return blur(canvas, 0.6 * sc)


def spine(c: Canvas, body: np.ndarray) -> np.ndarray:
    a, u, sc = c.a, c.u, c.scale
    xg, yg = c.xg, c.yg
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
    return blur((0.05 * column * bodies + 0.03 * ped) * fade * body, 0.6 * sc).astype(np.float32)


def ribs(c: Canvas, lungs: dict[int, dict[str, np.ndarray]], lung_f: np.ndarray, body: np.ndarray):
    """Posterior ribs (arcs from the spine) and fainter anterior ribs, with bright cortices."""
    a, g, u, S, sc, rng = c.a, c.g, c.u, c.size, c.scale, c.rng
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
            polyline(canvas, pts, value=1.0, thickness=width)
            polyline(canvas, pts, value=0.5, thickness=max(width - 2.2 * sc, 1.0))
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
                polyline(canvas, (basis @ actrl) * S, value=0.4, thickness=width * 0.9)
    canvas = blur(canvas, 0.6 * sc)
    # a rib shows best against aerated lung; the mediastinum and abdomen all but hide it
    thorax_x = np.abs(c.xg - u(a.cx)) < u(g.half_width + a.chest_wall)
    weight = 0.15 * lung_f + 0.04 * (1.0 - lung_f) * (body & thorax_x)
    return canvas * weight


def clavicles_and_shoulders(c: Canvas, body: np.ndarray) -> np.ndarray:
    """S-shaped clavicles, humeral heads and shafts."""
    a, g, u, S, sc = c.a, c.g, c.u, c.size, c.scale
    canvas = np.zeros((S, S), np.float32)
    wall = g.half_width + a.chest_wall
    for side in (-1, 1):
        t = np.linspace(0.0, 1.0, 28)
        x = a.cx + side * (0.03 + (wall - 0.03) * t)
        y = g.clavicle_med_y + (g.clavicle_lat_y - g.clavicle_med_y) * t
        y = y - 0.012 * np.sin(np.pi * t) - 0.008 * np.sin(2 * np.pi * t)
        pts = np.stack([x, y], 1) * S
        polyline(canvas, pts, value=1.0, thickness=u(0.025))
        polyline(canvas, pts, value=0.55, thickness=max(u(0.025) - 2.4 * sc, 1.0))
        # humeral head below the acromion, and the shaft down the arm
        hx = u(a.cx + side * (wall + 0.11))
        hy = u(g.clavicle_lat_y + 0.07)
        canvas += fill(S, [ellipse(hx, hy, u(0.065), u(0.06), 0.0, 48)]) * 0.85
        shaft = np.array(
            [
                (hx - u(0.03), hy),
                (hx + u(0.03), hy),
                (hx + u(0.027) + side * u(0.03), S + 1.0),
                (hx - u(0.027) + side * u(0.03), S + 1.0),
            ]
        )
        canvas += fill(S, [shaft]) * 0.6
    return blur(np.minimum(canvas, 1.0) * 0.2 * body, 0.7 * sc)


def scapulae(c: Canvas, lungs: dict[int, dict[str, np.ndarray]], body: np.ndarray) -> np.ndarray:
    """Scapular blades; projected over the upper lateral lung fields on AP films."""
    a, g, S, sc = c.a, c.g, c.size, c.scale
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
        canvas += fill(S, [tri])
    return blur(canvas, 1.0 * sc) * 0.07 * body


def ecg_leads(c: Canvas, body: np.ndarray) -> np.ndarray:
    """Monitoring electrodes and their wires, as on most bedside (AP) films."""
    rng, u, S, sc = c.rng, c.u, c.size, c.scale
    canvas = np.zeros((S, S), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        x, y = u(rng.uniform(0.2, 0.8)), u(rng.uniform(0.12, 0.35))
        r = u(0.014)
        cv2.circle(
            canvas,
            (int(x * ONE), int(y * ONE)),
            int(r * ONE),
            1.0,
            thickness=max(1, int(1.5 * sc)),
            lineType=cv2.LINE_AA,
            shift=SHIFT,
        )
        t = np.linspace(0, 1, 12)
        wx = x + (rng.uniform(-0.4, 0.4) * t + 0.05 * np.sin(3 * t)) * S
        wy = y + (rng.uniform(-0.3, -0.1) * t) * S
        polyline(canvas, np.stack([wx, wy], 1), value=0.8, thickness=1.0 * sc)
    return blur(canvas, 0.5 * sc) * 0.45
