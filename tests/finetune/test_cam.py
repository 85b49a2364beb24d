"""CAMs per predicted box (pytorch-grad-cam) on a small detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkit.errors import ConfigError
from cxrkit.finetune.cam import box_cams, draw_overlay, resolve_layer
from cxrkit.finetune.model import build_detector


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
