"""Two-process DDP on CPU (gloo, loopback): the Barlow Twins loss as wired, and its gradients, equal
one process computing the same objective on the global batch.

The reason to check: lightly's ``BarlowTwinsLoss(gather_distributed=True)`` used a raw all-reduce
until lightly 1.6, which scaled the gradient by 1/world_size (lightly issue #1977). Each rank
normalises its own embeddings (lightly's design; on GPUs the BatchNorm layers of the backbone and
head are synchronised, on CPUs PyTorch has no SyncBatchNorm), so the single-process reference runs
the model per rank-sized chunk and averages the chunks' cross-correlation matrices, as the
original Barlow Twins code's all-reduce does. When both ranks hold batches with equal statistics
(the same images in another order) this is exactly the plain loss of the global batch.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cxrkit.pretrain.config import OptimConfig
from cxrkit.pretrain.module import BarlowTwins

WORLD = 2
PER_RANK = 6
LAMBDA = 0.0051


def _model() -> BarlowTwins:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return BarlowTwins(
        backbone=backbone,
        feature_dim=8,
        projector_hidden_dim=16,
        projector_output_dim=12,
        optim=OptimConfig(),
        batch_size=PER_RANK,
    )


class _Pair(nn.Module):
    """The module's training computation for DDP: views -> embeddings -> wired loss."""

    def __init__(self, module: BarlowTwins) -> None:
        super().__init__()
        self.module = module

    def forward(self, x_a, x_b):
        m = self.module
        return m.criterion(m.projection_head(m(x_a)), m.projection_head(m(x_b)))


def _views(same_statistics: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_a = torch.rand(WORLD * PER_RANK, 1, 12, 12, generator=g)
    x_b = (x_a + 0.1 * torch.randn(x_a.shape, generator=g)).clamp(0, 1)
    if same_statistics:  # rank 1 holds rank 0's images in reverse order
        x_a = torch.cat([x_a[:PER_RANK], x_a[:PER_RANK].flip(0)])
        x_b = torch.cat([x_b[:PER_RANK], x_b[:PER_RANK].flip(0)])
    return x_a, x_b


def _normalise(z: torch.Tensor) -> torch.Tensor:
    return nn.functional.batch_norm(z, None, None, training=True)


def _reference(same_statistics: bool) -> tuple[float, dict[str, torch.Tensor], float]:
    """One process, global batch: the paper's formula with C averaged over rank-sized chunks."""
    module = _model()
    x_a, x_b = _views(same_statistics)
    c = 0
    for chunk in range(WORLD):
        part = slice(chunk * PER_RANK, (chunk + 1) * PER_RANK)
        z_a = module.projection_head(module(x_a[part]))
        z_b = module.projection_head(module(x_b[part]))
        c = c + _normalise(z_a).T @ _normalise(z_b) / PER_RANK / WORLD
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    loss = on + LAMBDA * off
    loss.backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    # the plain single-process loss on the whole global batch, for the equal-statistics case
    with torch.no_grad():
        z_a, z_b = module.projection_head(module(x_a)), module.projection_head(module(x_b))
        plain = module.criterion(z_a, z_b).item()
    return loss.item(), grads, plain


def _worker(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results = {}
        for same in (False, True):
            module = _model()
            ddp = DistributedDataParallel(_Pair(module))
            x_a, x_b = _views(same)
            part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            loss = ddp(x_a[part], x_b[part])
            loss.backward()  # DDP averages the gradients over ranks
            # numpy, not tensors: a queue passes tensors through shared memory, gone at exit
            grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
            results[same] = (loss.item(), grads)
        queue.put((rank, results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    processes = mp.spawn(_worker, args=(_free_port(), queue), nprocs=WORLD, join=False)
    results = dict(queue.get(timeout=300) for _ in range(WORLD))
    processes.join()
    return results


@pytest.mark.parametrize("same_statistics", [False, True])
def test_ddp_loss_and_gradients_equal_one_process(ddp_results, same_statistics):
    loss, grads, plain = _reference(same_statistics)
    for rank in range(WORLD):
        ddp_loss, ddp_grads = ddp_results[rank][same_statistics]
        assert ddp_loss == pytest.approx(loss, rel=1e-5)  # every rank reports the global loss
        assert ddp_grads.keys() == grads.keys()
        for name, g in grads.items():
            # with the #1977 bug these were g / WORLD
            assert torch.allclose(torch.from_numpy(ddp_grads[name]), g, rtol=1e-4, atol=1e-6), name
    if same_statistics:
        assert loss == pytest.approx(plain, rel=1e-5)
