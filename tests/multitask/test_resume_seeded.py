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


class _Killed(Exception):
    """Stands for SIGKILL / a lost node in the middle of a step."""


def _weights(out: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert blob["global_step"] == STEPS
    return blob["state_dict"]


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_seeded_runs_are_reproducible_and_a_killed_run_resumes_exactly(
    phantoms: Phantoms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _weights(multitask.fit(_config(phantoms, tmp_path / "full")).output_dir)
    # (a) the same seed with two loader workers: the same weights, bit for bit
    torch.manual_seed(1234)  # whatever the process' RNG state before the run
    two = _config(phantoms, tmp_path / "two", "data.num_workers=2")
    _assert_equal(full, _weights(multitask.fit(two).output_dir))

    # (b) killed in the middle of the second epoch (its second batch), resumed from last.ckpt
    split = _config(phantoms, tmp_path / "split")
    original_step = MultiTaskModule.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise _Killed
        return original_step(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(MultiTaskModule, "training_step", dying_step)
        with pytest.raises(_Killed):
            multitask.fit(split)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    _assert_equal(full, _weights(multitask.fit(split).output_dir))
