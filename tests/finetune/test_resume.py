"""A resumed `finetune` run needs no initial-weights file and ends where an uninterrupted one does;
and the Python API (fit -> artifacts -> load -> predict) without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cxrkit
from cxrkit import finetune
from cxrkit.data import loading
from cxrkit.finetune.module import DetectorModule
from cxrkit.models.backbones import build_resnet50
from cxrkit.pretrain.handoff import export_backbone

from .toy_vindr import ToyData, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "tiny_faster_rcnn.yaml"


def _config(toy: ToyData, out: Path, weights: Path) -> finetune.Config:
    # Shuffled and augmented, interrupted mid-epoch (8 training images, batch 4: two steps an
    # epoch, a checkpoint every step): the loader resumes where the checkpoint left off. Every
    # run has the same length, hence the same lr schedule.
    return cxrkit.load_config(
        finetune.Config,
        TINY,
        overrides=[
            *tiny_overrides(toy, out),
            "model.init=checkpoint",
            f"model.weights={weights}",
            "augment.enabled=true",
            "augment.hflip=true",
            "trainer.max_epochs=2",
            "trainer.max_steps=4",
            "trainer.checkpoint_every_n_steps=1",
            "trainer.val_check_interval=1.0",
        ],
    )


def test_resume_without_the_weights_file_matches_an_uninterrupted_run(
    toy: ToyData, tmp_path: Path, kill_at_step, assert_same_weights
) -> None:
    torch.manual_seed(3)
    weights, _ = export_backbone(state=build_resnet50().state_dict(), out_dir=tmp_path / "init")
    full = finetune.fit(_config(toy, tmp_path / "full", weights))

    split = _config(toy, tmp_path / "split", weights)
    with kill_at_step(DetectorModule, 3):  # the second step of the second epoch
        finetune.fit(split)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    weights.unlink()  # the checkpoint holds every weight: the file must not be read again
    resumed = finetune.fit(split)
    assert_same_weights(full.output_dir, resumed.output_dir, step=4)

    # the Python API: the returned artifacts are what a user takes on
    assert set(resumed.artifacts) == {"detector", "predictions"}
    assert set(resumed.metrics) == {"val/mAP50"}
    detector = finetune.load(resumed.artifacts["detector"])
    model, config = detector.model, detector.config
    assert config.model.init == "checkpoint" and not model.training
    cache = loading.open_cache(config.data, progress=False)
    test = [r for r in toy.records if r.split == "test"]
    frame = finetune.predict(model, records=test, cache=cache, classes=config.classes)
    assert list(frame.columns) == ["image_id", "finding", "score", "x1", "y1", "x2", "y2"]
    assert set(frame["image_id"]) <= {r.image_id for r in test}
