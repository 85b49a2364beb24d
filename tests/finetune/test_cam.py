"""CAMs per predicted box (pytorch-grad-cam) on a small detector."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.data.cache import Cache
from cxrkit.data.records import Box, Record
from cxrkit.errors import ConfigError
from cxrkit.finetune.cam import (
    GT_COLOUR,
    INDEX_COLUMNS,
    LEGEND,
    Candidate,
    box_cams,
    cover_classes,
    draw_overlay,
    explain,
    resolve_layer,
    select_boxes,
)
from cxrkit.finetune.model import build_detector

from .toy_vindr import ToyData


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(
        num_classes=2,
        image_size=64,
        anchor_sizes=(8, 16, 32, 64, 128),
        trainable_layers=0,
        frozen_bn=True,
        rpn_proposals_test=20,
        score_thresh=0.0,
    ).eval()


def test_gradcam_and_eigencam_give_one_normalised_map_per_box(detector: torch.nn.Module) -> None:
    image = torch.rand(1, 64, 64)
    with torch.no_grad():
        found = detector([image])[0]
    boxes, labels = found["boxes"][:2], found["labels"][:2]
    assert len(boxes) == 2
    flags = [p.requires_grad for p in detector.parameters()]
    # every ResNet stage frozen: layer3's output needs no gradient, yet Grad-CAM needs one there
    assert not any(p.requires_grad for p in detector.backbone.body.parameters())
    for method in ("gradcam", "eigencam"):
        maps = box_cams(detector, image, boxes=boxes, labels=labels, method=method)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert [p.requires_grad for p in detector.parameters()] == flags  # restored


def test_bad_layer_or_method_is_a_clear_error(detector: torch.nn.Module) -> None:
    assert resolve_layer(detector, "backbone.body.layer3") is detector.backbone.body.layer3
    with pytest.raises(ConfigError, match="backbone.body.layer9"):
        resolve_layer(detector, "backbone.body.layer9")
    with pytest.raises(ConfigError, match="method"):
        box_cams(
            detector,
            torch.rand(1, 64, 64),
            boxes=torch.zeros((0, 4)),
            labels=torch.zeros(0, dtype=torch.int64),
            method="scorecam",
        )


def test_overlay_draws_the_box_over_the_heat_map() -> None:
    image = np.full((64, 64), 100, np.uint8)
    cam = np.zeros((64, 64), np.float32)
    cam[20:40, 20:40] = 1.0
    out = draw_overlay(image, cam, box=(10, 10, 50, 50), caption="Nodule/Mass 0.90", min_side=64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[30, 10] == 255).all()  # the white box edge
    hot, cold = out[30, 30].astype(int), out[5, 60].astype(int)
    assert hot[2] > cold[2]  # JET red (BGR channel 2) where the map is high
    # a small cache image is enlarged by a whole factor for legibility, the box with it
    big = draw_overlay(image, cam, box=(10, 10, 50, 50), caption="x", min_side=200)
    assert big.shape == (256, 256, 3) and (big[120, 40] == 255).all()


def test_overlay_draws_ground_truth_in_another_colour_with_a_legend() -> None:
    image = np.full((64, 64), 100, np.uint8)
    cam = np.zeros((64, 64), np.float32)
    out = draw_overlay(
        image,
        cam,
        box=(10, 10, 30, 30),
        caption="Nodule/Mass 0.90",
        gt_boxes=[((40, 40, 60, 60), "Nodule/Mass")],
        legend=LEGEND,
        min_side=64,
    )
    assert tuple(out[50, 40]) == GT_COLOUR  # the GT box's left edge, magenta
    assert (out[20, 10] == 255).all()  # the predicted box, white
    plain = draw_overlay(image, cam, box=(10, 10, 30, 30), caption="x", min_side=64)
    assert (out[60:, :30] != plain[60:, :30]).any()  # the legend along the bottom


def _candidate(image: str, rank: int, label: int, score: float) -> Candidate:
    return Candidate(image, rank, label, score, (0.0, 0.0, 1.0, 1.0))


def test_select_boxes_covers_every_class_first_then_fills_by_score() -> None:
    found = [
        _candidate("a", 0, 1, 0.9),
        _candidate("a", 1, 1, 0.8),
        _candidate("b", 0, 1, 0.7),
        _candidate("c", 0, 2, 0.3),
        _candidate("c", 1, 3, 0.2),
        _candidate("d", 0, 1, 0.6),
    ]
    picked = select_boxes(found, max_cams=4, per_image=3)
    # each class's best box (classes by their best score), then the best of the rest
    assert [(c.image_id, c.rank) for c in picked] == [("a", 0), ("c", 0), ("c", 1), ("a", 1)]
    # two images at most, one box per image: class 1 from a, class 2 from c, class 3 blocked
    two = select_boxes(found, max_images=2, per_image=1)
    assert [(c.image_id, c.label) for c in two] == [("a", 1), ("c", 2)]
    assert len(select_boxes(found)) == len(found)  # no limit: every candidate
    assert select_boxes([], max_cams=3) == []


def _record(image_id: str, findings: list[str]) -> Record:
    boxes = [Box(finding=f, x1=0, y1=0, x2=4, y2=4, reader="R1") for f in findings]
    return Record(
        image_id=image_id,
        source="toy",
        path="",
        patient_id=image_id,
        width=8,
        height=8,
        boxes=boxes,
    )


def test_cover_classes_takes_an_image_per_class_then_the_rest_in_order() -> None:
    records = [
        _record("r0", ["A"]),
        _record("r1", ["A"]),
        _record("r2", []),
        _record("r3", ["B", "A"]),
        _record("r4", ["C"]),
        _record("r5", ["A"]),
    ]
    assert [r.image_id for r in cover_classes(records, n=3)] == ["r0", "r3", "r4"]
    assert [r.image_id for r in cover_classes(records, n=4)] == ["r0", "r1", "r3", "r4"]
    assert [r.image_id for r in cover_classes(records, n=9)] == ["r0", "r1", "r3", "r4", "r5"]


def test_explain_writes_scored_overlays_with_ground_truth(
    toy: ToyData, detector: torch.nn.Module, tmp_path
) -> None:
    cache = Cache(toy.cache)
    records = [r for r in toy.records if r.boxes][:3]
    index = explain(
        detector,
        records=records,
        cache=cache,
        classes=["Nodule/Mass", "Other"],
        out_dir=tmp_path,
        method="eigencam",
        score_thresh=0.0,
        top_k=2,
        max_cams=3,
        max_images=2,
        progress=False,
    )
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert len(index) == 3 and index["image_id"].nunique() == 2
    assert (pd.read_csv(tmp_path / "cams.csv")["file"] == index["file"]).all()
    assert set(index["resolution"]) == {"cache"}
    for column in ("energy_in_box", "pointing_hit"):
        assert index[column].between(0, 1).all()
    by_id = {r.image_id: r for r in records}
    for row in index.itertuples():
        record = by_id[row.image_id]
        # three readers' boxes of one lesion: n_gt counts those of the CAM's class
        expected = len(record.boxes) if row.finding == "Nodule/Mass" else 0
        assert row.n_gt == expected
        assert np.isnan(row.energy_in_gt) == (expected == 0)
        # the two boxes are one box in two frames
        back = cache.geometry(row.image_id).boxes_to_original(
            np.array([[row.cache_x1, row.cache_y1, row.cache_x2, row.cache_y2]])
        )
        assert back[0] == pytest.approx([row.x1, row.y1, row.x2, row.y2], abs=1e-3)
        overlay = cv2.imread(str(tmp_path / row.file))
        assert (overlay == np.array(GT_COLOUR, np.uint8)).all(axis=2).any()
    with pytest.raises(ConfigError, match="max_cams"):
        explain(
            detector,
            records=records,
            cache=cache,
            classes=["Nodule/Mass", "Other"],
            out_dir=tmp_path,
            max_cams=0,
        )
