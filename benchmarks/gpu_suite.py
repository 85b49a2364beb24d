"""The GPU benchmark suite: cxrkit's training and inference steps against their peers, one command.

    python benchmarks/gpu_suite.py --out DIR                    # one GPU, about 6-8 min on an H200
    python benchmarks/gpu_suite.py --out DIR --device cpu --tiny   # every part, tiny, on a CPU

Parts (each written to ``DIR/suite.json`` and a row or more of ``DIR/suite.md``):

- **B0** environment: device name and kind, clocks (``nvidia-smi``), torch / CUDA / cuDNN, and a
  bf16 8192^2 GEMM's TFLOP/s (float32 256^2 with ``--tiny``).
- **B2** ResNet-50 train step: ours (``LinearProbe`` in fine-tune mode under the shipped
  ``engine.build_trainer``) vs a bare torchvision loop (``resnet50``, BCE, SGD).
- **B3** Barlow Twins step at 224 px, batch 256 / 512 / 768, eager / channels_last / compile:
  ours (the shipped ``BarlowTwins`` LightningModule, uint8 grey views made float on the device by
  ``PretrainData``) vs a minimal lightly loop (the same views, ``BarlowTwinsProjectionHead``,
  ``BarlowTwinsLoss``, lightly's ``LARS``), with peak memory.
- **B4** the Barlow Twins step's time split: data (host to device, uint8 to float), forward,
  backward, LARS, all-reduce (one process: none).
- **B5** the real loader from a cache (store, BYOL views) with 16 workers feeding the step: pairs/s,
  the loader alone, and the GPU's idle share (time the step waited for a batch).
- **B8 / B9** Faster R-CNN R50-FPN train step and inference: ours (``build_detector`` +
  ``DetectorModule``) vs the torchvision references loop (``fasterrcnn_resnet50_fpn``, SGD).

Every comparison takes turns, ours and the peer alternating in segments of ``k`` steps for at least
5 rounds (medians). Training comparisons interleave inside ours' ``trainer.fit``: a callback times
ours' segment, then runs the peer's segment in place, so both see the same machine state. Peak
memory: ours' over its warm-up steps, before the peer exists; the peer's is its peak minus what
was allocated when it was built (ours' resident weights and state). MFU = achieved FLOP/s over the
device's dense bf16 peak (``lightning``'s table), with FLOPs counted by
``torch.utils.flop_counter`` on one training step (forward + backward); the GEMM figure of B0 is
given too, as the achievable ceiling.

``--tiny`` shrinks every part (32-px images, ResNet-18 in place of ResNet-50 for B2-B5, small
batches and projectors, a 64-px detector with few proposals, 2 loader workers, no compile) so that
the whole suite runs as a test on a CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._interleave import MIN_PAIRS, turns  # noqa: E402
from benchmarks.pretrain_throughput import _Repeat  # noqa: E402
from cxrkit import engine  # noqa: E402
from cxrkit.config import PreprocessConfig, TrainerConfig  # noqa: E402
from cxrkit.models import backbones  # noqa: E402
from cxrkit.pretrain.config import OptimConfig, ViewsConfig  # noqa: E402
from cxrkit.pretrain.data import PretrainData  # noqa: E402
from cxrkit.pretrain.module import BarlowTwins  # noqa: E402
from cxrkit.pretrain.transforms import to_float_views  # noqa: E402


@dataclass(frozen=True)
class Scale:
    image: int  # B2-B5 image / view side
    bt_batches: tuple[int, ...]
    bt_modes: tuple[str, ...]
    compile_batches: tuple[int, ...]  # B3 batches also run compiled
    projector: int
    r50_batch: int
    det_size: int
    det_batch: int
    det_proposals: tuple[int, int, int]  # rpn train, rpn test, roi batch
    loader_images: int
    loader_workers: int
    loader_batch: int
    loader_steps: int
    gemm: int
    k: int  # steps per segment
    warmup: int  # untimed steps first
    pairs: int


PAPER = Scale(
    image=224, bt_batches=(256, 512, 768), bt_modes=("eager", "channels_last", "compile"),
    compile_batches=(768,), projector=8192, r50_batch=256, det_size=640, det_batch=16,
    det_proposals=(2000, 1000, 512), loader_images=1024, loader_workers=16, loader_batch=256,
    loader_steps=12, gemm=8192, k=3, warmup=3, pairs=MIN_PAIRS,
)  # fmt: skip
TINY = Scale(
    image=32, bt_batches=(4,), bt_modes=("eager", "channels_last"), compile_batches=(),
    projector=64, r50_batch=4, det_size=64, det_batch=2, det_proposals=(64, 32, 32),
    loader_images=12, loader_workers=2, loader_batch=4, loader_steps=4, gemm=256, k=1, warmup=1,
    pairs=MIN_PAIRS,
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Devices, clocks, FLOPs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision(device: torch.device) -> str:
    return "bf16-mixed" if device.type == "cuda" else "32-true"


def autocast(device: torch.device):
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak (lightning's table), None on a CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, torch.bfloat16)


def counted_flops(step: Callable[[], object]) -> float:
    """FLOPs of one call of ``step`` (forward + backward), counted by PyTorch."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device, base: int = 0) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def environment(device: torch.device, scale: Scale) -> dict[str, Any]:
    """B0: what ran, and the achievable matrix-multiply rate."""
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": props.name,
            "kind": f"sm_{props.major}{props.minor}, {props.multi_processor_count} SMs",
            "memory_gib": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
        if shutil.which("nvidia-smi"):
            query = "clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu"
            run = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            env["nvidia_smi"] = {"query": query, "value": run.stdout.strip()}
    n = scale.gemm
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(MIN_PAIRS):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        times.append((time.perf_counter() - start) / 10)
    env["gemm"] = {
        "n": n,
        "dtype": str(dtype),
        "tflops": 2 * n**3 / statistics.median(times) / 1e12,
    }
    return env


