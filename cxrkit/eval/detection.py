"""Detection metrics: COCO AP (pycocotools), the VinBigData VOC mAP@0.4, FROC, and AP/PA view gaps.

Every manifest image given to :func:`evaluate` takes part, with or without boxes: a detection on an
image with no finding is a false positive (such images are the true negatives of a screening list).
An image without any prediction row had no detection.

- **COCO AP**: pycocotools ``COCOeval`` on dicts built in memory (one area range, ``max_dets``
  detections per image and class). AP@0.5 per class and mean, AP@[0.5:0.95]. A class with no
  ground-truth box has no AP (NaN, left out of the means), never 0.
- **VOC mAP@0.4**, the VinBigData Kaggle metric: per class, detections of all images ranked by
  score; a detection is a true positive when its best-overlapping box of the same class and image
  has IoU > 0.4 and was not taken by a higher-scored detection (PASCAL VOC devkit rule);
  all-point interpolated AP; mean over classes with ground truth.
- **Kaggle leaderboard mAP@0.4** (VinBigData as Kaggle scored it): the VOC metric over 15 classes,
  "No finding" being the 15th. Every image without a ground-truth box carries one true "No
  finding" object, the box (0, 0, 1, 1) (Kaggle's ``14 1 0 0 1 1``); a submission says "no finding"
  with a prediction of that class (a ``No finding`` row; its box as given, Kaggle's ``0 0 1 1``).
  A detector's predictions have no such rows; then each image gets one derived "No finding"
  prediction at (0, 0, 1, 1) scoring 1 - its highest detection score (1 without detections), and
  the settings say so. Reported beside the 14-class ``voc_map``: both are named.
- **FROC** (ChestX-Det10 protocol): all classes pooled; a lesion is found by a same-class detection
  with IoU >= ``froc_iou``; sensitivity at 0.05, 0.1, 0.2, 0.5, 1 and 2 false positives per image,
  and their average.
- **Views**: COCO mAP@0.5 on AP images and on PA images (classes with boxes in both views) and the
  gap AP - PA.

Intervals come from the patient bootstrap (:mod:`cxrkit.eval.bootstrap`). The per-image matching
never depends on which images are resampled, so each metric is recomputed from the ranked matches
with integer image weights; the weighted COCO accumulation equals pycocotools' ``accumulate`` at
unit weights (tested). ``n_bootstrap=0`` (the default) skips it, for per-epoch validation.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cxrkit.data.records import Box, Record
from cxrkit.data.vocab import VINDR_NO_FINDING
from cxrkit.errors import ConfigError, DataError
from cxrkit.eval import bootstrap
from cxrkit.eval.classification import records_by_id
from cxrkit.eval.ground_truth import ground_truth_boxes, resolve_gt_reader
from cxrkit.eval.predictions import Issues, match_ids, report_or_raise, validate_predictions

COCO_IOUS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
FROC_RATES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # false positives per image, ChestX-Det10
COCO_RECALLS = np.linspace(0.0, 1.0, 101)  # pycocotools' recall thresholds
MAX_CURVE_POINTS = 400
GAP_VIEWS = ("AP", "PA")
NO_FINDING = VINDR_NO_FINDING  # the Kaggle metric's 15th class (class id 14)
NO_FINDING_BOX = (0.0, 0.0, 1.0, 1.0)  # Kaggle's "14 1 0 0 1 1": the box of a "No finding" object
BOOTSTRAP_UNITS = ("patient", "image")


# --------------------------------------------------------------------------------------------------
# matching and weighted accumulation


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of x1y1x2y2 boxes (continuous coordinates, no +1 pixel)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_voc(
    det: np.ndarray, scores: np.ndarray, gt: np.ndarray, *, iou_thr: float, strict: bool
) -> np.ndarray:
    """True-positive flags of one image's detections of one class (PASCAL VOC devkit rule).

    Detections are taken by descending score (stable); each one looks at the ground-truth box it
    overlaps most; it is a hit if that IoU passes ``iou_thr`` (``>`` when ``strict``, else ``>=``)
    and the box is not already taken. Returns flags in the order of ``det``.
    """
    hits = np.zeros(len(det), dtype=bool)
    if len(det) == 0 or len(gt) == 0:
        return hits
    ious = box_iou(det, gt)
    taken = np.zeros(len(gt), dtype=bool)
    for i in np.argsort(-np.asarray(scores), kind="mergesort"):
        j = int(np.argmax(ious[i]))
        passes = ious[i, j] > iou_thr if strict else ious[i, j] >= iou_thr
        if passes and not taken[j]:
            hits[i] = taken[j] = True
    return hits


def match_all(
    *,
    labels: np.ndarray,
    images: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
    gt: dict[tuple[int, int], list[tuple[float, float, float, float]]],
    voc_iou: float,
    froc_iou: float,
) -> tuple[np.ndarray, np.ndarray]:
    """VOC (IoU > ``voc_iou``) and FROC (IoU >= ``froc_iou``) hit flags of every detection.

    Args:
        labels, images, scores: ``(D,)`` class index, image index and score of each detection.
        boxes: ``(D, 4)`` x1y1x2y2.
        gt: (class, image) -> ground-truth boxes; absent keys have none (every detection misses).

    Returns:
        Two ``(D,)`` boolean arrays in the order of the inputs.
    """
    voc = np.zeros(len(labels), dtype=bool)
    froc = np.zeros(len(labels), dtype=bool)
    if len(labels) == 0:
        return voc, froc
    order = np.lexsort((images, labels))  # groups of one class on one image, contiguous
    key_l, key_i = labels[order], images[order]
    starts = np.flatnonzero(np.r_[True, (key_l[1:] != key_l[:-1]) | (key_i[1:] != key_i[:-1])])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends, strict=True):
        truth = gt.get((int(key_l[start]), int(key_i[start])))
        if not truth:
            continue
        rows = order[start:end]
        g = np.asarray(truth, dtype=np.float64)
        voc[rows] = match_voc(boxes[rows], scores[rows], g, iou_thr=voc_iou, strict=True)
        froc[rows] = match_voc(boxes[rows], scores[rows], g, iou_thr=froc_iou, strict=False)
    return voc, froc


@dataclass
class Ranked:
    """Detections of one class over all images, ranked by descending score (stable).

    Attributes:
        image: ``(D,)`` index of each detection's image.
        hit: ``(T, D)`` true positive at each IoU threshold (and not ignored).
        miss: ``(T, D)`` false positive (and not ignored).
        n_gt: ``(n_images,)`` ground-truth boxes per image (not ignored).
    """

    image: np.ndarray
    hit: np.ndarray
    miss: np.ndarray
    n_gt: np.ndarray

    def cumulative(self, weights: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted cumulative TP and FP ``(b, D)`` and the weighted number of boxes ``(b,)``."""
        w = weights[:, self.image]
        return (
            np.cumsum(w * self.hit[t], axis=1),
            np.cumsum(w * self.miss[t], axis=1),
            weights @ self.n_gt,
        )


