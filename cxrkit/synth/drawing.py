"""Drawing primitives of the phantoms: pixel coordinates as floats, pixel centres at integer +
0.5; OpenCV draws with :data:`SHIFT` fractional bits so sub-pixel geometry survives."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

SHIFT = 4  # fractional bits of the coordinates OpenCV draws with
ONE = 1 << SHIFT


def fill(size: int, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Polygons (N, 2) in pixel coordinates -> bool mask (pixel centres at integer + 0.5)."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round((np.asarray(p) - 0.5) * ONE).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8, shift=SHIFT)
    return canvas.astype(bool)


def polyline(
    canvas: np.ndarray, points: np.ndarray, *, value: float, thickness: float, closed: bool = False
) -> None:
    """Draw an anti-aliased polyline in place (float32 canvas); thickness in pixels (>= 1)."""
    pts = np.round((np.asarray(points) - 0.5) * ONE).astype(np.int32)
    cv2.polylines(
        canvas,
        [pts],
        closed,
        float(value),
        thickness=max(1, int(round(thickness))),
        lineType=cv2.LINE_AA,
        shift=SHIFT,
    )


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return blur(mask.astype(np.float32), sigma)


def ellipse(
    cx: float, cy: float, ax: float, ay: float, angle_deg: float, n: int = 64
) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1]-ish: a cells x cells grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def rotate(vectors: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate (N, 2) vectors by (N,) angles in radians (image axes: y down)."""
    c, s = np.cos(angles), np.sin(angles)
    x, y = vectors[:, 0], vectors[:, 1]
    return np.stack([c * x - s * y, s * x + c * y], 1)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of a non-empty bool mask as pixel edges (x1, y1, x2, y2), x2/y2 exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pick_point(
    rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray
) -> tuple[float, float]:
    """A random pixel centre (x, y) where ``candidates`` is true, else where ``fallback`` is."""
    where = np.flatnonzero(candidates)
    if where.size == 0:
        where = np.flatnonzero(fallback)
    k = int(where[rng.integers(where.size)])
    size = candidates.shape[1]
    return k % size + 0.5, k // size + 0.5