# --------------------------------------------------------------------------------------------------
# Taking turns inside ours' trainer.fit


class _Interleave(L.Callback):
    """Times ours in segments of ``k`` steps and runs the peer's segment between them.

    Steps ``0..warmup-1`` warm ours up (its peak memory is read there); at step ``warmup`` the
    peer is built and warmed up, then segments alternate ours, peer, ours, ... for ``pairs``
    rounds, and the fit is stopped.
    """

    def __init__(
        self, *, peer: Callable[[], Callable[[], object]], scale: Scale, device: torch.device
    ) -> None:
        self.make_peer, self.scale, self.device = peer, scale, device
        self.ours: list[float] = []
        self.peer: list[float] = []
        self.peak: dict[str, float | None] = {}
        self._step: Callable[[], object] | None = None
        self._t = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        reset_peak(self.device)

    def _peer_segment(self) -> None:
        assert self._step is not None
        sync(self.device)
        start = time.perf_counter()
        for _ in range(self.scale.k):
            self._step()
        sync(self.device)
        self.peer.append(time.perf_counter() - start)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s, scale = trainer.global_step, self.scale
        if s < scale.warmup:
            return
        sync(self.device)
        now = time.perf_counter()
        if s == scale.warmup:
            self.peak["ours"] = peak_gib(self.device)
            base = allocated(self.device)
            reset_peak(self.device)
            self._step = self.make_peer()
            for _ in range(scale.warmup):
                self._step()
            sync(self.device)
            self.peak["peer"] = peak_gib(self.device, base)
        elif (s - scale.warmup) % scale.k == 0:
            self.ours.append(now - self._t)
            self._peer_segment()
            if len(self.ours) == scale.pairs:
                trainer.should_stop = True
                return
        sync(self.device)
        self._t = time.perf_counter()


