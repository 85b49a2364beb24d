"""The detector's learning-rate schedule: linear warm-up from lr x warmup_factor, then a cosine
that ends at optim.min_lr (BarlowTwins-CXR authors' mmdetection CosineAnnealing, min_lr 1e-4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cxrkit.finetune.config import OptimConfig
from cxrkit.finetune.module import DetectorModule


def lrs(optim: OptimConfig, total: int) -> list[float]:
    module = DetectorModule(model=torch.nn.Linear(2, 2), classes=["A"], optim=optim, config={})
    # configure_optimizers reads only the run's length from the trainer
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)
    setup = DetectorModule.configure_optimizers(module)
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warm_up_then_cosine_to_min_lr() -> None:
    optim = OptimConfig(lr=0.005, warmup_steps=10, warmup_factor=0.001, min_lr=1e-4)
    values = lrs(optim, total=110)
    # lightly's warm-up takes step k to (k + 1) / warmup_steps of the way (mmcv starts one
    # step earlier, at lr x warmup_ratio itself)
    assert values[0] == pytest.approx(0.005 * (0.001 + 0.999 / 10))
    assert values[9] == pytest.approx(0.005)
    assert values[10] == pytest.approx(0.005)  # warm-up over: the full rate
    assert values[-1] == pytest.approx(1e-4, rel=0.02)  # the floor, never 0
    assert min(values[10:]) >= 1e-4 - 1e-12
    # the middle of the cosine: halfway between lr and min_lr, not between lr and 0
    assert values[60] == pytest.approx((0.005 + 1e-4) / 2, rel=0.02)


def test_min_lr_above_lr_is_refused() -> None:
    with pytest.raises(ValueError, match="optim.min_lr"):
        OptimConfig(lr=0.001, min_lr=0.01)