def coco_ap(tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """pycocotools' 101-point interpolated AP of each row; NaN where there is no box."""
    b, d = tp.shape
    ap = np.zeros(b)
    if d:
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / n_gt[:, None]
        precision = tp / (tp + fp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for row in range(b):
            if n_gt[row] <= 0:
                continue
            idx = np.searchsorted(recall[row], COCO_RECALLS, side="left")
            found = idx < d
            ap[row] = envelope[row, idx[found]].sum() / COCO_RECALLS.size
    return np.where(n_gt > 0, ap, math.nan)


def voc_ap(tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """PASCAL VOC all-point interpolated AP of each row; NaN where there is no box."""
    b = tp.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_gt[:, None] > 0, tp / n_gt[:, None], 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    mrec = np.concatenate([np.zeros((b, 1)), recall, np.ones((b, 1))], axis=1)
    mpre = np.concatenate([np.zeros((b, 1)), precision, np.zeros((b, 1))], axis=1)
    envelope = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    ap = np.sum(np.diff(mrec, axis=1) * envelope[:, 1:], axis=1)
    return np.where(n_gt > 0, ap, math.nan)


def froc_sensitivities(
    tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray, n_images: np.ndarray, rates: Sequence[float]
) -> np.ndarray:
    """Sensitivity at each false-positives-per-image rate ``(b, len(rates))``.

    The best sensitivity among the operating points whose FP per image does not exceed the rate
    (0 when even the first detection exceeds it); NaN where there is no box.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = tp / n_gt[:, None]
        fppi = fp / n_images[:, None]
    out = np.zeros((tp.shape[0], len(rates)))
    for r, rate in enumerate(rates):
        allowed = np.where(fppi <= rate, sensitivity, 0.0)
        out[:, r] = allowed.max(axis=1, initial=0.0)
    out[n_gt <= 0] = math.nan
    return out


def _rank(image: np.ndarray, score: np.ndarray, flags: np.ndarray, n_gt: np.ndarray) -> Ranked:
    """Ranked detections from per-detection (image, score, (T, D) hit flags), ignoring nothing."""
    order = np.argsort(-score, kind="mergesort")
    hit = flags[:, order]
    return Ranked(image=image[order], hit=hit, miss=~hit, n_gt=n_gt)


# --------------------------------------------------------------------------------------------------
# pycocotools


def _quiet(fn: Callable[[], object]) -> None:
    """Call one of pycocotools' methods without its console output."""
    with contextlib.redirect_stdout(io.StringIO()):
        fn()


def run_cocoeval(
    *,
    gt: dict[int, list[tuple[int, tuple[float, float, float, float]]]],
    dt: pd.DataFrame,
    sizes: Sequence[tuple[int, int]],
    n_classes: int,
    iou_thresholds: Sequence[float],
    max_dets: int,
) -> COCOeval:
    """Run pycocotools on dicts built in memory; its console output is suppressed.

    Args:
        gt: image index -> list of (class index, x1y1x2y2) ground-truth boxes.
        dt: detections with integer columns ``image`` and ``label`` and ``score, x1, y1, x2, y2``.
        sizes: (width, height) of each image; image ``i`` becomes COCO image id ``i + 1``.
        n_classes: class ``k`` becomes category id ``k + 1``.
        iou_thresholds: COCO IoU thresholds.
        max_dets: detections kept per image and class (highest scores).

    Returns:
        The evaluated and accumulated ``COCOeval`` (one area range, ``all``).
    """
    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(sizes)]
    categories = [{"id": k + 1, "name": str(k)} for k in range(n_classes)]
    annotations = []
    for i, boxes in gt.items():
        for label, (x1, y1, x2, y2) in boxes:
            w, h = x2 - x1, y2 - y1
            # annotation ids start at 1: COCOeval stores the matched id, 0 meaning "unmatched"
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
    _quiet(coco_gt.createIndex)
    # built by hand rather than with loadRes, which fails on an empty detection list
    x1, y1 = dt["x1"].to_numpy(), dt["y1"].to_numpy()
    w, h = dt["x2"].to_numpy() - x1, dt["y2"].to_numpy() - y1
    detections = [
        {
            "id": n + 1,
            "image_id": int(i) + 1,
            "category_id": int(k) + 1,
            "bbox": [float(a), float(b), float(c), float(d)],
            "area": float(c * d),
            "score": float(s),
            "iscrowd": 0,
        }
        for n, (i, k, a, b, c, d, s) in enumerate(
            zip(dt["image"], dt["label"], x1, y1, w, h, dt["score"], strict=True)
        )
    ]
    coco_dt = COCO()
    coco_dt.dataset = {"images": images, "categories": categories, "annotations": detections}
    _quiet(coco_dt.createIndex)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = [im["id"] for im in images]
    evaluator.params.catIds = [c["id"] for c in categories]
    evaluator.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
    evaluator.params.areaRng = [[0.0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.maxDets = [int(max_dets)]
    _quiet(evaluator.evaluate)
    _quiet(evaluator.accumulate)
    return evaluator


def coco_ranked(evaluator: COCOeval, n_images: int) -> list[Ranked]:
    """Per class, the matches pycocotools made, ranked the way its ``accumulate`` ranks them."""
    p = evaluator.params
    n_img = len(p.imgIds)
    out = []
    for k in range(len(p.catIds)):
        entries = [e for e in evaluator.evalImgs[k * n_img : (k + 1) * n_img] if e is not None]
        n_gt = np.zeros(n_images)
        t = len(p.iouThrs)
        if not entries:
            empty = np.zeros((t, 0), dtype=bool)
            out.append(Ranked(np.zeros(0, dtype=int), empty, empty, n_gt))
            continue
        for e in entries:
            n_gt[e["image_id"] - 1] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        scores = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for e in entries])
        image = np.concatenate(
            [np.full(len(e["dtScores"]), e["image_id"] - 1, dtype=int) for e in entries]
        )
        matched = np.concatenate([e["dtMatches"] for e in entries], axis=1) > 0
        ignored = np.concatenate([e["dtIgnore"] for e in entries], axis=1).astype(bool)
        order = np.argsort(-scores, kind="mergesort")
        out.append(
            Ranked(
                image=image[order],
                hit=(matched & ~ignored)[:, order],
                miss=(~matched & ~ignored)[:, order],
                n_gt=n_gt,
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# predictions + manifest


def _prepare(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    classes: Sequence[str] | None,
    gt_reader: str,
    fusion_iou: float,
    allow_missing: bool,
) -> tuple[pd.DataFrame, list[Record], list[str], dict[str, list[Box]], Issues]:
    df, issues = validate_predictions(
        predictions, kind="detection", allow_missing=allow_missing, source="predictions"
    )
    index = records_by_id(records)
    ids = match_ids(
        df["image_id"], index, allow_missing=allow_missing, issues=issues, require_all=False
    )
    df = df[df["image_id"].isin(ids)]
    gt = ground_truth_boxes(records, gt_reader=gt_reader, iou_thr=fusion_iou)
    box_findings = {b.finding for boxes in gt.values() for b in boxes}
    label_findings = {f for r in records for f in r.labels}
    if classes is None:
        known = box_findings | label_findings
        unknown = sorted(set(df["finding"]) - known)
        report_or_raise(
            issues,
            "unknown_findings",
            unknown,
            message=f"predicted classes are unknown to the manifest (known: {sorted(known)})",
            allow_missing=allow_missing,
            source="predictions",
        )
        classes = sorted(box_findings | (set(df["finding"]) & known))
    else:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"classes {classes} name a class twice")
        others = sorted(set(df["finding"]) - set(classes))
        report_or_raise(
            issues,
            "unknown_findings",
            others,
            message=f"predicted classes are not among the classes evaluated {classes}",
            allow_missing=allow_missing,
            source="predictions",
        )
        untracked = sorted(box_findings - set(classes))
        if untracked:
            issues.add("ground_truth_classes_not_evaluated", untracked)
    if not classes:
        raise DataError("no class to evaluate: no ground-truth box and no known predicted class")
    df = df[df["finding"].isin(classes)]
    ordered = sorted(records, key=lambda r: r.image_id)
    # positive labels without any box of that class: scoring them would count right answers as
    # false positives; usually a sign that non-box-annotated images were mixed in
    unboxed = [
        f"{r.image_id}/{f}"
        for r in ordered
        for f, v in r.labels.items()
        if v == 1 and f in classes and not any(b.finding == f for b in gt[r.image_id])
    ]
    issues.add("positive_labels_without_boxes", unboxed)
    return df, ordered, classes, gt, issues


def evaluate(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    classes: Sequence[str] | None = None,
    iou_thresholds: Sequence[float] = COCO_IOUS,
    voc_iou: float = 0.4,
    froc_iou: float = 0.5,
    froc_rates: Sequence[float] = FROC_RATES,
    max_dets: int = 100,
    gt_reader: str = "auto",
    fusion_iou: float = 0.5,
    n_bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    allow_missing: bool = False,
    curves: bool = True,
    bootstrap_unit: str = "patient",
    replicates: bool = False,
) -> dict[str, object]:
    """Score detection predictions against the manifest's boxes.

    Args:
        predictions: ``image_id, finding, score, x1, y1, x2, y2`` rows in original pixels.
        records: the images to evaluate (all of them, with or without boxes).
        classes: classes to evaluate (default: every class with a ground-truth box, plus predicted
            classes the manifest knows as labels; those without boxes get NaN AP).
        iou_thresholds: COCO IoU thresholds; must contain 0.5 (AP@0.5). The COCO default gives
            AP@[0.5:0.95]; ``(0.5,)`` is quicker.
        voc_iou: IoU of the VOC metric (0.4: VinBigData), matched with ``>``.
        froc_iou, froc_rates: FROC hit IoU (``>=``) and FP-per-image rates.
        max_dets: detections per image and class kept by COCO (highest scores); the VOC metric
            and FROC use every detection, as the VinBigData metric did.
        gt_reader, fusion_iou: ground truth selection (:func:`ground_truth_boxes`).
        n_bootstrap, seed, level: patient bootstrap (0: off).
        allow_missing: tolerate and report unknown ids/classes, NaN scores and invalid boxes.
        curves: include precision-recall and FROC points for plots.
        bootstrap_unit: ``patient`` (default: a patient's images resampled together) or
            ``image`` (each image alone, e.g. a paired test between models over test images).
        replicates: also return the bootstrap replicates of the mean metrics (``replicates``:
            ``map50``, ``voc_map``, ``kaggle_map``, ``map50_AP``, ``map50_PA``, each a list of
            ``n_bootstrap`` numbers). Two calls on the same records with the same ``seed``,
            ``n_bootstrap`` and unit draw the same resamples, so their replicates are paired.

    Returns:
        A JSON-able dict: ``kind``, ``settings``, ``counts``, ``classes``, ``per_class``, ``mean``
        (``map50``, ``map50_95``, ``voc_map``: 14-class VOC mAP@0.4, ``froc``, ``froc_average``),
        ``kaggle`` (``map``: the 15-class leaderboard metric, ``no_finding_ap``,
        ``no_finding_predictions``: predicted or derived), ``views``,
        ``issues`` and ``curves``; every metric as ``{"value", "ci", "n_undefined"}``.
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    if bootstrap_unit not in BOOTSTRAP_UNITS:
        raise ConfigError(
            f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {bootstrap_unit!r}"
        )
    ious = [float(t) for t in iou_thresholds]
    if not any(abs(t - 0.5) < 1e-9 for t in ious):
        raise ConfigError(f"iou_thresholds {ious} must include 0.5 (AP@0.5 is always reported)")
    if max_dets < 1:
        raise ConfigError(f"max_dets must be >= 1, got {max_dets}")
    t50 = next(i for i, t in enumerate(ious) if abs(t - 0.5) < 1e-9)
    if classes is not None and NO_FINDING in classes:
        raise ConfigError(
            f"classes must not include {NO_FINDING!r}: it is the Kaggle metric's own class, "
            "scored from 'No finding' predictions or derived from the detections"
        )
    said_no_finding = (
        predictions["finding"].astype(str) == NO_FINDING
        if "finding" in predictions.columns
        else np.zeros(len(predictions), dtype=bool)
    )
    no_finding_rows = predictions[said_no_finding]
    predictions = predictions[~said_no_finding]
    # the report names the ground truth used: "auto" is recorded as what it resolved to
    gt_reader = resolve_gt_reader(records, gt_reader)
    df, ordered, classes, gt, issues = _prepare(
        predictions,
        records,
        classes=classes,
        gt_reader=gt_reader,
        fusion_iou=fusion_iou,
        allow_missing=allow_missing,
    )
    n_images, n_classes = len(ordered), len(classes)
    if n_images == 0:
        raise DataError("no image to evaluate")
    image_index = {r.image_id: i for i, r in enumerate(ordered)}
    class_index = {c: k for k, c in enumerate(classes)}
    dt = df.assign(
        image=df["image_id"].map(image_index).astype(int),
        label=df["finding"].map(class_index).astype(int),
    ).reset_index(drop=True)
    gt_idx = {
        i: [(class_index[b.finding], b.xyxy) for b in gt[r.image_id] if b.finding in class_index]
        for i, r in enumerate(ordered)
    }

    evaluator = run_cocoeval(
        gt=gt_idx,
        dt=dt,
        sizes=[(r.width, r.height) for r in ordered],
        n_classes=n_classes,
        iou_thresholds=ious,
        max_dets=max_dets,
    )
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    coco = coco_ranked(evaluator, n_images)

    # VOC and FROC: our own matching (rules differ from COCO's), pooled FROC over classes
    labels = dt["label"].to_numpy(dtype=int)
    images = dt["image"].to_numpy(dtype=int)
    scores = dt["score"].to_numpy(dtype=np.float64)
    n_gt_img = np.zeros((n_classes, n_images))
    gt_by: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for i, boxes in gt_idx.items():
        for label, xyxy in boxes:
            n_gt_img[label, i] += 1
            gt_by.setdefault((label, i), []).append(xyxy)
    voc_hit, froc_hit = match_all(
        labels=labels,
        images=images,
        scores=scores,
        boxes=dt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64),
        gt=gt_by,
        voc_iou=voc_iou,
        froc_iou=froc_iou,
    )
    kaggle_ranked, kaggle_source = _no_finding_ranked(
        no_finding_rows,
        dt,
        image_index=image_index,
        has_box=n_gt_img.sum(axis=0) > 0,
        voc_iou=voc_iou,
        allow_missing=allow_missing,
    )
    voc_ranked = []
    for k in range(n_classes):
        rows = np.flatnonzero(labels == k)
        rows = rows[np.argsort(images[rows], kind="stable")]  # image order, like pycocotools
        voc_ranked.append(_rank(images[rows], scores[rows], voc_hit[rows][None, :], n_gt_img[k]))
    rows = np.argsort(images, kind="stable")
    froc_ranked = _rank(images[rows], scores[rows], froc_hit[rows][None, :], n_gt_img.sum(axis=0))

    views = np.array([r.view for r in ordered], dtype=object)
    view_masks = {v: (views == v).astype(np.float64)[None, :] for v in GAP_VIEWS}
    has_gt = n_gt_img.sum(axis=1) > 0
    compared = has_gt & np.all([n_gt_img[:, views == v].sum(axis=1) > 0 for v in GAP_VIEWS], axis=0)

    def statistics(weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every bootstrapped statistic for a block of weights ``(b, n_images)``."""
        b = weights.shape[0]
        ap50 = np.column_stack([coco_ap(*r.cumulative(weights, t50)) for r in coco])
        voc = np.column_stack([voc_ap(*r.cumulative(weights, 0)) for r in voc_ranked])
        tp, fp, n_gt = froc_ranked.cumulative(weights, 0)
        froc = froc_sensitivities(tp, fp, n_gt, weights.sum(axis=1), froc_rates)
        no_finding = voc_ap(*kaggle_ranked.cumulative(weights, 0))
        kaggle = _nanmean(np.column_stack([voc, no_finding]))
        out = {"ap50": ap50, "voc": voc, "froc": froc, "nf": no_finding, "kaggle": kaggle}
        for v in GAP_VIEWS:
            out[f"ap50_{v}"] = np.column_stack(
                [coco_ap(*r.cumulative(weights * view_masks[v], t50)) for r in coco]
            ).reshape(b, n_classes)
        return out

    point = statistics(np.ones((1, n_images)))
    reps: dict[str, np.ndarray] | None = None
    if n_bootstrap:
        blocks = [
            statistics(w)
            for w in bootstrap.iter_patient_weights(
                groups=[
                    r.patient_id if bootstrap_unit == "patient" else r.image_id for r in ordered
                ],
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
        ]
        reps = {key: np.concatenate([blk[key] for blk in blocks]) for key in blocks[0]}

    def column(key: str, k: int) -> np.ndarray | None:
        return None if reps is None else reps[key][:, k]

    def class_mean(key: str, mask: np.ndarray) -> np.ndarray | None:
        return None if reps is None else _nanmean(reps[key][:, mask])

    def est(value: float, replicates: np.ndarray | None) -> dict[str, object]:
        return bootstrap.estimate(value, replicates, level=level)

    ap50_values = np.where(precision[t50] > -1, precision[t50], math.nan).mean(axis=0)
    ap_all = np.where(precision > -1, precision, math.nan).mean(axis=1).mean(axis=0)
    per_class: dict[str, object] = {}
    n_pred = dt.groupby("label").size().reindex(range(n_classes), fill_value=0).to_numpy()
    for k, c in enumerate(classes):
        per_class[c] = {
            "n_gt": int(n_gt_img[k].sum()),
            "n_images_with_gt": int((n_gt_img[k] > 0).sum()),
            "n_predictions": int(n_pred[k]),
            "ap50": est(ap50_values[k], column("ap50", k)),
            "ap50_95": bootstrap.estimate(ap_all[k]) if len(ious) > 1 else None,
            "voc_ap": est(point["voc"][0, k], column("voc", k)),
            "ap50_by_view": {v: float(point[f"ap50_{v}"][0, k]) for v in GAP_VIEWS},
        }
    froc_point = point["froc"][0]
    mean = {
        "map50": est(_nanmean_value(ap50_values[has_gt]), class_mean("ap50", has_gt)),
        "map50_95": bootstrap.estimate(_nanmean_value(ap_all[has_gt])) if len(ious) > 1 else None,
        "voc_map": est(_nanmean_value(point["voc"][0, has_gt]), class_mean("voc", has_gt)),
        "froc": {
            f"{rate:g}": est(froc_point[r], column("froc", r)) for r, rate in enumerate(froc_rates)
        },
        "froc_average": bootstrap.estimate(
            float(np.mean(froc_point)),
            None if reps is None else reps["froc"].mean(axis=1),
            level=level,
        ),
        "classes_included": [c for c, ok in zip(classes, has_gt, strict=True) if ok],
    }
    kaggle_section = {
        "map": est(point["kaggle"][0], None if reps is None else reps["kaggle"]),
        "no_finding_ap": est(point["nf"][0], None if reps is None else reps["nf"]),
        "n_no_finding_images": int((kaggle_ranked.n_gt > 0).sum()),
        "no_finding_predictions": kaggle_source,
        "classes": [*classes, NO_FINDING],
    }
    view_maps = {v: _nanmean_value(point[f"ap50_{v}"][0, compared]) for v in GAP_VIEWS}
    gap_reps = None
    view_reps: dict[str, np.ndarray | None] = {v: None for v in GAP_VIEWS}
    if reps is not None and compared.any():
        for v in GAP_VIEWS:
            view_reps[v] = _nanmean(reps[f"ap50_{v}"][:, compared])
        gap_reps = view_reps["AP"] - view_reps["PA"]
    view_section = {
        "counts": {v: int(np.sum(views == v)) for v in ("PA", "AP", "LL", "unknown")},
        "classes_compared": [c for c, ok in zip(classes, compared, strict=True) if ok],
        "map50": {
            v: bootstrap.estimate(view_maps[v], view_reps[v], level=level) for v in GAP_VIEWS
        },
        "gap": bootstrap.estimate(view_maps["AP"] - view_maps["PA"], gap_reps, level=level),
        "p_value": math.nan if gap_reps is None else bootstrap.p_value(gap_reps),
    }

    result_curves: dict[str, object] = {}
    if curves:
        result_curves["pr"] = {
            c: {
                "recall": COCO_RECALLS.round(3).tolist(),
                "precision": np.where(precision[t50, :, k] > -1, precision[t50, :, k], math.nan)
                .round(5)
                .tolist(),
            }
            for k, c in enumerate(classes)
            if has_gt[k]
        }
        tp, fp, n_gt = froc_ranked.cumulative(np.ones((1, n_images)), 0)
        if n_gt[0] > 0 and tp.shape[1]:
            fppi, sens = fp[0] / n_images, tp[0] / n_gt[0]
            if fppi.size > MAX_CURVE_POINTS:
                keep = np.unique(np.linspace(0, fppi.size - 1, MAX_CURVE_POINTS).astype(int))
                fppi, sens = fppi[keep], sens[keep]
            result_curves["froc"] = {
                "fppi": fppi.round(5).tolist(),
                "sensitivity": sens.round(5).tolist(),
            }
    kept: dict[str, list[float]] = {}
    if replicates and reps is not None:
        kept = {
            "map50": _nanmean(reps["ap50"][:, has_gt]).tolist(),
            "voc_map": _nanmean(reps["voc"][:, has_gt]).tolist(),
            "kaggle_map": reps["kaggle"].tolist(),
        }
        for v in GAP_VIEWS:
            kept[f"map50_{v}"] = (
                _nanmean(reps[f"ap50_{v}"][:, compared]).tolist()
                if compared.any()
                else [math.nan] * n_bootstrap
            )
    out = {
        "kind": "detection",
        "settings": {
            "iou_thresholds": ious,
            "voc_iou": voc_iou,
            "froc_iou": froc_iou,
            "froc_rates": list(froc_rates),
            "max_dets": max_dets,
            "gt_reader": gt_reader,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "level": level,
            "bootstrap_unit": bootstrap_unit,
            "kaggle_no_finding": kaggle_source,
        },
        "counts": {
            "n_images": n_images,
            "n_patients": len({r.patient_id for r in ordered}),
            "n_images_without_gt": int((n_gt_img.sum(axis=0) == 0).sum()),
            "n_images_without_predictions": int(n_images - dt["image"].nunique()),
            "n_gt_boxes": int(n_gt_img.sum()),
            "n_predictions": len(dt),
        },
        "classes": classes,
        "per_class": per_class,
        "mean": mean,
        "kaggle": kaggle_section,
        "views": view_section,
        "issues": issues.to_dict(),
        "curves": result_curves,
    }
    if replicates:
        out["replicates"] = kept
    return out


def _no_finding_ranked(
    rows: pd.DataFrame,
    dt: pd.DataFrame,
    *,
    image_index: dict[str, int],
    has_box: np.ndarray,
    voc_iou: float,
    allow_missing: bool,
) -> tuple[Ranked, str]:
    """The Kaggle metric's "No finding" class: its predictions ranked and matched.

    Args:
        rows: the predictions' ``No finding`` rows (any box; Kaggle's is 0 0 1 1); none: derived.
        dt: the other detections with integer ``image`` columns.
        image_index: image id -> index; rows of other images are left out.
        has_box: ``(n_images,)`` whether an image has a ground-truth box (else one "No finding"
            object at :data:`NO_FINDING_BOX`).

    Returns:
        The ranked matches and how the predictions came about (``predicted`` / ``derived``).
    """
    n_images = len(has_box)
    if len(rows):
        rows, _ = validate_predictions(
            rows, kind="detection", allow_missing=allow_missing, source="predictions"
        )
        rows = rows[rows["image_id"].isin(image_index)]
        image = rows["image_id"].map(image_index).to_numpy(dtype=int)
        score = rows["score"].to_numpy(dtype=np.float64)
        boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        source = "predicted"
    else:
        # one per image: "nothing found" is as likely as the best detection is unlikely
        best = np.zeros(n_images)
        np.maximum.at(best, dt["image"].to_numpy(dtype=int), dt["score"].to_numpy(np.float64))
        image, score = np.arange(n_images), 1.0 - best
        boxes = np.tile(np.asarray(NO_FINDING_BOX), (n_images, 1))
        source = "derived"
    truth = np.asarray([NO_FINDING_BOX])
    hit = np.zeros(len(image), dtype=bool)
    for i in np.unique(image):
        if not has_box[i]:
            rows_i = np.flatnonzero(image == i)
            hit[rows_i] = match_voc(
                boxes[rows_i], score[rows_i], truth, iou_thr=voc_iou, strict=True
            )
    order = np.argsort(image, kind="stable")  # image order, like the other classes
    n_gt = (~has_box).astype(np.float64)
    return _rank(image[order], score[order], hit[order][None, :], n_gt), source


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN (a class without boxes in a resample); all-NaN rows stay NaN."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def _nanmean_value(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan
