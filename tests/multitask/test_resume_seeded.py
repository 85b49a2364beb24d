"""A multi-task run with a shuffled loader AND augmentation is reproducible (also with two loader
workers) and resumes exactly mid-epoch: the Guendel heads (segmentation masks and location boxes
go through the augmentation with the image) on a random ResNet-18 at 64 px."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrkit import multitask
from cxrkit.config import load
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.module import MultiTaskModule

from .conftest import CONFIGS, Phantoms

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The 8 validation phantoms (all with their masks) as the training set, batch 2: 4 steps an epoch,
# so the run ends mid-epoch too; small, because a step of the three heads is what costs here.
STEPS = 6


def _config(phantoms: Phantoms, out: Path, *extra: str) -> MultiTaskConfig:
    return load(
        MultiTaskConfig,
        files=[CONFIGS / "tiny_guendel.yaml"],
        overrides=[
            *phantoms.overrides(out),
            "augment=true",
            "augment_transforms=[hflip,affine,brightness_contrast,noise]",
            "data.train_split=val",
            "data.val_split=unassigned",  # no such record: no validation, training compared
            "predict_split=unassigned",
            "data.batch_size=2",
            "trainer.max_epochs=2",
            f"trainer.max_steps={STEPS}",
            "trainer.val_check_interval=1.0",
            "trainer.checkpoint_every_n_steps=1",
            *extra,
        ],
    )


def test_seeded_runs_are_reproducible_and_a_killed_run_resumes_exactly(
    phantoms: Phantoms, tmp_path: Path, kill_at_step, assert_same_weights
) -> None:
    full = multitask.fit(_config(phantoms, tmp_path / "full")).output_dir
    # (a) the same seed with two loader workers: the same weights, bit for bit
    torch.manual_seed(1234)  # whatever the process' RNG state before the run
    two = multitask.fit(_config(phantoms, tmp_path / "two", "data.num_workers=2")).output_dir
    assert_same_weights(full, two, step=STEPS)

    # (b) killed in the middle of the second epoch (its second batch), resumed from last.ckpt
    split = _config(phantoms, tmp_path / "split")
    with kill_at_step(MultiTaskModule, 5):
        multitask.fit(split)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert_same_weights(full, multitask.fit(split).output_dir, step=STEPS)
