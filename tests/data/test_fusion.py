"""Reader-box fusion against hand-computed golden boxes, and the detector's class table."""

from __future__ import annotations

import pytest

from cxrkit.data.fusion import FUSED_READER, fuse_boxes, fuse_records
from cxrkit.data.records import Box, Record
from cxrkit.data.vocab import VINDR, VINDR_KAGGLE_IDS
from cxrkit.errors import ConfigError, DataError
from cxrkit.finetune.config import VINDR_CLASSES, FinetuneConfig
from cxrkit.finetune.data import detection_records, map_classes


def nodule(x1: float, y1: float, x2: float, y2: float, reader: str) -> Box:
    return Box(finding="Nodule/Mass", x1=x1, y1=y1, x2=x2, y2=y2, reader=reader)


# Three readers box one nodule slightly differently; R8 also boxes the heart, R9 a second nodule.
THREE_READERS = [
    nodule(10, 10, 50, 50, "R8"),
    nodule(14, 12, 54, 48, "R9"),
    nodule(12, 8, 52, 52, "R10"),
    Box(finding="Cardiomegaly", x1=100, y1=200, x2=400, y2=300, reader="R8"),
    nodule(300, 300, 340, 344, "R9"),
]


def xyxy(boxes: list[Box]) -> list[tuple[str, tuple[float, ...]]]:
    return [(b.finding, tuple(round(v, 3) for v in b.xyxy)) for b in boxes]


def test_wbf_of_three_readers_matches_hand_computed_average() -> None:
    fused = fuse_boxes(THREE_READERS, width=512, height=400, method="wbf", iou_thr=0.5)
    # every box has confidence 1 and weight 1: a fused box is the plain mean of its cluster,
    # (10+14+12)/3 = 12, (10+12+8)/3 = 10, (50+54+52)/3 = 52, (50+48+52)/3 = 50; singletons stay
    assert xyxy(fused) == [
        ("Cardiomegaly", (100.0, 200.0, 400.0, 300.0)),
        ("Nodule/Mass", (12.0, 10.0, 52.0, 50.0)),
        ("Nodule/Mass", (300.0, 300.0, 340.0, 344.0)),
    ]
    assert {b.reader for b in fused} == {FUSED_READER}


def test_wbf_threshold_decides_whether_two_boxes_are_one_lesion() -> None:
    # IoU of these two is 50 / 150 = 1/3
    pair = [nodule(0, 0, 10, 10, "R8"), nodule(5, 0, 15, 10, "R9")]
    assert len(fuse_boxes(pair, width=20, height=20, iou_thr=0.5)) == 2
    assert xyxy(fuse_boxes(pair, width=20, height=20, iou_thr=0.3)) == [
        ("Nodule/Mass", (2.5, 0.0, 12.5, 10.0))
    ]


def test_boxes_of_different_findings_never_merge() -> None:
    same_place = [nodule(10, 10, 50, 50, "R8"), Box(finding="ILD", x1=10, y1=10, x2=50, y2=50)]
    assert sorted(b.finding for b in fuse_boxes(same_place, width=64, height=64)) == [
        "ILD",
        "Nodule/Mass",
    ]


def test_nms_keeps_one_reader_box_per_lesion_and_none_keeps_all() -> None:
    kept = fuse_boxes(THREE_READERS, width=512, height=400, method="nms", iou_thr=0.5)
    nodules = [b for b in kept if b.finding == "Nodule/Mass"]
    assert len(kept) == 3 and len(nodules) == 2
    readers_boxes = {b.xyxy for b in THREE_READERS}
    assert all(b.xyxy in readers_boxes for b in kept)  # NMS picks, never averages
    assert fuse_boxes(THREE_READERS, width=512, height=400, method="none") == THREE_READERS
    with pytest.raises(ConfigError, match="fusion method"):
        fuse_boxes(THREE_READERS, width=512, height=400, method="mean")


def test_fused_boxes_stay_inside_the_image_and_records_are_copies() -> None:
    record = Record(
        image_id="a",
        source="vindr",
        path="a.dicom",
        patient_id="p",
        width=3000,
        height=2500,
        boxes=[nodule(2900, 2400, 3000, 2500, r) for r in ("R8", "R9", "R10")],
    )
    (fused,) = fuse_records([record], method="wbf")
    assert len(fused.boxes) == 1
    box = fused.boxes[0]
    assert 0 <= box.x1 < box.x2 <= 3000 and 0 <= box.y1 < box.y2 <= 2500
    assert box.x2 == pytest.approx(3000, abs=1e-3)
    assert len(record.boxes) == 3  # the input record is untouched


def test_vindr_class_table_keeps_kaggle_order_and_spelling() -> None:
    assert len(VINDR_CLASSES) == 14
    assert tuple(VINDR_KAGGLE_IDS[i] for i in range(14)) == VINDR_CLASSES
    assert VINDR_CLASSES[8] == "Nodule/Mass"  # Kaggle class id 8, spelled with the slash
    assert all(name in VINDR for name in VINDR_CLASSES)  # every class is a VinDr local label
    assert FinetuneConfig().classes == list(VINDR_CLASSES)


def vindr_record(boxes: list[Box], image_id: str = "x") -> Record:
    return Record(
        image_id=image_id,
        source="vindr",
        path="x",
        patient_id="p",
        width=100,
        height=100,
        boxes=boxes,
    )


def test_a_class_outside_the_table_is_an_error_not_dropped() -> None:
    edema = Box(finding="Edema", x1=1, y1=1, x2=20, y2=20, reader="R8")
    with pytest.raises(DataError, match="'x'.*'Edema'"):
        map_classes([vindr_record([edema])], classes=VINDR_CLASSES, class_map={}, ignore=[])
    (mapped,) = map_classes(
        [vindr_record([edema])],
        classes=VINDR_CLASSES,
        class_map={"Edema": "Other lesion"},
        ignore=[],
    )
    assert [b.finding for b in mapped.boxes] == ["Other lesion"]
    (ignored,) = map_classes(
        [vindr_record([edema])], classes=VINDR_CLASSES, class_map={}, ignore=["Edema"]
    )
    assert ignored.boxes == []


def test_negatives_fraction_samples_no_finding_images_for_training_only() -> None:
    positives = [vindr_record([nodule(1, 1, 9, 9, "R8")], f"pos{i}") for i in range(3)]
    negatives = [vindr_record([], f"neg{i}") for i in range(10)]
    config = FinetuneConfig(negatives_fraction=0.3)
    train = detection_records(positives + negatives, config=config, train=True, seed=1)
    assert sum(not r.boxes for r in train) == 3 and sum(bool(r.boxes) for r in train) == 3
    val = detection_records(positives + negatives, config=config, train=False)
    assert len(val) == 13
    assert all(b.reader == FUSED_READER for r in train for b in r.boxes)
