"""The VinBigData Kaggle leaderboard metric: VOC mAP@0.4 with "No finding" as a 15th class.

Checked against a golden hand-computed case with normal images and against an independent
implementation written here from the definition (PASCAL VOC devkit matching and all-point AP,
Kaggle's "14 1 0 0 1 1" object on every image without a box).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.data.records import Box
from cxrkit.errors import ConfigError
from cxrkit.eval import detection

COLUMNS = ["image_id", "finding", "score", "x1", "y1", "x2", "y2"]
NF = "No finding"


def box(finding, x1, y1, x2, y2) -> Box:
    return Box(finding=finding, x1=x1, y1=y1, x2=x2, y2=y2)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def hand_case(record):
    records = [
        record("i1", boxes=[box("A", 0, 0, 10, 10)]),
        record("i2", boxes=[box("B", 0, 0, 10, 10)]),
        record("i3"),  # normal
        record("i4"),  # normal
    ]
    detections = [
        ("i1", "A", 0.9, 0, 0, 10, 10),  # hit
        ("i3", "A", 0.8, 0, 0, 10, 10),  # false positive on a normal image
        ("i2", "B", 0.7, 20, 20, 30, 30),  # miss
        ("i2", "B", 0.6, 0, 0, 10, 10),  # hit
    ]
    return records, detections


def test_golden_value_with_no_finding_predictions(record):
    records, detections = hand_case(record)
    said = [
        ("i3", NF, 0.9, 0, 0, 1, 1),  # right: i3 is normal
        ("i1", NF, 0.5, 0, 0, 1, 1),  # wrong: i1 has a box
        ("i4", NF, 0.4, 0, 0, 1, 1),  # right
    ]
    result = detection.evaluate(frame(detections + said), records, classes=["A", "B"])
    # A: hit, miss -> AP 1. B: miss, hit -> P 0, 1/2 at R 0, 1 -> AP 1/2.
    # No finding (2 objects): hit, miss, hit -> P 1, 1/2, 2/3 at R 1/2, 1/2, 1 -> 1/2 + 1/2 * 2/3
    assert result["per_class"]["A"]["voc_ap"]["value"] == pytest.approx(1.0)
    assert result["per_class"]["B"]["voc_ap"]["value"] == pytest.approx(0.5)
    kaggle = result["kaggle"]
    assert kaggle["no_finding_ap"]["value"] == pytest.approx(5 / 6)
    assert kaggle["map"]["value"] == pytest.approx((1 + 0.5 + 5 / 6) / 3)
    assert result["mean"]["voc_map"]["value"] == pytest.approx(0.75)  # the 14-class figure
    assert kaggle["no_finding_predictions"] == "predicted"
    assert kaggle["n_no_finding_images"] == 2
    assert kaggle["classes"] == ["A", "B", NF]


def test_golden_value_derived_from_the_detections(record):
    records, detections = hand_case(record)
    result = detection.evaluate(frame(detections), records, classes=["A", "B"])
    # 1 - best score: i4 1.0 (right), i2 0.3, i3 0.2 (right), i1 0.1 -> P 1, 1/2, 2/3, 1/2
    kaggle = result["kaggle"]
    assert kaggle["no_finding_predictions"] == "derived"
    assert kaggle["no_finding_ap"]["value"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a detector that fires on the normal image i3 only at 0.3 instead of 0.8: i3's derived
    # "No finding" (0.7) now outranks i2's (0.3), and the class AP reaches 1
    better = [d if d[0] != "i3" else ("i3", "A", 0.3, 0, 0, 10, 10) for d in detections]
    result = detection.evaluate(frame(better), records, classes=["A", "B"])
    assert result["kaggle"]["no_finding_ap"]["value"] == pytest.approx(1.0)


def reference_voc_ap(dets, gts, iou_thr=0.4):
    """VOC devkit, from the definition: dets [(image, score, box)], gts {image: [box]}."""
    n_gt = sum(len(v) for v in gts.values())
    if n_gt == 0:
        return float("nan")
    taken = {k: [False] * len(v) for k, v in gts.items()}
    tp, fp = [], []
    for image, _, b in sorted(dets, key=lambda d: -d[1]):
        best, best_j = 0.0, -1
        for j, g in enumerate(gts.get(image, [])):
            iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
            ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
            inter = iw * ih
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            iou = inter / union if union > 0 else 0.0
            if iou > best:
                best, best_j = iou, j
        hit = best > iou_thr and not taken[image][best_j]
        if hit:
            taken[image][best_j] = True
        tp.append(1.0 if hit else 0.0)
        fp.append(0.0 if hit else 1.0)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = np.concatenate([[0.0], tp / n_gt, [1.0]])
    prec = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * prec[steps]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_an_independent_implementation(record, seed):
    rng = np.random.default_rng(seed)
    classes = ["A", "B", "C"]
    records, truth = [], {c: {} for c in [*classes, NF]}
    for i in range(14):
        boxes = []
        for _ in range(int(rng.integers(0, 3))):  # about a third of the images are normal
            x, y = rng.uniform(0, 60, size=2)
            w, h = rng.uniform(10, 40, size=2)
            boxes.append(box(str(rng.choice(classes)), x, y, x + w, y + h))
        records.append(record(f"i{i}", boxes=boxes))
        for b in boxes:
            truth[b.finding].setdefault(f"i{i}", []).append(b.xyxy)
        if not boxes:
            truth[NF][f"i{i}"] = [(0.0, 0.0, 1.0, 1.0)]
    rows = []
    for r in records:
        for b in r.boxes:  # jittered copies: some above IoU 0.4, some below
            x1, y1, x2, y2 = np.array(b.xyxy) + rng.normal(0, 6, size=4)
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            rows.append((r.image_id, b.finding, rng.uniform(), x1, y1, x2, y2))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, 60, size=2)
            rows.append((r.image_id, str(rng.choice(classes)), rng.uniform(), x, y, x + 20, y + 20))
        if rng.uniform() < 0.7:
            rows.append((r.image_id, NF, rng.uniform(), 0.0, 0.0, 1.0, 1.0))
    preds = frame(rows)
    result = detection.evaluate(preds, records, classes=classes, iou_thresholds=(0.5,))
    aps = []
    for c in [*classes, NF]:
        dets = [(p.image_id, p.score, (p.x1, p.y1, p.x2, p.y2)) for p in preds.itertuples()]
        dets = [d for d, p in zip(dets, preds.itertuples(), strict=True) if p.finding == c]
        aps.append(reference_voc_ap(dets, truth[c]))
    expected = float(np.nanmean(aps))
    assert result["kaggle"]["map"]["value"] == pytest.approx(expected, abs=1e-12)
    assert result["mean"]["voc_map"]["value"] == pytest.approx(np.nanmean(aps[:3]), abs=1e-12)


def test_the_bootstrap_gives_the_kaggle_metric_an_interval(record):
    records, detections = hand_case(record)
    result = detection.evaluate(frame(detections), records, classes=["A", "B"], n_bootstrap=50)
    low, high = result["kaggle"]["map"]["ci"]
    assert low <= result["kaggle"]["map"]["value"] <= high


def test_no_finding_is_not_a_detector_class(record):
    records, detections = hand_case(record)
    with pytest.raises(ConfigError, match="Kaggle metric's own class"):
        detection.evaluate(frame(detections), records, classes=["A", NF])
