"""cxrkit's LARS against lightly's: the same parameters after 20 steps, and no host syncs."""

from __future__ import annotations

import copy

import pytest
import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS as LightlyLARS
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cxrkit.pretrain.lars import LARS


class SyncCounter(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense``: every tensor -> Python number copy (``.item()``,
    ``bool(t)``, ``if t != 0``) goes through it, and on a GPU each one waits for the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4, bias=False),
    )
    nn.init.zeros_(model[8].weight)  # |p| = 0 on the first step: the unadapted branch
    return model


def _optimizer(cls, model: nn.Module, *, nesterov: bool = False, dampening: float = 0.0):
    # the groups cxrkit's BarlowTwins module builds: biases and norms without decay/adaptation
    decay, no_decay = get_weight_decay_parameters([model])
    return cls(
        [
            {"params": decay},
            {"params": no_decay, "weight_decay": 0.0, "lr": 0.05},
        ],
        lr=0.5,
        momentum=0.9,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=1e-4,
        trust_coefficient=0.001,
    )


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(x).pow(2).mean().add(model(x).sum() * 0.1).backward()
    optimizer.step()


@pytest.mark.parametrize(("nesterov", "dampening"), [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_same_parameters_as_lightly_over_20_steps(nesterov, dampening):
    ours_model = _model()
    ref_model = copy.deepcopy(ours_model)
    ours = _optimizer(LARS, ours_model, nesterov=nesterov, dampening=dampening)
    ref = _optimizer(LightlyLARS, ref_model, nesterov=nesterov, dampening=dampening)
    generator = torch.Generator().manual_seed(1)
    start = [p.detach().clone() for p in ours_model.parameters()]
    for _ in range(20):
        x = torch.randn(6, 3, 10, 10, generator=generator)
        _step(ours_model, ours, x)
        _step(ref_model, ref, x)
    for (name, a), b, p0 in zip(
        ours_model.named_parameters(), ref_model.parameters(), start, strict=True
    ):
        assert not torch.equal(a, p0), f"{name} never moved: the comparison would be empty"
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_no_host_sync_per_step_and_the_counter_sees_lightlys():
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    counts = {}
    decayed = len(get_weight_decay_parameters([_model()])[0])
    for name, cls in (("ours", LARS), ("lightly", LightlyLARS)):
        model = _model()
        optimizer = _optimizer(cls, model)
        _step(model, optimizer, x)  # the first step creates the momentum buffers
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        with SyncCounter() as counter:
            optimizer.step()
        counts[name] = counter.syncs
    assert counts["ours"] == 0
    # lightly: bool(p_norm != 0) and bool(g_norm != 0) for each decayed tensor (3 weights; no
    # norm is zero any more, so neither test short-circuits)
    assert decayed == 3
    assert counts["lightly"] == 2 * decayed


def test_rejects_bad_arguments():
    params = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="lr"):
        LARS(params, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        LARS(params, lr=0.1, nesterov=True)
