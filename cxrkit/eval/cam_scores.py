"""Localisation scores of class activation maps: energy inside a box and the pointing game.

Kernels (array in, number out) and their assembly over a CAM index (``cams.csv``):

- **energy share**: the fraction of a map's mass inside a box, ``sum(cam[inside]) / sum(cam)``
  (the "energy-based pointing game" of Score-CAM, Wang et al. 2020); 1 when every bit of the map
  lies in the box, the box's share of the image for a flat map.
- **pointing hit**: whether the map's maximum falls inside the box (Zhang et al. 2018's pointing
  game, without their 15-pixel tolerance). Ties: a hit when *any* maximal pixel is inside.

Both are scored against the **predicted box** the map explains (``energy_in_box``,
``pointing_hit``: does the map look where the detector says the finding is?) and against the
**ground-truth boxes of the same class** in that image (``energy_in_gt``, ``pointing_hit_gt``: the
classic pointing game; NaN when the image has no box of that class). A map that is zero everywhere
scores NaN (it points nowhere); means skip NaN and count it.

Pixel convention: pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``; it is inside a
box ``x1y1x2y2`` (same pixels as the map) when its centre ``(j + 0.5, i + 0.5)`` is, edges included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrkit.errors import DataError
from cxrkit.eval import bootstrap

# the per-CAM score columns of a CAM index, and what each is scored against
SCORE_COLUMNS = {
    "energy_in_box": "share of the map's energy inside the predicted box",
    "pointing_hit": "map maximum inside the predicted box",
    "energy_in_gt": "share of the map's energy inside the ground-truth boxes of that class",
    "pointing_hit_gt": "map maximum inside a ground-truth box of that class (pointing game)",
}


# --------------------------------------------------------------------------------------------------
# kernels


def box_mask(shape: tuple[int, int], boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The pixels of an ``(H, W)`` grid whose centre lies in any of ``boxes``.

    Args:
        shape: ``(H, W)`` of the map.
        boxes: ``(N, 4)`` x1y1x2y2 in the map's pixels; N may be 0 (an empty mask).

    Returns:
        ``bool[H, W]``, the union of the boxes.
    """
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    columns, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        inside_x = (columns >= x1) & (columns <= x2)
        inside_y = (rows >= y1) & (rows <= y2)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def _check_map(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.shape != mask.shape:
        raise ValueError(f"cam must be (H, W) like the mask {mask.shape}, got {cam.shape}")
    if not np.isfinite(cam).all() or cam.min() < 0:
        raise ValueError("cam must be finite and non-negative")
    return cam


def energy_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """``sum(cam[mask]) / sum(cam)`` in [0, 1]; NaN for a map that is zero everywhere."""
    cam = _check_map(cam, mask)
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else math.nan


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when a maximal pixel of ``cam`` is in ``mask``, else 0.0; NaN for an all-zero map."""
    cam = _check_map(cam, mask)
    peak = cam.max()
    if peak <= 0:
        return math.nan
    return float(bool((cam[mask] == peak).any()))


def score_cam(
    cam: np.ndarray,
    *,
    box: Sequence[float],
    gt_boxes: np.ndarray | Sequence[Sequence[float]] = (),
) -> dict[str, float]:
    """The four :data:`SCORE_COLUMNS` of one map.

    Args:
        cam: ``(H, W)`` non-negative map.
        box: the predicted box it explains, x1y1x2y2 in the map's pixels.
        gt_boxes: ``(N, 4)`` ground-truth boxes of the box's class in that image, same pixels;
            with none, the two ``*_gt`` scores are NaN.
    """
    own = box_mask(cam.shape, [box])
    scores = {"energy_in_box": energy_share(cam, own), "pointing_hit": pointing_hit(cam, own)}
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt):
        truth = box_mask(cam.shape, gt)
        scores["energy_in_gt"] = energy_share(cam, truth)
        scores["pointing_hit_gt"] = pointing_hit(cam, truth)
    else:
        scores["energy_in_gt"] = scores["pointing_hit_gt"] = math.nan
    return scores


# --------------------------------------------------------------------------------------------------
# assembly over a CAM index


def _check_index(index: pd.DataFrame, group: str) -> None:
    missing = [c for c in (group, *SCORE_COLUMNS) if c not in index.columns]
    if missing:
        raise DataError(f"CAM index lacks the columns {missing} (a cams.csv of this cxrkit?)")


def _means_by_group(index: pd.DataFrame, group: str) -> tuple[np.ndarray, pd.DataFrame]:
    # per image (or patient): the sum and the count of finite scores, so that a weighted
    # resample of groups gives the mean over the CAMs it contains
    values = index[list(SCORE_COLUMNS)].astype(np.float64)
    finite = values.notna()
    keys = index[group].astype(str).to_numpy()
    sums = values.fillna(0.0).groupby(keys, sort=True).sum()
    counts = finite.groupby(keys, sort=True).sum().astype(np.float64)
    return sums.index.to_numpy(), pd.concat({"sum": sums, "n": counts}, axis=1)


def _weighted_means(table: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for column in SCORE_COLUMNS:
        sums = weights @ table[("sum", column)].to_numpy()
        counts = weights @ table[("n", column)].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[column] = np.where(counts > 0, sums / counts, np.nan)
    return out


def _replicates(
    table: pd.DataFrame, *, groups: np.ndarray, n_bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    blocks = [
        _weighted_means(table, w)
        for w in bootstrap.iter_patient_weights(groups=groups, n_bootstrap=n_bootstrap, seed=seed)
    ]
    return {
        c: np.concatenate([b[c] for b in blocks]) if blocks else np.zeros(0) for c in SCORE_COLUMNS
    }


def summarise(
    index: pd.DataFrame,
    *,
    group: str = "image_id",
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, object]:
    """Mean of each score over one model's CAMs, with a bootstrap interval.

    Args:
        index: one row per CAM with the :data:`SCORE_COLUMNS` (NaN where undefined) and ``group``.
        group: the resampling unit (``image_id``: an image's CAMs stay together; ``patient_id``
            when the index has it).
        n_bootstrap: replicates (0: no interval).

    Returns:
        ``{"n_cams", "n_images", column: {"value", "ci", "n_undefined", "n"}}`` where ``n``
        counts the CAMs with a defined score (``energy_in_gt``: those with a ground-truth box of
        their class).
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    _check_index(index, group)
    out: dict[str, object] = {"n_cams": len(index), "n_images": int(index[group].nunique())}
    if index.empty:
        for column in SCORE_COLUMNS:
            out[column] = {**bootstrap.estimate(math.nan), "n": 0}
        return out
    groups, table = _means_by_group(index, group)
    point = _weighted_means(table, np.ones((1, len(groups))))
    reps = _replicates(table, groups=groups, n_bootstrap=n_bootstrap, seed=seed)
    for column in SCORE_COLUMNS:
        n = int(index[column].notna().sum())
        estimate = bootstrap.estimate(
            point[column][0], reps[column] if n_bootstrap else None, level=level
        )
        out[column] = {**estimate, "n": n}
    return out


def compare(
    index_a: pd.DataFrame,
    index_b: pd.DataFrame,
    *,
    group: str = "image_id",
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, object]:
    """Model B's mean score minus model A's, with an interval and a bootstrap p-value.

    **Paired** when both explained the same images (the same set of ``group`` values; the boxes
    may differ, each model explaining its own detections): one resample of the images feeds both
    means. Otherwise **unpaired**: each model's images are resampled on their own (different
    seeds) and the difference of the two means is taken replicate by replicate.

    Returns:
        ``{"pairing": "paired by image" | "unpaired", "n_a", "n_b",
        column: {"value", "ci", "n_undefined", "p_value", "p_floor", "n_replicates"}}``.
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    _check_index(index_a, group)
    _check_index(index_b, group)
    set_a, set_b = set(index_a[group].astype(str)), set(index_b[group].astype(str))
    paired = bool(set_a) and set_a == set_b
    out: dict[str, object] = {
        "pairing": "paired by image" if paired else "unpaired",
        "n_a": len(index_a),
        "n_b": len(index_b),
    }
    groups_a, table_a = _means_by_group(index_a, group) if len(index_a) else (np.zeros(0), None)
    groups_b, table_b = _means_by_group(index_b, group) if len(index_b) else (np.zeros(0), None)
    if table_a is None or table_b is None:
        for column in SCORE_COLUMNS:
            out[column] = {**bootstrap.estimate(math.nan), **bootstrap.p_value_entry(None)}
        return out
    point_a = _weighted_means(table_a, np.ones((1, len(groups_a))))
    point_b = _weighted_means(table_b, np.ones((1, len(groups_b))))
    reps_a = _replicates(table_a, groups=groups_a, n_bootstrap=n_bootstrap, seed=seed)
    # paired: the same groups (sorted alike) and seed give the same weights for both models
    reps_b = _replicates(
        table_b, groups=groups_b, n_bootstrap=n_bootstrap, seed=seed if paired else seed + 1
    )
    for column in SCORE_COLUMNS:
        diff = reps_b[column] - reps_a[column] if n_bootstrap else None
        value = point_b[column][0] - point_a[column][0]
        out[column] = {
            **bootstrap.estimate(value, diff, level=level),
            **bootstrap.p_value_entry(diff),
        }
    return out


def summary_row(summary: Mapping[str, object]) -> dict[str, object]:
    """The flat numbers of :func:`summarise` (``energy_in_box``, ``energy_in_box_ci_low``, ...)."""
    row: dict[str, object] = {"n_cams": summary["n_cams"], "n_images": summary["n_images"]}
    for column in SCORE_COLUMNS:
        entry = summary[column]
        ci = entry.get("ci") or [math.nan, math.nan]
        row[column] = entry["value"]
        row[f"{column}_ci_low"], row[f"{column}_ci_high"] = ci
        row[f"{column}_n"] = entry["n"]
    return row
