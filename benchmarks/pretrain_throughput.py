"""Pairs per second of cxrkit's Barlow Twins training step against a minimal plain PyTorch loop.

Both run in this process on the same pinned host batch (two views, copied to the device every
step), the same ResNet-50 + projector + ``BarlowTwinsLoss`` (float32 loss), the same LARS param
groups and the same precision. The plain loop is what a person would write in 40 lines; ours is
the shipped ``BarlowTwins`` LightningModule under the shipped ``engine.build_trainer`` (logging,
non-finite check, LR monitor, throughput metric, checkpoint callbacks armed but not firing).
Target: ours >= 0.95x the plain loop at identical settings, and faster with channels_last /
torch.compile. Data loading is excluded on both sides (it is measured by the data layer).

    # this CPU, small sizes (one thread per process keeps a shared machine's numbers stable)
    python benchmarks/pretrain_throughput.py --device cpu --size 64 --batch 16 --projector 1024
    # one GPU, the paper's resolution, bf16, channels_last and compile variants; reports MFU
    python benchmarks/pretrain_throughput.py --device cuda --size 224 --batch 256 \\
        --precision bf16-mixed --variants plain,ours,ours+cl,ours+cl+compile --json gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from cxrkit import engine
from cxrkit.config import TrainerConfig
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_resnet50
from cxrkit.pretrain.config import OptimConfig
from cxrkit.pretrain.module import BarlowTwins


def make_batch(*, batch: int, size: int, pin: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(batch, 3, size, size, generator=g) for _ in range(2)]
    if pin:
        views = [v.pin_memory() for v in views]
    return {"image_id": [f"img{i}" for i in range(batch)], "image": views}


def autocast(device: str, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_loop(args: argparse.Namespace, batch: dict[str, Any]) -> float:
    """The minimal loop: pairs per second over ``args.steps`` steps after ``args.warmup``."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = build_resnet50().to(device)
    head = BarlowTwinsProjectionHead(2048, args.projector, args.projector).to(device)
    criterion = BarlowTwinsLoss(lambda_param=0.0051)
    decay, no_decay = get_weight_decay_parameters([backbone, head])
    scale = args.batch / 256
    optimizer = LARS(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.0048 * scale}],
        lr=0.2 * scale,
        momentum=0.9,
        weight_decay=1e-6,
    )
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(args.device)
            start = time.perf_counter()
        x_a, x_b = (v.to(device, non_blocking=True) for v in batch["image"])
        with autocast(args.device, args.precision):
            z_a = head(backbone((x_a - mean) / std))
            z_b = head(backbone((x_b - mean) / std))
        loss = criterion(z_a.float(), z_b.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(args.device)
    assert start is not None
    return args.steps * args.batch / (time.perf_counter() - start)


class _Repeat(Dataset):
    """The same (already batched) host batch at every index: no collation cost."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch


class _Timer(L.Callback):
    """Times whole steps from the start of step ``warmup`` to the start of the last step."""

    def __init__(self, warmup: int, last: int, device: str) -> None:
        self.warmup, self.last, self.device = warmup, last, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in (self.warmup, self.last):
            sync(self.device)
            now = time.perf_counter()
            if trainer.global_step == self.warmup:
                self.start = now
            else:
                self.end = now


def ours(
    args: argparse.Namespace, batch: dict[str, Any], *, channels_last: bool, compile: bool
) -> float:
    torch.manual_seed(0)
    trainer_config = TrainerConfig(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices="1",
        precision=args.precision,
        max_steps=args.warmup + args.steps + 1,
        max_epochs=-1,
        channels_last=channels_last,
        compile=compile,
        log_every_n_steps=10,
        checkpoint_every_n_steps=10**9,
        progress_bar=False,
    )
    module = BarlowTwins(
        backbone=build_resnet50(),
        projector_hidden_dim=args.projector,
        projector_output_dim=args.projector,
        optim=OptimConfig(warmup_epochs=0),
        batch_size=args.batch,
        channels_last=channels_last,
    )
    engine.apply_channels_last_and_compile(module, trainer_config)
    timer = _Timer(args.warmup, args.warmup + args.steps, args.device)
    loader = DataLoader(_Repeat(batch, args.warmup + args.steps + 1), batch_size=None)
    with tempfile.TemporaryDirectory() as out:
        trainer = engine.build_trainer(
            config=trainer_config, output_dir=Path(out), callbacks=[timer]
        )
        trainer.fit(module, train_dataloaders=loader)
    return args.steps * args.batch / (timer.end - timer.start)


def flops_per_pair(args: argparse.Namespace) -> float:
    """Training FLOPs of one pair of views (forward + backward), counted by PyTorch."""
    backbone = build_resnet50()
    head = BarlowTwinsProjectionHead(2048, args.projector, args.projector)
    criterion = BarlowTwinsLoss(lambda_param=0.0051)
    x = torch.rand(2, 3, args.size, args.size)
    with FlopCounterMode(display=False) as counter:
        criterion(head(backbone(x)), head(backbone(x))).backward()
    return counter.get_total_flops() / 2


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--projector", type=int, default=1024, help="hidden = output width")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--variants",
        default="plain,ours,ours+cl",
        help="comma list of plain, ours, ours+cl, ours+compile, ours+cl+compile",
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternate the variants N times")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    batch = make_batch(batch=args.batch, size=args.size, pin=args.device == "cuda")
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for variant in args.variants.split(","):
            if variant == "plain":
                rate = plain_loop(args, batch)
            else:
                rate = ours(
                    args, batch, channels_last="+cl" in variant, compile="compile" in variant
                )
            runs.setdefault(variant, []).append(rate)
            print(f"{variant:>18}: {rate:8.2f} pairs/s", flush=True)

    flops = flops_per_pair(args)
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    peak = get_available_flops(torch.device(args.device), dtype) if args.device == "cuda" else None
    # the median over repeats: a shared machine's outliers go both ways
    best = {k: statistics.median(v) for k, v in runs.items()}
    results = {
        "settings": vars(args) | {"json": str(args.json)},
        "pairs_per_s": runs,
        "gflops_per_pair": flops / 1e9,
        "peak_flops": peak,
        "variants": {},
    }
    print(
        f"\n{args.device}, {args.size} px, batch {args.batch}, projector {args.projector}, "
        f"{args.precision}, {flops / 1e9:.2f} GFLOP per pair (fwd+bwd)"
    )
    for variant, rate in best.items():
        entry = {"pairs_per_s": rate}
        line = f"{variant:>18}: {rate:8.2f} pairs/s"
        if "plain" in best:
            entry["vs_plain"] = rate / best["plain"]
            line += f"  {rate / best['plain']:.3f}x plain"
        if peak:
            entry["mfu"] = rate * flops / peak
            line += f"  MFU {entry['mfu']:.1%}"
        results["variants"][variant] = entry
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