def repeated(host: dict[str, Any], scale: Scale) -> DataLoader:
    """The same host batch for every step of a fit (``batch_size=None``): no loading cost."""
    return DataLoader(_Repeat(host, scale.warmup + scale.pairs * scale.k + 2), batch_size=None)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fit_interleaved(
    module: L.LightningModule,
    data: Any,
    *,
    peer: Callable[[], Callable[[], object]],
    scale: Scale,
    device: torch.device,
    channels_last: bool = False,
    compile: bool = False,
) -> _Interleave:
    """Run ours under the shipped trainer, taking turns with ``peer`` (see :class:`_Interleave`)."""
    config = TrainerConfig(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices="1",
        precision=precision(device),
        max_steps=scale.warmup + scale.pairs * scale.k + 2,
        max_epochs=-1,
        channels_last=channels_last,
        compile=compile,
        log_every_n_steps=10,
        checkpoint_every_n_steps=10**9,
        progress_bar=False,
    )
    engine.apply_channels_last_and_compile(module, config)
    probe = _Interleave(peer=peer, scale=scale, device=device)
    with tempfile.TemporaryDirectory() as out:
        trainer = engine.build_trainer(config=config, output_dir=Path(out), callbacks=[probe])
        trainer.fit(module, train_dataloaders=data)
    if len(probe.ours) < scale.pairs:
        raise RuntimeError(f"only {len(probe.ours)} of {scale.pairs} rounds ran")
    return probe


def comparison(
    part: str, setting: str, probe_or_times: Any, *, items: int, flops_per_item: float | None,
    peak: float | None, peer_name: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Table rows of one comparison: ours and the peer, medians, ratio, MFU, memory."""
    if isinstance(probe_or_times, _Interleave):
        ours, theirs, mem = probe_or_times.ours, probe_or_times.peer, probe_or_times.peak
    else:
        ours, theirs, mem = probe_or_times.wall["ours"], probe_or_times.wall["peer"], {}
    ratio = statistics.median(b / a for a, b in zip(ours, theirs, strict=True))
    rows = []
    for name, seconds in (("ours", ours), (peer_name, theirs)):
        rate = statistics.median(items / s for s in seconds)
        rows.append(
            {
                "part": part,
                "setting": setting,
                "contender": name,
                "per_s": rate,
                "ratio_vs_peer": ratio if name == "ours" else 1.0,
                "mfu": rate * flops_per_item / peak if peak and flops_per_item else None,
                "peak_gib": mem.get("ours" if name == "ours" else "peer"),
                "seconds": seconds,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Models of each side


def make_backbone(scale: Scale) -> tuple[nn.Module, int]:
    """ResNet-50 without fc (cxrkit's builder, torchvision's model); ResNet-18 with --tiny."""
    if scale is TINY:
        model = torchvision.models.resnet18()
        model.fc = nn.Identity()
        return model, 512
    return backbones.build_resnet50(), backbones.FEATURE_DIMS["resnet50"]


def views_batch(batch: int, size: int, *, pin: bool) -> dict[str, Any]:
    """Two uint8 grey views per pair, as the loader hands them over."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, 1, size, size)
    views = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(2)]
    if pin:
        views = [v.pin_memory() for v in views]
    return {"image_id": [f"i{i}" for i in range(batch)], "image": views}


