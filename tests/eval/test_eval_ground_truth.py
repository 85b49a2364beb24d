"""Which boxes are the ground truth: ``auto`` is the readers' consensus when there are readers."""

from __future__ import annotations

from cxrkit.data.records import Box, Record
from cxrkit.eval.ground_truth import ground_truth_boxes, resolve_gt_reader


def _record(image_id, boxes):
    return Record(
        image_id=image_id,
        source="s",
        path=f"{image_id}.png",
        patient_id=image_id,
        width=100,
        height=100,
        boxes=boxes,
    )


def _box(reader, x=10.0):
    return Box(finding="Nodule/Mass", x1=x, y1=10.0, x2=x + 20, y2=30.0, reader=reader)


def test_auto_fuses_when_an_image_has_several_readers():
    three = [_record("a", [_box("R1"), _box("R2", 11.0), _box("R3", 12.0)]), _record("b", [])]
    assert resolve_gt_reader(three) == "fused"
    fused = ground_truth_boxes(three, gt_reader="auto")
    assert len(fused["a"]) == 1 and fused["b"] == []  # three copies of one lesion -> one box
    assert len(ground_truth_boxes(three, gt_reader="all")["a"]) == 3


def test_auto_keeps_a_single_readers_boxes_as_given():
    one = [_record("a", [_box("R1"), _box("R1", 60.0)]), _record("b", [_box("")])]
    assert resolve_gt_reader(one) == "all"
    assert ground_truth_boxes(one, gt_reader="auto") == ground_truth_boxes(one, gt_reader="all")
    assert resolve_gt_reader(one, "R1") == "R1"  # an explicit choice is kept
