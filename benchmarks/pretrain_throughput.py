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
    # the stall between the last step of an epoch and the first of the next (tiny model, CPU)
    python benchmarks/pretrain_throughput.py --epoch-gap --json gap.json

``--epoch-gap``: a Barlow Twins module (the shipped LightningModule) trained for 3 epochs through
the shipped trainer on a real cache and the real BYOL views, with 2 loader workers and a
checkpoint due at every epoch's last step. Contenders, A B C A B C: the loader before the
persistent iterator (a DataLoader whose epoch iterator is made anew: an empty queue at every
epoch start; with the tiny model only), ours (:class:`cxrkit.pretrain.data.PretrainData`, one
iterator across epochs, and the engine's checkpoint writer, which copies the tensors and writes
the file from a thread), and ours with the same atomic write done synchronously. The gap is the
wall time from the end of an epoch's last step to the start of the next epoch's first step; the
time spent building each checkpoint and in the writer's save call is reported beside it.
``--gap-model tiny`` (default) has a 2-layer backbone; ``--gap-model resnet50 --projector 8192``
is the real model, whose checkpoint with its LARS state is the real one (1.40 GB):

    python benchmarks/pretrain_throughput.py --epoch-gap --gap-model resnet50 --projector 8192 \\
        --gap-images 8 --gap-batch 4 --gap-orig-size 64 --gap-cache 64 --gap-view 32