class _FixedViews(PretrainData):
    """Ours' data: the repeated host batch, through PretrainData's uint8 -> float on the device."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        super().__init__(dataset=[], batch_size=len(batch["image_id"]), num_workers=0)
        self.fixed, self.n = batch, n

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self.fixed, self.n), batch_size=None)


class MinimalBarlowTwins:
    """The minimal lightly loop: what a person writes in 40 lines (the peer of B3 and B4)."""

    def __init__(
        self, *, scale: Scale, batch: int, device: torch.device, channels_last: bool, compile: bool
    ) -> None:
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules import BarlowTwinsProjectionHead
        from lightly.models.utils import get_weight_decay_parameters
        from lightly.utils.lars import LARS

        torch.manual_seed(0)
        self.device, self.channels_last = device, channels_last
        backbone, dim = make_backbone(scale)
        self.backbone = backbone.to(device)
        self.head = BarlowTwinsProjectionHead(dim, scale.projector, scale.projector).to(device)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()
            self.head.compile()
        self.criterion = BarlowTwinsLoss(lambda_param=0.0051)
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.head])
        lr = batch / 256
        self.optimizer = LARS(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.0048 * lr}],
            lr=0.2 * lr, momentum=0.9, weight_decay=1e-6,
        )  # fmt: skip
        self.mean = torch.tensor(backbones.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(backbones.IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def data(self, host: dict[str, Any]) -> list[torch.Tensor]:
        views = [v.to(self.device, non_blocking=True) for v in host["image"]]
        return to_float_views(views)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        zs = []
        for v in views:
            x = (v.expand(-1, 3, -1, -1) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device):
                zs.append(self.head(self.backbone(x)))
        return self.criterion(zs[0].float(), zs[1].float())

    def step(self, host: dict[str, Any]) -> None:
        optimizer_step(self.optimizer, self.forward(self.data(host)))


def bt_module(scale: Scale, batch: int, channels_last: bool) -> BarlowTwins:
    torch.manual_seed(0)
    backbone, dim = make_backbone(scale)
    return BarlowTwins(
        backbone=backbone, feature_dim=dim, projector_hidden_dim=scale.projector,
        projector_output_dim=scale.projector, optim=OptimConfig(warmup_epochs=0),
        batch_size=batch, channels_last=channels_last,
    )  # fmt: skip


def bt_flops_per_pair(scale: Scale, batch: int = 2) -> float:
    loop = MinimalBarlowTwins(
        scale=scale, batch=batch, device=torch.device("cpu"), channels_last=False, compile=False
    )
    host = views_batch(batch, scale.image, pin=False)
    return counted_flops(lambda: loop.forward(loop.data(host)).backward()) / batch


# --------------------------------------------------------------------------------------------------
# The parts


def part_b2(scale: Scale, device: torch.device, peak: float | None) -> list[dict[str, Any]]:
    from cxrkit.pretrain.linear_probe import LinearProbe

    batch, findings = scale.r50_batch, 15
    g = torch.Generator().manual_seed(0)
    host = {
        "image_id": [f"i{i}" for i in range(batch)],
        "image": torch.rand(batch, 1, scale.image, scale.image, generator=g),
        "labels": (torch.rand(batch, findings, generator=g) > 0.8).float(),
        "label_known": torch.ones(batch, findings),
    }
    if device.type == "cuda":
        host = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in host.items()}
    torch.manual_seed(0)
    backbone, dim = make_backbone(scale)
    ours = LinearProbe(
        backbone=backbone, feature_dim=dim, num_findings=findings, mode="finetune", lr=0.1,
        batch_size=batch,
    )  # fmt: skip

    def peer() -> Callable[[], object]:
        torch.manual_seed(0)
        body, dim = make_backbone(scale)
        model = nn.Sequential(body, nn.Linear(dim, findings)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * batch / 256, momentum=0.9)
        mean = torch.tensor(backbones.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(backbones.IMAGENET_STD, device=device).view(1, 3, 1, 1)

        def step() -> None:
            x = host["image"].to(device, non_blocking=True)
            y = host["labels"].to(device, non_blocking=True)
            with autocast(device):
                logits = model((x.expand(-1, 3, -1, -1) - mean) / std)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer_step(optimizer, loss)

        return step

    probe = fit_interleaved(ours, repeated(host, scale), peer=peer, scale=scale, device=device)
    body, dim = make_backbone(scale)
    model = nn.Sequential(body, nn.Linear(dim, findings))
    x = torch.rand(2, 3, scale.image, scale.image)
    flops = counted_flops(lambda: model(x).sum().backward()) / 2
    return comparison(
        "B2 ResNet-50 train step" if scale is PAPER else "B2 ResNet-18 (tiny) train step",
        f"{scale.image} px, batch {batch}, {precision(device)}", probe, items=batch,
        flops_per_item=flops, peak=peak, peer_name="bare torchvision loop",
    )  # fmt: skip


def part_b3(scale: Scale, device: torch.device, peak: float | None) -> list[dict[str, Any]]:
    rows = []
    flops = bt_flops_per_pair(scale)
    for batch in scale.bt_batches:
        host = views_batch(batch, scale.image, pin=device.type == "cuda")
        modes = [m for m in scale.bt_modes if m != "compile" or batch in scale.compile_batches]
        for mode in modes:
            cl, comp = mode == "channels_last", mode == "compile"
            module = bt_module(scale, batch, channels_last=cl)

            def peer(batch: int = batch, host: dict = host, cl: bool = cl, comp: bool = comp):
                loop = MinimalBarlowTwins(
                    scale=scale, batch=batch, device=device, channels_last=cl, compile=comp
                )
                return lambda: loop.step(host)

            n = scale.warmup + scale.pairs * scale.k + 2
            probe = fit_interleaved(
                module, _FixedViews(host, n), peer=peer, scale=scale, device=device,
                channels_last=cl, compile=comp,
            )  # fmt: skip
            rows += comparison(
                "B3 Barlow Twins step", f"{scale.image} px, batch {batch}, {mode}", probe,
                items=batch, flops_per_item=flops, peak=peak, peer_name="minimal lightly loop",
            )  # fmt: skip
            del module, probe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def part_b4(scale: Scale, device: torch.device) -> dict[str, Any]:
    batch = scale.bt_batches[-1]
    host = views_batch(batch, scale.image, pin=device.type == "cuda")
    loop = MinimalBarlowTwins(
        scale=scale, batch=batch, device=device, channels_last=False, compile=False
    )
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "lars": []}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        phases[name].append(time.perf_counter() - start)
        return out

    for i in range(scale.warmup + scale.pairs * scale.k):
        views = timed("data", lambda: loop.data(host))
        loss = timed("forward", lambda views=views: loop.forward(views))
        loop.optimizer.zero_grad(set_to_none=True)
        timed("backward", loss.backward)
        timed("lars", loop.optimizer.step)
        if i < scale.warmup:
            for v in phases.values():
                v.pop()
    medians = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(medians.values())
    return {
        "batch": batch,
        "median_s": medians,
        "share": {k: v / total for k, v in medians.items()},
        "all_reduce": "none: one process (under DDP the loss all-reduces the 8192^2 C)",
    }


def part_b5(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    from benchmarks.loader_throughput import make_originals
    from cxrkit.data import datasets
    from cxrkit.data.cache import Cache
    from cxrkit.data.preprocess import build_cache
    from cxrkit.pretrain.transforms import build_view_transform

    side = 2 * scale.image + 64
    records = make_originals(work / "originals", n=scale.loader_images, side=side)
    cache_px = scale.image * 8 // 7  # a 256-px cache for 224-px views
    build_cache(
        records=records, out_dir=work / "cache", recipe=PreprocessConfig(size=cache_px),
        workers=1 if scale is TINY else min(scale.loader_workers, os.cpu_count() or 1),
        progress=False,
    )  # fmt: skip
    dataset = datasets.UnlabeledDataset(
        records=records,
        cache=Cache(work / "cache"),
        transform=build_view_transform(views=ViewsConfig(size=scale.image)),
    )
    data = PretrainData(
        dataset=dataset, batch_size=scale.loader_batch, num_workers=scale.loader_workers
    )
    loop = MinimalBarlowTwins(
        scale=scale, batch=scale.loader_batch, device=device, channels_last=False, compile=False
    )
    loader = data.train_dataloader()

    def epochs():  # EpochSpanningLoader: each iter() is the next epoch of one worker pool
        while True:
            yield from loader

    batches = epochs()
    for _ in range(2):  # workers started, first batches made
        loop.step(next(batches))
    sync(device)
    waited, start = 0.0, time.perf_counter()
    for _ in range(scale.loader_steps):
        t = time.perf_counter()
        host = next(batches)
        waited += time.perf_counter() - t
        loop.step(host)
    sync(device)
    total = time.perf_counter() - start
    t = time.perf_counter()
    for _ in range(scale.loader_steps):
        next(batches)
    alone = time.perf_counter() - t
    n = scale.loader_steps * scale.loader_batch
    return {
        "workers": scale.loader_workers,
        "batch": scale.loader_batch,
        "pairs_per_s_training": n / total,
        "pairs_per_s_loader_alone": n / alone,
        "pairs_per_s_per_worker": n / alone / scale.loader_workers,
        "gpu_idle_share": waited / total,
    }


def _det_batch(scale: Scale, *, channels: int) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    s = scale.det_size
    images = [torch.rand(channels, s, s, generator=g) for _ in range(scale.det_batch)]
    targets = []
    for i in range(scale.det_batch):
        xy = torch.rand(2, 2, generator=g) * s * 0.6
        boxes = torch.cat([xy, xy + s * 0.3], dim=1)
        targets.append({"boxes": boxes, "labels": torch.tensor([1 + i % 14, 1 + (i + 3) % 14])})
    return images, targets


def _reference_detector(scale: Scale) -> nn.Module:
    rpn_train, rpn_test, roi = scale.det_proposals
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=15, trainable_backbone_layers=5,
        min_size=scale.det_size, max_size=scale.det_size, rpn_pre_nms_top_n_train=rpn_train,
        rpn_post_nms_top_n_train=rpn_train, rpn_pre_nms_top_n_test=rpn_test,
        rpn_post_nms_top_n_test=rpn_test, box_batch_size_per_image=roi,
    )  # fmt: skip


def _our_detector(scale: Scale) -> nn.Module:
    from cxrkit.finetune.model import build_detector

    rpn_train, rpn_test, roi = scale.det_proposals
    return build_detector(
        num_classes=14, image_size=scale.det_size, rpn_proposals_train=rpn_train,
        rpn_proposals_test=rpn_test, roi_batch_size=roi,
    )  # fmt: skip


def part_b8_b9(scale: Scale, device: torch.device, peak: float | None) -> list[dict[str, Any]]:
    from cxrkit.finetune.config import OptimConfig as DetOptim
    from cxrkit.finetune.module import DetectorModule

    grey, targets = _det_batch(scale, channels=1)
    rgb = [im.expand(3, -1, -1).contiguous() for im in grey]
    host = {
        "image_id": [f"i{i}" for i in range(len(grey))],
        "image": grey,
        "boxes": [t["boxes"] for t in targets],
        "labels": [t["labels"] for t in targets],
    }
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(14)]
    ours = DetectorModule(
        model=_our_detector(scale), classes=classes, optim=DetOptim(warmup_steps=0), config={}
    )

    def peer() -> Callable[[], object]:
        torch.manual_seed(0)
        model = _reference_detector(scale).to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=1e-4)

        def step() -> None:  # torchvision references/detection/engine.py, train_one_epoch
            images = [im.to(device, non_blocking=True) for im in rgb]
            tg = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with autocast(device):
                losses = model(images, tg)
            optimizer_step(optimizer, sum(losses.values()))

        return step

    probe = fit_interleaved(ours, repeated(host, scale), peer=peer, scale=scale, device=device)
    counted = _our_detector(scale).train()
    flops = counted_flops(lambda: sum(counted(grey[:1], targets[:1]).values()).backward())
    setting = f"{scale.det_size} px, batch {scale.det_batch}, {precision(device)}"
    rows = comparison(
        "B8 Faster R-CNN train step", setting, probe, items=len(grey), flops_per_item=flops,
        peak=peak, peer_name="torchvision references loop",
    )  # fmt: skip

    # B9 inference: ours as built by cxrkit (grey input) vs torchvision's model (RGB input)
    mine = _our_detector(scale).to(device).eval()
    ref = _reference_detector(scale).to(device).eval()
    on_device_grey = [im.to(device) for im in grey]
    on_device_rgb = [im.to(device) for im in rgb]

    def infer(model: nn.Module, images: list[torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), autocast(device):
                for _ in range(scale.k):
                    model(images)

        return run

    t = turns(
        {"ours": infer(mine, on_device_grey), "peer": infer(ref, on_device_rgb)},
        pairs=scale.pairs, warmup=1, sync=lambda: sync(device),
    )  # fmt: skip
    with torch.inference_mode():
        inference_flops = counted_flops(lambda: mine(on_device_grey[:1]))
    rows += comparison(
        "B9 Faster R-CNN inference", setting, t, items=len(grey) * scale.k,
        flops_per_item=inference_flops, peak=peak, peer_name="torchvision reference",
    )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict[str, Any]) -> str:
    env = report["B0"]
    lines = [
        "# cxrkit GPU suite",
        "",
        f"Device: {env.get('gpu', env['device'])} ({env.get('kind', 'cpu')}); torch "
        f"{env['torch']}, CUDA {env.get('cuda', '-')}, cuDNN {env.get('cudnn', '-')}; "
        f"{env['gemm']['dtype']} {env['gemm']['n']}^2 GEMM {env['gemm']['tflops']:.3g} TFLOP/s; "
        f"scale {report['scale']}; {report['seconds']:.0f} s.",
        "",
        "| part | setting | contender | items/s | vs peer | MFU | peak GiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(
            f"| {r['part']} | {r['setting']} | {r['contender']} | {r['per_s']:.1f} | "
            f"{r['ratio_vs_peer']:.2f}x | {mfu} | {mem} |"
        )
    lines.append("")
    if "B4" in report:
        b4 = report["B4"]
        split = ", ".join(
            f"{k} {v * 1000:.1f} ms ({b4['share'][k]:.0%})" for k, v in b4["median_s"].items()
        )
        lines.append(
            f"B4 Barlow Twins step split at batch {b4['batch']}: {split}; all-reduce: "
            f"{b4['all_reduce']}."
        )
    if "B5" in report:
        b5 = report["B5"]
        lines.append(
            f"B5 loader from the cache, {b5['workers']} workers, batch {b5['batch']}: "
            f"{b5['pairs_per_s_training']:.0f} pairs/s training, "
            f"{b5['pairs_per_s_loader_alone']:.0f} pairs/s loader alone "
            f"({b5['pairs_per_s_per_worker']:.0f} per worker), GPU idle "
            f"{b5['gpu_idle_share']:.0%}."
        )
    lines += [
        "",
        f"Every comparison: ours and the peer in turns, {report['pairs']} rounds of "
        f"{report['k']} steps, medians; 'vs peer' is the median per-round ratio of rates.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for suite.json / .md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="every part, tiny (CPU tests)")
    parser.add_argument("--parts", default="B0,B2,B3,B4,B5,B8", help="comma list (B8 includes B9)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    scale = TINY if args.tiny else PAPER
    parts = set(args.parts.split(","))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)  # a shared CPU: more threads spin against each other
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    peak = peak_flops(device)
    report: dict[str, Any] = {
        "scale": "tiny" if args.tiny else "paper",
        "settings": asdict(scale),
        "pairs": scale.pairs,
        "k": scale.k,
        "peak_flops": peak,
        "rows": [],
    }
    report["B0"] = environment(device, scale)

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    log(f"B0 {report['B0'].get('gpu', device)}: GEMM {report['B0']['gemm']['tflops']:.1f} TFLOP/s")
    if "B2" in parts:
        report["rows"] += part_b2(scale, device, peak)
        log("B2 done")
    if "B3" in parts:
        report["rows"] += part_b3(scale, device, peak)
        log("B3 done")
    if "B4" in parts:
        report["B4"] = part_b4(scale, device)
        log("B4 done")
    if "B5" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            report["B5"] = part_b5(scale, device, Path(tmp))
        log("B5 done")
    if "B8" in parts:
        report["rows"] += part_b8_b9(scale, device, peak)
        log("B8/B9 done")
    report["seconds"] = time.perf_counter() - start
    (args.out / "suite.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (args.out / "suite.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
