"""The Barlow Twins loss and projector as wired in the module, against the paper's code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrkit.config import TrainerConfig
from cxrkit.errors import ConfigError
from cxrkit.pretrain.config import OptimConfig, PretrainConfig
from cxrkit.pretrain.lars import LARS
from cxrkit.pretrain.module import BarlowTwins, build_projection_head


def paper_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins' reference code (facebookresearch/barlowtwins, main.py), on one device."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False)  # normalise along the batch
    c = bn(z1).T @ bn(z2)  # empirical cross-correlation matrix
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    n = c.shape[0]
    off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow_(2).sum()
    return on_diag + lambd * off_diag


def _module(**model) -> BarlowTwins:
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return BarlowTwins(
        backbone=backbone,
        feature_dim=8,
        projector_hidden_dim=32,
        projector_output_dim=24,
        optim=OptimConfig(),
        batch_size=16,
        **model,
    )


def test_wired_loss_equals_paper_formula():
    module = _module()
    assert module.criterion.lambda_param == 0.0051  # the paper's lambda, not lightly's 5e-3
    assert module.criterion.gather_distributed
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 24, generator=g), torch.randn(16, 24, generator=g) * 3 + 1
    expected = paper_loss(z1, z2, 0.0051)
    assert torch.allclose(module.criterion(z1, z2), expected, rtol=1e-5)
    # a hand-checkable property: identical views -> diagonal of C is 1, only redundancy remains
    c = nn.BatchNorm1d(24, affine=False)(z1)
    c = c.T @ c / 16
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    assert torch.allclose(module.criterion(z1, z1), 0.0051 * off, rtol=1e-4, atol=1e-6)


def test_lambda_is_configurable():
    module = _module(lambda_param=0.5)
    z1, z2 = torch.randn(8, 24), torch.randn(8, 24)
    assert torch.allclose(module.criterion(z1, z2), paper_loss(z1, z2, 0.5), rtol=1e-5)


def test_projection_head_has_the_papers_shape():
    head = build_projection_head(input_dim=2048, hidden_dim=8192, output_dim=8192)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 8192),
        (8192, 8192),
        (8192, 8192),
    ]
    assert all(m.bias is None for m in linears)  # Barlow Twins: no bias anywhere
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_optimizer_groups_follow_the_paper():
    module = _module()

    class _Trainer:  # what configure_optimizers reads from the Lightning Trainer
        world_size, accumulate_grad_batches = 8, 1
        estimated_stepping_batches, num_training_batches = 100, 10

    module.trainer = _Trainer()  # type: ignore[assignment]
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    weights, biases = optimizer.param_groups
    assert isinstance(optimizer, LARS)  # cxrkit's sync-free LARS, lightly's update
    scale = 16 * 8 / 256  # global batch / 256
    assert abs(weights["initial_lr"] - 0.2 * scale) < 1e-12
    assert abs(biases["initial_lr"] - 0.0048 * scale) < 1e-12
    assert weights["weight_decay"] == 1e-6 and biases["weight_decay"] == 0.0
    # biases and BatchNorm parameters go to the no-decay group; conv/linear weights do not
    no_decay = {id(p) for p in biases["params"]}
    named = dict(module.named_parameters())
    assert id(named["backbone.0.bias"]) in no_decay
    assert id(named["projection_head.layers.1.weight"]) in no_decay  # BatchNorm1d gamma
    assert id(named["backbone.0.weight"]) not in no_decay
    assert id(named["projection_head.layers.6.weight"]) not in no_decay
    # 10 warm-up epochs of 10 batches = 100 steps, capped at the 100 in total
    assert scheduler.warmup_epochs == 100 and scheduler.max_epochs == 100


def test_gradient_accumulation_is_refused():
    # Changed on purpose (issue 10): 192 x 4 accumulated is not a batch of 768 for Barlow Twins,
    # each micro-batch has its own cross-correlation matrix.
    with pytest.raises(ConfigError, match="cross-correlation"):
        PretrainConfig(trainer=TrainerConfig(accumulate_grad_batches=4))
    module = _module()

    class _Trainer:  # a Trainer built by hand, outside cxrkit's config
        world_size, accumulate_grad_batches = 1, 2
        estimated_stepping_batches, num_training_batches = 100, 20

    module.trainer = _Trainer()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="accumulate_grad_batches=2"):
        module.configure_optimizers()


def test_defaults_are_the_authors_run():
    # BarlowTwins-CXR main.py and LOG.TXT (github.com/haooyuee/BarlowTwins-CXR)
    config = PretrainConfig()
    assert config.trainer.max_epochs == 800  # log: step 115,990 = 800 x 145
    assert config.data.batch_size == 768 and config.trainer.accumulate_grad_batches == 1
    assert config.model.init == "imagenet"
    assert (config.model.projector_hidden_dim, config.model.projector_output_dim) == (8192, 8192)
    assert config.model.lambda_param == 0.0051
    optim = config.optim
    assert (optim.lr_weights, optim.lr_biases, optim.weight_decay) == (0.2, 0.0048, 1e-6)
    assert (optim.warmup_epochs, optim.end_lr_factor) == (10, 0.001)


def test_projection_head_is_lightlys_but_for_the_last_bias():
    from lightly.models.modules import BarlowTwinsProjectionHead

    ours = build_projection_head(input_dim=64, hidden_dim=32, output_dim=16).state_dict()
    lightly_head = BarlowTwinsProjectionHead(input_dim=64, hidden_dim=32, output_dim=16)
    theirs = lightly_head.state_dict()
    assert set(theirs) - set(ours) == {"layers.6.bias"} and set(ours) <= set(theirs)
    for key, value in ours.items():
        assert value.shape == theirs[key].shape, key
