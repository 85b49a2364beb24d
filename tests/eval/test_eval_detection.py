"""Detection metrics: hand-computed cases, pycocotools run directly, reader fusion, real boxes."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cxrkit.data.fusion import fuse_boxes
from cxrkit.data.records import Box
from cxrkit.errors import ConfigError, DataError
from cxrkit.eval import detection
from cxrkit.eval.ground_truth import ground_truth_boxes

COLUMNS = ["image_id", "finding", "score", "x1", "y1", "x2", "y2"]


def boxes_df(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def box(finding, x1, y1, x2, y2, reader=""):
    return Box(finding=finding, x1=x1, y1=y1, x2=x2, y2=y2, reader=reader)


def two_box_case(record):
    records = [
        record("i1", boxes=[box("A", 0, 0, 10, 10)]),
        record("i2", boxes=[box("A", 0, 0, 10, 10)]),
        record("i3"),  # no finding, no detection
    ]
    preds = boxes_df(
        [
            ("i1", "A", 0.9, 0, 0, 10, 10),  # hit
            ("i2", "A", 0.8, 50, 50, 60, 60),  # false positive
            ("i2", "A", 0.7, 0, 0, 10, 10),  # hit
        ]
    )
    return records, preds


def test_two_box_golden_values(record):
    # ranked: hit (P 1, R .5), miss (P .5, R .5), hit (P 2/3, R 1); precision envelope 1, 2/3, 2/3
    records, preds = two_box_case(record)
    result = detection.evaluate(preds, records)
    a = result["per_class"]["A"]
    # COCO: recall thresholds 0.00-0.50 (51 of 101) at precision 1, 0.51-1.00 (50) at 2/3
    assert a["ap50"]["value"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # VOC all-point: 0.5 * 1 + 0.5 * 2/3
    assert a["voc_ap"]["value"] == pytest.approx(5 / 6)
    assert result["mean"]["map50"]["value"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert result["counts"]["n_images_without_gt"] == 1
    assert result["counts"]["n_images_without_predictions"] == 1


def test_false_positive_on_a_normal_image_counts(record):
    records, preds = two_box_case(record)
    worse = pd.concat([preds, boxes_df([("i3", "A", 0.95, 1, 1, 5, 5)])])
    base = detection.evaluate(preds, records, iou_thresholds=(0.5,))
    result = detection.evaluate(worse, records, iou_thresholds=(0.5,))
    assert result["per_class"]["A"]["ap50"]["value"] < base["per_class"]["A"]["ap50"]["value"]
    # ranked: miss, hit, miss, hit -> precision 0, 1/2, 1/3, 1/2; envelope 1/2 everywhere
    assert result["per_class"]["A"]["voc_ap"]["value"] == pytest.approx(0.5)


def test_class_without_ground_truth_is_nan_and_left_out(record):
    records, preds = two_box_case(record)
    records[2].labels = {"B": 0}  # B is a known class with no box anywhere
    preds = pd.concat([preds, boxes_df([("i3", "B", 0.5, 1, 1, 5, 5)])])
    result = detection.evaluate(preds, records, iou_thresholds=(0.5,))
    assert result["classes"] == ["A", "B"]
    assert math.isnan(result["per_class"]["B"]["ap50"]["value"])
    assert math.isnan(result["per_class"]["B"]["voc_ap"]["value"])
    assert result["mean"]["classes_included"] == ["A"]
    assert result["mean"]["map50"]["value"] == result["per_class"]["A"]["ap50"]["value"]


def test_no_predictions_at_all(record):
    records, _ = two_box_case(record)
    result = detection.evaluate(boxes_df([]), records)
    assert result["per_class"]["A"]["ap50"]["value"] == 0.0
    assert result["mean"]["voc_map"]["value"] == 0.0
    assert result["mean"]["froc"]["2"]["value"] == 0.0


def test_unknown_class_and_id_are_errors(record):
    records, preds = two_box_case(record)
    with pytest.raises(DataError, match="predicted classes are unknown.*'Zebra'"):
        detection.evaluate(
            pd.concat([preds, boxes_df([("i1", "Zebra", 0.5, 1, 1, 5, 5)])]), records
        )
    with pytest.raises(DataError, match="not in the manifest.*'i9'"):
        detection.evaluate(pd.concat([preds, boxes_df([("i9", "A", 0.5, 1, 1, 5, 5)])]), records)


def test_voc_uses_strictly_greater_iou_and_froc_greater_or_equal(record):
    # the detection covers 40 % of the box: IoU exactly 0.4
    records = [record("i1", boxes=[box("A", 0, 0, 10, 10)])]
    preds = boxes_df([("i1", "A", 0.9, 0, 0, 4, 10)])
    result = detection.evaluate(preds, records, voc_iou=0.4, froc_iou=0.4)
    assert result["per_class"]["A"]["voc_ap"]["value"] == 0.0  # VinBigData: IoU > 0.4
    assert result["mean"]["froc"]["0.05"]["value"] == 1.0  # FROC: IoU >= 0.4


def test_voc_duplicate_detection_is_a_false_positive():
    det = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=float)
    gt = np.array([[0, 0, 10, 10], [20, 20, 31, 31]], dtype=float)
    hits = detection.match_voc(det, np.array([0.9, 0.8, 0.7]), gt, iou_thr=0.5, strict=True)
    assert hits.tolist() == [True, False, True]


def test_froc_hand_computed(record):
    records = [
        record("i1", boxes=[box("A", 0, 0, 10, 10), box("A", 50, 50, 60, 60)]),
        record("i2", boxes=[box("B", 0, 0, 10, 10)]),
        record("i3"),
    ]
    preds = boxes_df(
        [
            ("i1", "A", 0.9, 0, 0, 10, 10),  # hit 1/3, fppi 0
            ("i3", "A", 0.8, 0, 0, 10, 10),  # fp -> fppi 1/3
            ("i2", "B", 0.7, 0, 0, 10, 10),  # hit 2/3
            ("i2", "A", 0.6, 0, 0, 10, 10),  # fp (wrong class) -> fppi 2/3
            ("i1", "A", 0.5, 50, 50, 60, 60),  # hit 3/3
        ]
    )
    result = detection.evaluate(preds, records, iou_thresholds=(0.5,))
    froc = {k: v["value"] for k, v in result["mean"]["froc"].items()}
    assert froc == pytest.approx(
        {"0.05": 1 / 3, "0.1": 1 / 3, "0.2": 1 / 3, "0.5": 2 / 3, "1": 1.0, "2": 1.0}
    )
    assert result["mean"]["froc_average"]["value"] == pytest.approx(11 / 18)


def random_case(record, seed: int, n_images: int = 40):
    rng = np.random.default_rng(seed)
    records, rows = [], []
    for i in range(n_images):
        gts = []
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(5, 35, 2)
            gts.append(box(str(rng.choice(["A", "B"])), x, y, x + w, y + h))
            if rng.random() < 0.8:  # a noisy hit
                j = rng.normal(0, 3, 4)
                rows.append(
                    (
                        f"i{i:02d}",
                        gts[-1].finding,
                        rng.random(),
                        x + j[0],
                        y + j[1],
                        x + w + abs(j[2]) + 0.5,
                        y + h + abs(j[3]) + 0.5,
                    )
                )
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 70, 2)
            rows.append(
                (f"i{i:02d}", str(rng.choice(["A", "B"])), rng.random(), x, y, x + 20, y + 25)
            )
        records.append(
            record(f"i{i:02d}", boxes=gts, view="AP" if i % 2 else "PA", patient=f"p{i // 2}")
        )
    return records, boxes_df(rows)


def pycocotools_reference(records, preds, image_ids=None):
    """COCOeval run the textbook way (loadRes, default params, summarize): AP, AP50, per class."""
    keep = [r for r in records if image_ids is None or r.image_id in image_ids]
    ids = {r.image_id: n + 1 for n, r in enumerate(keep)}
    cats = {"A": 1, "B": 2}
    anns = []
    for r in keep:
        for b in r.boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": ids[r.image_id],
                    "category_id": cats[b.finding],
                    "iscrowd": 0,
                    "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                    "area": (b.x2 - b.x1) * (b.y2 - b.y1),
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": v} for v in ids.values()],
        "categories": [{"id": v, "name": k} for k, v in cats.items()],
        "annotations": anns,
    }
    sub = preds[preds["image_id"].isin(ids)]
    dets = [
        {
            "image_id": ids[p.image_id],
            "category_id": cats[p.finding],
            "score": p.score,
            "bbox": [p.x1, p.y1, p.x2 - p.x1, p.y2 - p.y1],
        }
        for p in sub.itertuples()
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, area all, 100 detections
    per_class = [precision[:, k][precision[:, k] > -1].mean() for k in range(2)]
    return ev.stats[0], ev.stats[1], per_class


@pytest.mark.parametrize("seed", range(3))
def test_against_pycocotools_directly(record, seed):
    records, preds = random_case(record, seed)
    ap, ap50, per_class = pycocotools_reference(records, preds)
    result = detection.evaluate(preds, records)
    assert result["mean"]["map50"]["value"] == pytest.approx(ap50, abs=1e-12)
    assert result["mean"]["map50_95"]["value"] == pytest.approx(ap, abs=1e-12)
    assert result["per_class"]["A"]["ap50"]["value"] == pytest.approx(per_class[0], abs=1e-12)
    # mAP@0.5 by view is pycocotools on that view's images alone
    for view, parity in (("AP", 1), ("PA", 0)):
        ids = {r.image_id for n, r in enumerate(records) if n % 2 == parity}
        _, view_ap50, _ = pycocotools_reference(records, preds, ids)
        assert result["views"]["map50"][view]["value"] == pytest.approx(view_ap50, abs=1e-12)


def test_weighted_accumulation_equals_pycocotools(record):
    records, preds = random_case(record, 11)
    result = detection.evaluate(preds, records)
    sizes = [(r.width, r.height) for r in records]
    cls = {"A": 0, "B": 1}
    gt = {i: [(cls[b.finding], b.xyxy) for b in r.boxes] for i, r in enumerate(records)}
    index = {r.image_id: i for i, r in enumerate(records)}
    dt = preds.assign(image=preds["image_id"].map(index), label=preds["finding"].map(cls))
    ev = detection.run_cocoeval(
        gt=gt, dt=dt, sizes=sizes, n_classes=2, iou_thresholds=detection.COCO_IOUS, max_dets=100
    )
    ranked = detection.coco_ranked(ev, len(records))
    ones = np.ones((1, len(records)))
    for t in range(10):
        for k in range(2):
            ap = detection.coco_ap(*ranked[k].cumulative(ones, t))[0]
            assert ap == pytest.approx(ev.eval["precision"][t, :, k, 0, 0].mean(), abs=1e-12)
    # doubling every image's weight changes nothing (AP is a ratio)
    assert detection.coco_ap(*ranked[0].cumulative(2 * ones, 0))[0] == pytest.approx(
        result["per_class"]["A"]["ap50"]["value"]
    )


def test_bootstrap_intervals(record):
    records, preds = random_case(record, 5)
    result = detection.evaluate(preds, records, n_bootstrap=100, seed=0, iou_thresholds=(0.5,))
    for est in (result["mean"]["map50"], result["mean"]["voc_map"], result["views"]["gap"]):
        lo, hi = est["ci"]
        assert lo <= est["value"] <= hi and lo < hi
    assert 0 <= result["views"]["p_value"] <= 1


# ------------------------------------------------------------------------------------------------
# ground truth from several readers


def test_fuse_reader_boxes_averages_overlapping_readers():
    boxes = [
        box("Nodule", 10, 10, 50, 50, "R1"),
        box("Nodule", 14, 14, 54, 54, "R2"),
        box("Mass", 12, 12, 52, 52, "R3"),  # another finding: never merged with the nodules
        box("Nodule", 70, 70, 90, 90, "R2"),  # far away: kept alone
    ]
    fused = fuse_boxes(boxes, width=100, height=100, iou_thr=0.5, method="wbf")
    nodules = sorted(b.xyxy for b in fused if b.finding == "Nodule")
    assert nodules == [pytest.approx((12, 12, 52, 52)), pytest.approx((70, 70, 90, 90))]
    assert [b.xyxy for b in fused if b.finding == "Mass"] == [pytest.approx((12, 12, 52, 52))]
    assert {b.reader for b in fused} == {"fused"}
    kept = fuse_boxes(boxes, width=100, height=100, method="nms")
    assert len([b for b in kept if b.finding == "Nodule"]) == 2
    assert fuse_boxes(boxes, width=100, height=100, method="none") == boxes
    assert fuse_boxes([], width=100, height=100) == []


def test_ground_truth_reader_selection(record):
    readers = [box("A", 10, 10, 50, 50, "R1"), box("A", 12, 12, 50, 50, "R2")]
    records = [record("i1", boxes=readers), record("i2")]
    preds = boxes_df([("i1", "A", 0.9, 11, 11, 50, 50)])
    everyone = detection.evaluate(preds, records, iou_thresholds=(0.5,), gt_reader="all")
    fused = detection.evaluate(preds, records, iou_thresholds=(0.5,), gt_reader="fused")
    # the default, auto, is the readers' consensus here (two readers on one image), and the
    # settings name what was used
    default = detection.evaluate(preds, records, iou_thresholds=(0.5,))
    assert default["settings"]["gt_reader"] == "fused"
    assert default["counts"]["n_gt_boxes"] == 1
    one = detection.evaluate(preds, records, iou_thresholds=(0.5,), gt_reader="R2")
    # two readers' copies of one lesion: one detection finds half of "all", all of "fused"
    assert everyone["counts"]["n_gt_boxes"] == 2 and fused["counts"]["n_gt_boxes"] == 1
    assert everyone["per_class"]["A"]["voc_ap"]["value"] == pytest.approx(0.5)
    assert fused["per_class"]["A"]["voc_ap"]["value"] == pytest.approx(1.0)
    assert one["counts"]["n_gt_boxes"] == 1
    assert set(ground_truth_boxes(records, gt_reader="R1")) == {"i1", "i2"}
    with pytest.raises(DataError, match="reader 'R9' has no box.*'R1', 'R2'"):
        ground_truth_boxes(records, gt_reader="R9")


# ------------------------------------------------------------------------------------------------
# real annotations


def test_chestx_det_ground_truth_as_predictions_scores_one(shared_data, record):
    data = json.loads((shared_data / "chestx-det" / "ChestX_Det_test.json").read_text())[:150]
    records, rows = [], []
    for entry in data:
        image_id = entry["file_name"]
        boxes = [
            box(name, *xyxy)
            for name, xyxy in zip(entry["syms"], entry["boxes"], strict=True)
            if xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]
        ]
        records.append(record(image_id, boxes=boxes, width=1024, height=1024, view="unknown"))
        rows += [(image_id, b.finding, 1.0, *b.xyxy) for b in boxes]
    assert any(not r.boxes for r in records)  # normal images take part
    result = detection.evaluate(boxes_df(rows), records, iou_thresholds=(0.5, 0.75))
    assert result["mean"]["map50"]["value"] == pytest.approx(1.0)
    assert result["mean"]["voc_map"]["value"] == pytest.approx(1.0)
    assert result["mean"]["froc"]["0.05"]["value"] == pytest.approx(1.0)
    assert result["views"]["counts"]["unknown"] == len(records)
    # shifted boxes: compare with pycocotools run directly on the same real boxes
    shifted = boxes_df(rows).assign(x1=lambda d: d.x1 + 8, x2=lambda d: d.x2 + 8)
    shifted["score"] = np.linspace(1, 0.1, len(shifted))
    cats = sorted({b.finding for r in records for b in r.boxes})
    ids = {r.image_id: n + 1 for n, r in enumerate(records)}
    anns = [
        {
            "id": k + 1,
            "image_id": ids[r.image_id],
            "category_id": cats.index(b.finding) + 1,
            "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
            "area": (b.x2 - b.x1) * (b.y2 - b.y1),
            "iscrowd": 0,
        }
        for k, (r, b) in enumerate((r, b) for r in records for b in r.boxes)
    ]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": v} for v in ids.values()],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(cats)],
        "annotations": anns,
    }
    dets = [
        {
            "image_id": ids[p.image_id],
            "category_id": cats.index(p.finding) + 1,
            "score": p.score,
            "bbox": [p.x1, p.y1, p.x2 - p.x1, p.y2 - p.y1],
        }
        for p in shifted.itertuples()
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = np.array([0.5, 0.75])
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][0, :, :, 0, 2]
    reference = np.mean([p[:, k][p[:, k] > -1].mean() for k in range(p.shape[1])])
    result = detection.evaluate(shifted, records, iou_thresholds=(0.5, 0.75))
    assert result["mean"]["map50"]["value"] == pytest.approx(reference, abs=1e-12)


def test_image_bootstrap_replicates_are_paired_between_models(record):
    records = [
        record(f"i{k}", patient=f"p{k // 2}", boxes=[box("A", 0, 0, 10, 10)] if k % 3 else [])
        for k in range(8)
    ]
    good = boxes_df([(f"i{k}", "A", 0.9, 0, 0, 10, 10) for k in range(8) if k % 3])
    worse = pd.concat([good, boxes_df([("i0", "A", 0.95, 0, 0, 10, 10)])])  # a false positive

    def reps(preds, unit):
        result = detection.evaluate(
            preds, records, iou_thresholds=(0.5,), n_bootstrap=40, seed=3,
            bootstrap_unit=unit, replicates=True,
        )  # fmt: skip
        assert result["settings"]["bootstrap_unit"] == unit
        return {k: np.asarray(v) for k, v in result["replicates"].items()}

    a, b = reps(good, "image"), reps(worse, "image")
    assert len(a["map50"]) == 40 and np.allclose(a["map50"], 1.0)  # every resample: all hits
    # paired: on each resample the false positive can only lower the worse model's AP
    assert np.all(b["map50"] <= a["map50"] + 1e-12) and np.any(b["map50"] < a["map50"])
    by_patient = reps(worse, "patient")["map50"]
    assert not np.array_equal(by_patient, b["map50"])  # patients (pairs of images) drawn instead
    with pytest.raises(ConfigError, match="bootstrap_unit"):
        detection.evaluate(good, records, bootstrap_unit="reader")