Measured that way (2-core shared CPU, load 5-10, 1 torch thread, --gap-workers 0, 5 rounds x 2
boundaries, checkpoint 1.40 GB), before the engine adopted its snapshot writer: median gap 1.77 s
with Lightning's AsyncCheckpointIO (it clones every tensor on the training thread), 5.74 s written
synchronously, 0.91 s with the snapshot buffers (1.62 s at the first checkpoint, which allocated
them, 0.54 s after). With the buffers made after the first step (the engine's warm-up), on the
same CPU quiet (load 1.2): median gap 0.33 s, every one of the 10 at most 0.36 s (the first
boundary included), against 0.84 s for AsyncCheckpointIO and 2.88 s synchronous. Building the
checkpoint takes 0.003 s.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import statistics
import sys
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
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._interleave import turns  # noqa: E402
from cxrkit import engine  # noqa: E402
from cxrkit.config import PreprocessConfig, TrainerConfig  # noqa: E402
from cxrkit.data.sampling import ResumableSampler, SeededItems  # noqa: E402
from cxrkit.io import atomic_write  # noqa: E402
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_resnet50  # noqa: E402
from cxrkit.pretrain.config import OptimConfig, ViewsConfig  # noqa: E402
from cxrkit.pretrain.data import PretrainData  # noqa: E402
from cxrkit.pretrain.module import BarlowTwins  # noqa: E402


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


# --------------------------------------------------------------------------------------------------
# The epoch boundary


class _Boundaries(L.Callback):
    """Wall time of each step's start and end, with its epoch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, self._start, time.perf_counter()))

    def gaps(self) -> list[float]:
        """End of each epoch's last step -> start of the next epoch's first step."""
        out = []
        for (e0, _, end), (e1, start, _) in zip(self.steps, self.steps[1:], strict=False):
            if e1 == e0 + 1:
                out.append(start - end)
        return out


class _PerEpochIterator(PretrainData):
    """The loader before this change: a DataLoader whose iterator is made anew every epoch."""

    def train_dataloader(self):
        sampler = ResumableSampler(self.dataset, seed=self.seed)
        return engine.build_loader(
            SeededItems(self.dataset),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            train=True,
            drop_last=True,
            sampler=sampler,
        )


def _gap_module(model: str, batch: int, projector: int) -> BarlowTwins:
    """``tiny``: a 2-layer backbone (the loader's share of the gap shows); ``resnet50``: the real
    backbone, so that with ``--projector 8192`` the checkpoint is the real one (1.40 GB)."""
    if model == "resnet50":
        backbone, feature_dim = build_resnet50(), 2048
    else:
        backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 7, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )  # fmt: skip
        feature_dim = 16
    return BarlowTwins(
        backbone=backbone,
        feature_dim=feature_dim,
        projector_hidden_dim=projector,
        projector_output_dim=projector,
        optim=OptimConfig(warmup_epochs=0),
        batch_size=batch,
    )


class _SyncAtomicCheckpointIO(TorchCheckpointIO):
    """The engine's checkpoint writer without its thread: ``torch.save`` through
    ``atomic_write`` while training waits (the contender the async writer is measured against)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def _timed(method, into: list[float]):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        into.append(time.perf_counter() - start)
        return result

    return timed


def epoch_gap_run(
    dataset,
    *,
    loader: str,
    batch: int,
    workers: int,
    epochs: int,
    projector: int,
    out: Path,
    model: str = "tiny",
) -> tuple[list[float], dict[str, list[float]]]:
    """One 3-epoch run; returns its epoch-boundary gaps in seconds, and per checkpoint the
    seconds spent building it (``dump_s``: state dicts, LARS state) and in the checkpoint
    writer's save call (``save_call_s``: the tensor copy and hand-off when asynchronous, the
    whole write when not), plus the checkpoint's size (``size_gb``)."""
    torch.manual_seed(0)
    per_epoch = len(dataset) // batch
    config = TrainerConfig(
        accelerator="cpu",
        devices="1",
        max_epochs=epochs,
        log_every_n_steps=1,
        checkpoint_every_n_steps=per_epoch,  # a checkpoint due at every epoch's last step
        progress_bar=False,
    )
    cls = _PerEpochIterator if loader == "per-epoch iterator" else PretrainData
    data = cls(dataset=dataset, batch_size=batch, num_workers=workers, seed=0)
    probe = _Boundaries()
    trainer = engine.build_trainer(config=config, output_dir=out, callbacks=[probe])
    if loader == "ours, synchronous checkpoint":
        trainer.strategy.checkpoint_io = _SyncAtomicCheckpointIO()
    elif loader == "Lightning's AsyncCheckpointIO (clones)":
        trainer.strategy.checkpoint_io = AsyncCheckpointIO(_SyncAtomicCheckpointIO())
    timings: dict[str, list[float]] = {"dump_s": [], "save_call_s": [], "size_gb": []}
    connector = trainer._checkpoint_connector  # private, timed here only
    connector.dump_checkpoint = _timed(connector.dump_checkpoint, timings["dump_s"])
    io_plugin = trainer.strategy.checkpoint_io
    io_plugin.save_checkpoint = _timed(io_plugin.save_checkpoint, timings["save_call_s"])
    trainer.fit(_gap_module(model, batch, projector), train_dataloaders=data)
    last = out / engine.CHECKPOINT_DIR / engine.LAST_CHECKPOINT
    if last.is_file():
        timings["size_gb"].append(last.stat().st_size / 1e9)
    return probe.gaps(), timings


def measure_epoch_gap(args: argparse.Namespace) -> dict:
    from cxrkit.data import datasets
    from cxrkit.data.cache import Cache
    from cxrkit.data.preprocess import build_cache
    from cxrkit.pretrain.transforms import build_view_transform

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loader_throughput import make_originals

    gaps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records = make_originals(work / "originals", n=args.gap_images, side=args.gap_orig_size)
        build_cache(
            records=records, out_dir=work / "cache", recipe=PreprocessConfig(size=args.gap_cache),
            progress=False,
        )  # fmt: skip
        views = build_view_transform(views=ViewsConfig(size=args.gap_view))
        dataset = datasets.UnlabeledDataset(
            records=records, cache=Cache(work / "cache"), transform=views
        )
        names: tuple[str, ...] = (
            "ours", "ours, synchronous checkpoint", "Lightning's AsyncCheckpointIO (clones)",
        )  # fmt: skip
        if args.gap_model == "tiny":  # the loader's own share: only visible with a tiny model
            names = ("per-epoch iterator", *names)
        timings: dict[str, dict[str, list[float]]] = {}

        def run(name: str) -> None:
            out = work / f"run-{len(sum(gaps.values(), []))}"
            found, timed = epoch_gap_run(
                dataset, loader=name, batch=args.gap_batch, workers=args.gap_workers,
                epochs=3, projector=args.projector, out=out, model=args.gap_model,
            )  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)  # checkpoints are large (1.4 GB at full size)
            # Lightning's trainer, module and callbacks reference each other: collect them now,
            # or each run's 5 GB (full size: weights, gradients, LARS state, the async copy)
            # waits for a late collection and a shared machine runs out of memory
            gc.collect()
            print(f"{name}: gaps {[round(g, 3) for g in found]} s, " + ", ".join(
                f"{k} {[round(v, 3) for v in values]}" for k, values in timed.items()
            ), flush=True)  # fmt: skip
            gaps.setdefault(name, []).extend(found)
            for key, values in timed.items():
                timings.setdefault(name, {}).setdefault(key, []).extend(values)

        t = turns({n: (lambda n=n: run(n)) for n in names}, pairs=args.pairs, warmup=0)
    result = {
        "settings": {
            "images": args.gap_images, "batch": args.gap_batch, "workers": args.gap_workers,
            "cache_px": args.gap_cache, "view_px": args.gap_view, "projector": args.projector,
            "model": args.gap_model, "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
        },
        "gaps_s": gaps,
        "median_gap_s": {n: statistics.median(g) for n, g in gaps.items()},
        "checkpoint": timings,
        "turns": t.as_dict(),
    }  # fmt: skip
    print(
        f"epoch-boundary gap, {args.pairs} interleaved rounds x 2 boundaries, batch "
        f"{args.gap_batch}, {args.gap_workers} workers, views {args.gap_view} px from a "
        f"{args.gap_cache} px cache, load average {os.getloadavg()[0]:.2f}"
    )
    for name, value in result["median_gap_s"].items():
        line = f"{name:>30}: median gap {value * 1000:8.1f} ms"
        for key, values in timings.get(name, {}).items():
            if values:
                line += f", {key} {statistics.median(values):.3f}"
        print(line)
    return result


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--epoch-gap", action="store_true", help="measure the epoch boundary")
    parser.add_argument("--pairs", type=int, default=5, help="epoch gap: interleaved rounds")
    parser.add_argument("--gap-images", type=int, default=96)
    parser.add_argument("--gap-orig-size", type=int, default=512)
    parser.add_argument("--gap-cache", type=int, default=256)
    parser.add_argument("--gap-view", type=int, default=224)
    parser.add_argument("--gap-batch", type=int, default=32)
    parser.add_argument("--gap-workers", type=int, default=2)
    parser.add_argument(
        "--gap-model",
        default="tiny",
        choices=["tiny", "resnet50"],
        help="epoch gap: a 2-layer backbone, or ResNet-50 (with --projector 8192: the real "
        "1.4 GB checkpoint)",
    )
    args = parser.parse_args(argv)
    if args.epoch_gap:
        torch.set_num_threads(args.threads)
        logging.getLogger("lightning").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        result = measure_epoch_gap(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
