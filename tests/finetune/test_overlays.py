"""TensorBoard overlays of validation images: ground-truth and predicted boxes, rank 0 only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from cxrkit import finetune
from cxrkit.config import load
from cxrkit.errors import ConfigError
from cxrkit.finetune.cam import GT_COLOUR, PREDICTED_COLOUR
from cxrkit.finetune.config import FinetuneConfig
from cxrkit.finetune.module import overlay

from .toy_vindr import ToyData, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "finetune" / "tiny_faster_rcnn.yaml"


def test_overlay_draws_ground_truth_and_the_best_predictions() -> None:
    image = torch.full((1, 64, 64), 0.5)
    output = {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.4]),
    }
    rgb = overlay(
        image,
        output,
        gt_boxes=torch.tensor([[40.0, 8.0, 56.0, 24.0]]),
        gt_labels=torch.tensor([2]),
        classes=["Nodule/Mass", "Effusion"],
        n_boxes=1,
    )
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[16, 40]) == GT_COLOUR[::-1]  # RGB: the GT box's left edge
    assert tuple(rgb[12, 4]) == PREDICTED_COLOUR  # the best prediction's left edge
    assert tuple(rgb[45, 30]) == (128, 128, 128)  # the second prediction is not drawn (n_boxes)


def test_a_tiny_fit_logs_validation_overlays_to_tensorboard(toy: ToyData, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = load(
        FinetuneConfig,
        files=[TINY],
        overrides=[
            *tiny_overrides(toy, out),
            "model.score_thresh=0.0",
            "data.batch_size=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",  # one validation inside the one epoch
            "log_images=3",  # of the 4 validation images, in batches of 2
        ],
    )
    finetune.fit(config, resume=False)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    assert sorted(events.Tags()[IMAGES]) == ["val/overlay/0", "val/overlay/1", "val/overlay/2"]
    (logged,) = events.Images("val/overlay/0")  # one validation, one image per tag
    assert (logged.width, logged.height) == (128, 128) and logged.step == 2
    assert FinetuneConfig().log_images == 4
    with pytest.raises(ConfigError, match="log_images"):
        load(FinetuneConfig, files=[TINY], overrides=["log_images=-1"])
