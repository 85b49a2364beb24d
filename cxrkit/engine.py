"""Lightning plumbing shared by every training stage: trainer, logging, checkpoints, resume.

Distribution is an environment, not a code path (STYLE.md rule 9): the same call runs on a laptop
CPU, one GPU, ``torchrun --nproc-per-node 8`` or ``srun`` across nodes; Lightning reads the
launcher's environment and only rank 0 writes files.

A run directory looks like::

    output_dir/config.yaml            the resolved configuration (save_run_config)
    output_dir/metrics.json           one JSON object per logging step (detectron2 style)
    output_dir/tensorboard/           TensorBoard event files
    output_dir/checkpoints/last.ckpt  every ``checkpoint_every_n_steps`` optimizer steps and at end
    output_dir/checkpoints/best.ckpt  the best checkpoint by ``monitor``, when a stage names one

Every stage starts with :func:`prepare_run` (seed, output directory, saved config, the checkpoint to
resume from, the cache, and each split's records read once from the manifest) and ends with a
:class:`RunResult`. One resume rule holds for all: when a checkpoint will be restored, the
initial-weights file (ImageNet, ``backbone.pth``) is not read; the checkpoint holds every weight,
and the file may no longer be on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from cxrkit import config as config_io
from cxrkit import io
from cxrkit.config import DataConfig, TrainerConfig
from cxrkit.errors import CheckpointError, ConfigError, MissingFileError, NonFiniteLossError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset, Sampler

    from cxrkit.data.cache import Cache
    from cxrkit.data.records import Record
    from cxrkit.data.sampling import ResumableSampler

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_NAME = "best"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


class JsonMetricsLogger(Logger):
    """Append one JSON object per logging step to ``output_dir/metrics.json`` (rank 0 only).

    Each line is ``{"step": int, "<metric>": float, ...}``; a resumed run appends to the same file,
    so a step may appear twice (the later line wins).
    """

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__()
        self._path = Path(output_dir) / METRICS_FILE

    @property
    def name(self) -> str:
        return "json"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # The resolved config lives in config.yaml and in every checkpoint; nothing to add here.
        return None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            row[key] = value.item() if isinstance(value, Tensor) else float(value)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class _FinalCheckpoint(Callback):
    """Write ``last.ckpt`` after the last training batch, unless the periodic checkpoint just did.

    It saves from ``on_train_batch_end`` of the final batch (``max_steps`` reached, or the last
    batch of the last epoch), the point Lightning resumes from exactly. Lightning's own end-of-run
    ``save_last`` happens in ``on_train_end``, after the loop closed the epoch, and a run resumed
    from it replays one batch; saving through the periodic callback here marks ``last.ckpt`` as
    written, so that late save is skipped.
    """

    def __init__(self, periodic: ModelCheckpoint) -> None:
        self._periodic = periodic

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1
        if not (
            last_step or (last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        ):
            return
        if getattr(self._periodic, "_last_global_step_saved", -1) == trainer.global_step:
            return
        # through the callback (not trainer.save_checkpoint) so that its bookkeeping knows
        self._periodic._save_last_checkpoint(trainer, self._periodic._monitor_candidates(trainer))


def _devices(value: str) -> str | int | list[int]:
    # TrainerConfig checked the form: "auto", a count ("4", "-1") or indices ("0,1")
    value = value.strip()
    if value == "auto":
        return value
    if "," not in value:
        return int(value)
    return [int(v) for v in value.split(",") if v.strip()]


def _num_nodes(configured: int) -> int:
    # torchrun and SLURM say how many nodes there are; Lightning needs to be told the same number.
    if configured != 1:
        return configured
    if "SLURM_NNODES" in os.environ and "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_NNODES"])
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if world and local and int(local) > 0:
        return max(1, int(world) // int(local))
    return configured


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


# Lightning's lines that say nothing about the run: hardware it does not use, advertisements,
# and the restatement of a default. The rest (the stop reason, Tensor Core and worker hints,
# every warning) stays.
_NOISE = re.compile(
    r"^(?:GPU|TPU|HPU|IPU) available: "
    r"|^💡 Tip: "
    r"|^`Trainer\(val_check_interval=1\.0\)` was configured so validation will run at the end"
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.search(record.getMessage())


def quiet_lightning() -> None:
    """Drop Lightning's banner and advertisement lines (idempotent); warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    # Lightning's own pytree helper trips torch's deprecation of LeafSpec on every step
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def lightning_warnings_only() -> None:
    """Lightning's INFO lines (devices, model summaries, tips) off for a driver that prints its
    own step lines (the demo, ``cxrkit reproduce``); warnings still show."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` through :func:`cxrkit.io.atomic_write`: a run killed while
    saving leaves the previous checkpoint, never a torn one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        io.atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class SnapshotCheckpointIO(AsyncCheckpointIO):
    """Lightning's ``AsyncCheckpointIO`` with its point-in-time copy made into kept buffers
    (``copy_``) instead of fresh clones.

    The copy is what training waits for at a checkpoint: at full Barlow Twins size (1.4 GB with
    the LARS state) cloning on a CPU allocates and page-faults 1.4 GB every time; copying into
    kept buffers does not (epoch gap 1.77 s with clones, 0.54 s into buffers already touched,
    benchmarks/pretrain_throughput.py --epoch-gap --gap-model resnet50 on the 2-core CPU). The
    buffers are made and touched once, by :meth:`warm` from a thread after the first training
    step (:class:`_WarmCheckpointBuffers`), so the first checkpoint does not pay for them either.
    A thread writes the buffers while training goes on; the next checkpoint first waits for that
    write, then overwrites them. The cost: one copy of the model's and optimizers' tensors stays
    allocated, where they live.

    Buffers are kept per kind of tensor (shape, strides, dtype, device): the i-th tensor of a
    kind in a checkpoint is copied into the i-th buffer of that kind.
    """

    def __init__(self, checkpoint_io: TorchCheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io)
        self._buffers: dict[tuple, list[torch.Tensor]] = {}
        self._pending: Any = None

    @staticmethod
    def _kind(tensor: torch.Tensor) -> tuple:
        return tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device

    def _buffer(self, tensor: torch.Tensor, used: dict[tuple, int]) -> torch.Tensor:
        kind = self._kind(tensor)
        index = used[kind] = used.get(kind, 0) + 1
        kept = self._buffers.setdefault(kind, [])
        if len(kept) < index:
            kept.append(torch.empty_like(tensor, memory_format=torch.preserve_format))
        return kept[index - 1]

    def _snapshot(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        used: dict[tuple, int] = {}
        return _map_tensors(checkpoint, lambda t: self._buffer(t, used).copy_(t.detach()))

    def warm(self, tensors: Sequence[torch.Tensor]) -> None:
        """Make and touch, from the writer's thread, a buffer for each of ``tensors`` (those a
        checkpoint will hold) that none is kept for yet; the next checkpoint waits for it."""
        self._ensure_setup()
        wanted: dict[tuple, torch.Tensor] = {}
        counts: dict[tuple, int] = {}
        for tensor in tensors:
            kind = self._kind(tensor)
            counts[kind] = counts.get(kind, 0) + 1
            wanted.setdefault(kind, tensor)
        previous = self._pending

        def make() -> None:
            if previous is not None:
                previous.result()  # a write in progress reads the kept buffers
            with torch.no_grad():
                for kind, count in counts.items():
                    kept = self._buffers.setdefault(kind, [])
                    while len(kept) < count:
                        buffer = torch.empty_like(wanted[kind], memory_format=torch.preserve_format)
                        kept.append(buffer.zero_())  # touched: its pages exist from now on

        self._pending = self._executor.submit(make)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        self._ensure_setup()
        if self._pending is not None:
            self._pending.result()  # the buffers are free once the previous write is done
        snapshot = self._snapshot(checkpoint)

        def write() -> None:
            try:
                self.checkpoint_io.save_checkpoint(snapshot, path, storage_options=storage_options)
            except BaseException as exc:  # raised on the next save or at teardown, as Lightning
                self._error = exc

        self._pending = self._executor.submit(write)
        if self._error:
            raise self._error


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in nested dicts, lists and tuples, in order
    (a named tuple is left as it is)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors a :class:`SnapshotCheckpointIO` snapshot of ``obj`` copies, in its order."""
    found: list[torch.Tensor] = []
    _map_tensors(obj, found.append)
    return found


class _WarmCheckpointBuffers(Callback):
    """After the first training step, when the optimizers hold their state, has the
    :class:`SnapshotCheckpointIO` make its buffers for the module's and optimizers' tensors from
    its thread, off the training thread and before the first checkpoint needs them."""

    def __init__(self) -> None:
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        io = trainer.strategy.checkpoint_io
        if self.done or not isinstance(io, SnapshotCheckpointIO):
            return
        self.done = True
        tensors = _tensors(pl_module.state_dict())
        for optimizer in trainer.optimizers:
            tensors += _tensors(optimizer.state_dict()["state"])
        io.warm(tensors)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``precision: auto`` as the machine allows: ``bf16-mixed`` when training runs on a CUDA GPU
    that supports bfloat16 (Ampere and later), else ``32-true``; any other value as given."""
    if precision != "auto":
        return precision
    if _uses_gpu(accelerator) and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_trainer(
    *,
    config: TrainerConfig,
    output_dir: Path,
    monitor: str | None = None,
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
    max_epochs: int | None = None,
) -> L.Trainer:
    """A Lightning Trainer writing TensorBoard, ``metrics.json`` and checkpoints in ``output_dir``.

    Args:
        config: devices, nodes, strategy, precision, steps, accumulation, logging and checkpoint
            cadence. ``sync_batchnorm`` applies only to DDP on GPUs (PyTorch's SyncBatchNorm has no
            CPU kernel).
        output_dir: the run directory (see the module docstring for its layout).
        monitor: a logged validation metric; when given, ``checkpoints/best.ckpt`` keeps the best.
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        callbacks: extra callbacks of the stage.
        max_epochs: overrides ``config.max_epochs`` when given.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    quiet_lightning()
    output_dir = Path(output_dir)
    ckpt_dir = output_dir / CHECKPOINT_DIR
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step}",
        save_top_k=0,  # only last.ckpt: a rolling, resumable checkpoint
        save_last=True,
        every_n_train_steps=max(1, config.checkpoint_every_n_steps),
        enable_version_counter=False,  # last.ckpt is overwritten, never last-v1.ckpt
    )
    all_callbacks: list[Callback] = [periodic, _FinalCheckpoint(periodic), _WarmCheckpointBuffers()]
    if monitor is not None:
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename=BEST_NAME,
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    if config.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1))
    all_callbacks.extend(callbacks)

    loggers: list[Logger] = [
        TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version="", sub_dir=None),
        JsonMetricsLogger(output_dir),
    ]
    val_check: int | float = config.val_check_interval
    if val_check > 1:
        val_check = int(val_check)  # a number of training batches, not a fraction of an epoch
    return L.Trainer(
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        num_nodes=_num_nodes(config.num_nodes),
        strategy=config.strategy,
        precision=resolve_precision(config.precision, config.accelerator),  # type: ignore[arg-type]
        max_epochs=config.max_epochs if max_epochs is None else max_epochs,
        max_steps=config.max_steps,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        sync_batchnorm=config.sync_batchnorm and _uses_gpu(config.accelerator),
        log_every_n_steps=config.log_every_n_steps,
        val_check_interval=val_check,
        deterministic=config.deterministic,
        benchmark=None if config.deterministic else True,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(output_dir),
        logger=loggers,
        callbacks=all_callbacks,
        # The checkpoint's tensors are copied into kept buffers where they live and a thread
        # writes the file (1.4 GB for Barlow Twins with its LARS state), so training goes on
        # meanwhile; Lightning waits for the write at teardown, also when the run fails.
        plugins=[SnapshotCheckpointIO(_AtomicCheckpointIO())],
    )


def resolve_resume(output_dir: Path, resume: str | Path | bool) -> str | None:
    """The checkpoint a run continues from: ``"auto"``/``True`` -> ``last.ckpt`` when present.

    ``False`` or ``None`` starts fresh; a path must exist (:class:`MissingFileError` otherwise).
    The checkpoint found is opened with ``weights_only=True`` before any work starts
    (:func:`check_checkpoint`), so a torn, empty or unsafe file is refused by name.
    """
    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        last = Path(output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not last.is_file():
            return None
        check_checkpoint(last)
        return str(last)
    path = Path(resume)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: checkpoint to resume from not found; give a .ckpt from a previous run's "
            f"{CHECKPOINT_DIR}/ folder, or omit --resume to resume from {CHECKPOINT_DIR}/"
            f"{LAST_CHECKPOINT} automatically"
        )
    check_checkpoint(path)
    return str(path)


def check_checkpoint(path: Path) -> dict[str, Any]:
    """Open a checkpoint the way the resume will (``torch.load(weights_only=True)``), memory-mapped
    so that no tensor data is read, and raise :class:`CheckpointError` if that fails.

    A run killed while writing can leave a torn or empty ``last.ckpt``; a planted file can hold a
    pickle that would run code. Both are refused here, naming the file and the way out, whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (an explicit ``weights_only=True`` wins over it).

    Returns:
        The checkpoint's dict; its tensors are memory-mapped and read only when used.
    """
    remedy = "delete it to start over, give another --resume PATH, or pass --resume never"
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a complete checkpoint (empty or torn, e.g. by a run killed while "
            f"saving); {remedy}"
        )
    try:
        blob = io.load_torch(path, what="checkpoint", hint=remedy, mmap=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {remedy}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict); {remedy}")
    return blob


def fit(
    *,
    trainer: L.Trainer,
    module: L.LightningModule,
    train_dataloaders: Any,
    val_dataloaders: Any = None,
    output_dir: Path,
    resume: str | Path | bool = "auto",
) -> None:
    """``trainer.fit`` with resume: ``"auto"`` continues from ``output_dir/checkpoints/last.ckpt``
    when it exists, a path continues from that checkpoint, ``False`` starts fresh.

    Exact resume: weights, optimizer, scheduler, loop counters and callback state come back from
    the checkpoint, and so does the data order: a training loader from :func:`build_loader`
    (a :class:`~cxrkit.data.sampling.ResumableSampler` over seeded items) gets a callback here
    that shards it over the trainer's ranks and keeps its position (epoch, batches done) in every
    checkpoint, so a resumed run continues mid-epoch with the batches and augmentations an
    uninterrupted run would have seen (pretraining keeps the same position in its data module).
    The checkpoint is loaded with ``weights_only=True``: unpickling an untrusted file must never
    run code.
    """
    _track_sampler(trainer, train_dataloaders)
    trainer.fit(
        module,
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        ckpt_path=resolve_resume(Path(output_dir), resume),
        weights_only=True,
    )


def save_run_config(config: Any, output_dir: Path) -> None:
    """Write the resolved ``config`` to ``output_dir/config.yaml`` (global rank 0 only)."""
    if rank_zero_only.rank == 0:
        config_io.save(config, Path(output_dir) / CONFIG_FILE)


def check_finite(losses: Mapping[str, Tensor], *, step: int, image_ids: Sequence[str]) -> None:
    """Raise :class:`NonFiniteLossError` when any loss term is NaN or infinite.

    Costs one device-to-host synchronisation per call (all terms are checked at once).

    Example message: ``non-finite loss 'loss_box_reg'=nan at step 17; batch images: a, b, c``.
    """
    if not losses:
        return
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return
    for name, value in losses.items():
        v = float(value.detach().float().reshape(()))
        if not torch.isfinite(torch.tensor(v)):
            ids = list(image_ids)
            shown = ", ".join(ids[:20]) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")
            raise NonFiniteLossError(
                f"non-finite loss {name!r}={v} at step {step}; batch images: {shown}"
            )


def apply_channels_last_and_compile(module: nn.Module, config: TrainerConfig) -> nn.Module:
    """Apply ``config.channels_last`` and ``config.compile`` to ``module`` in place; returns it.

    ``torch.compile`` is applied to each direct child that has parameters, with
    ``nn.Module.compile`` (in place), so state-dict keys and checkpoints keep their plain names
    (no ``_orig_mod.``) and a compiled run resumes into an uncompiled one and back.
    """
    if config.channels_last:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if config.compile:
        for child in module.children():
            if any(True for _ in child.parameters()):
                child.compile()
    return module


# --------------------------------------------------------------------------------------------------
# One run of a stage: set up once, read the data once, report one result


@dataclass
class Run:
    """What :func:`prepare_run` set up for a stage.

    ``records`` maps each requested split to its records (the manifest read once); ``checkpoint``
    is the checkpoint the run will restore (None for a fresh start).
    """

    output_dir: Path
    checkpoint: str | None
    cache: Cache | None = None
    records: dict[str, list[Record]] = field(default_factory=dict)

    @property
    def resuming(self) -> bool:
        """True when a checkpoint will be restored: do not read initial-weights files."""
        return self.checkpoint is not None


@dataclass
class RunResult:
    """What a stage's ``fit`` returns.

    ``checkpoint`` is the checkpoint the exported model came from (best by the stage's monitor,
    else last); ``artifacts`` names the files a user takes on (``"backbone"``, ``"detector"``,
    ``"model"``, ``"predictions"``, ...); ``metrics`` the run's headline numbers.
    """

    output_dir: Path
    checkpoint: Path | None
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_run(
    config: Any,
    *,
    resume: str | Path | bool = "auto",
    data: DataConfig | None = None,
    splits: Sequence[str] = (),
    seed: int | None = None,
    schedule_keys: Sequence[str] = (),
) -> Run:
    """Set up a stage's run: the one preamble every ``fit`` shares.

    In order: the output directory (``config.output_dir``) is checked; the checkpoint to resume
    from is resolved and opened safely (:func:`resolve_resume`); the RNGs are seeded
    (``config.trainer.seed`` unless ``seed``) so initialisation is reproducible; the resolved
    config is saved; and when ``data`` is given the manifest is read once, the cache opened (built
    on first use) and each split in ``splits`` kept.

    Args:
        schedule_keys: dotted config keys the stage's learning-rate schedule is built from (e.g.
            ``trainer.max_steps`` for a cosine schedule; a key ending in ``.`` covers a whole
            section). A resumed run whose saved config differs in one is refused
            (:func:`check_schedule_unchanged`).

    Raises:
        ConfigError, MissingFileError, CheckpointError, DataError: as the steps above.
    """
    import lightning as L

    out = io.check_output_dir(Path(config.output_dir))
    checkpoint = resolve_resume(out, resume)
    if checkpoint is not None and schedule_keys:
        check_schedule_unchanged(config, out, checkpoint=checkpoint, keys=schedule_keys)
    L.seed_everything(config.trainer.seed if seed is None else seed, workers=True)
    save_run_config(config, out)
    run = Run(output_dir=out, checkpoint=checkpoint)
    if data is not None:
        from cxrkit.data import loading

        run.cache, records = loading.open_records(data)
        run.records = {split: loading.in_split(records, split) for split in splits}
    return run


SCHEDULE_KEYS = ("trainer.max_steps", "trainer.max_epochs", "data.batch_size", "optim.")
"""What a warm-up + cosine schedule built from the run's length is built from (pretrain and
finetune): the length in steps (steps, epochs, batch) and the ``optim`` section's values."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def check_schedule_unchanged(
    config: Any, output_dir: Path, *, checkpoint: str, keys: Sequence[str]
) -> None:
    """Refuse to resume when a key the learning-rate schedule is built from has changed.

    The schedule's state comes back from the checkpoint as it was: a cosine built for 1,000 steps
    and resumed with ``trainer.max_steps=2000`` would train the extra 1,000 steps at the old
    schedule's floor, silently. The run's saved ``config.yaml`` says what it was built with; a
    run without one (older runs) is not checked.

    Raises:
        ConfigError: naming each changed key, its two values, and the two ways on.
    """
    import yaml

    saved_file = Path(output_dir) / CONFIG_FILE
    if not saved_file.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_file.read_text()) or {})
    wanted = _flatten(config_io.to_dict(config))
    changed = []
    for key in keys:
        names = [k for k in wanted if k.startswith(key)] if key.endswith(".") else [key]
        for name in names:
            if name in saved and name in wanted and saved[name] != wanted[name]:
                changed.append(f"{name} {saved[name]!r} -> {wanted[name]!r}")
    if changed:
        raise ConfigError(
            f"{output_dir}: cannot resume from {checkpoint} with {', '.join(changed)}: the "
            "learning-rate schedule was built for the old value and would continue as it was "
            "(at its floor once past the old end). To train longer, start a new output_dir from "
            "this run's weights (model.init=checkpoint model.weights=...), or pass --resume never "
            "to start over with the new value"
        )


def data_position(trainer: L.Trainer) -> tuple[int, int]:
    """Where a run's data order stands: ``(epoch, batches of it already trained on)``; the end of
    an epoch is the start of the next. Read when a checkpoint is written."""
    epoch = trainer.current_epoch
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:
        epoch, done = epoch + 1, 0
    return int(epoch), int(done)


def ignore_replay_warning() -> None:
    """Lightning warns that a mid-epoch resume replays the epoch unless the *loader* is stateful;
    a :class:`~cxrkit.data.sampling.ResumableSampler` starts where the checkpoint left off, so it
    does not."""
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")


class _SamplerPosition(Callback):
    """Shard a training loader's ``ResumableSampler`` over the trainer's ranks and keep its
    position in every checkpoint (see :func:`fit`).

    ``setup`` runs once the ranks exist and before the checkpoint is restored; the restore
    (:meth:`load_state_dict`) runs before Lightning creates the loader's first iterator, so the
    resumed epoch starts ``batches_done x batch_size`` items in.
    """

    def __init__(self, sampler: ResumableSampler, *, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self.sampler.shard(num_replicas=trainer.world_size, rank=trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is None:
            return {}
        epoch, done = data_position(self._trainer)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.sampler.epoch = int(state_dict["epoch"])
        self.sampler.skip = int(state_dict["batches_done"]) * self.batch_size
        ignore_replay_warning()


def _track_sampler(trainer: L.Trainer, loader: Any) -> None:
    from cxrkit.data.sampling import ResumableSampler

    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, ResumableSampler):
        return
    for callback in trainer.callbacks:
        if isinstance(callback, _SamplerPosition):
            if callback.sampler is not sampler:
                raise ValueError("this trainer already tracks another training loader's sampler")
            return
    trainer.callbacks.append(_SamplerPosition(sampler, batch_size=loader.batch_size))


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    train: bool,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    seed: int | None = None,
) -> DataLoader:
    """The DataLoader every stage uses: cxrkit's ``collate``, worker processes kept alive, pinned
    memory on a GPU machine.

    The order: a given ``sampler`` decides it (its keys index ``dataset``); else a training
    loader is shuffled by a :class:`~cxrkit.data.sampling.ResumableSampler` of ``seed`` over
    :class:`~cxrkit.data.sampling.SeededItems` of ``dataset`` (the permutation and every item's
    augmentation depend only on seed, epoch and position, not on workers, ranks or restarts;
    :func:`fit` shards it under DDP and resumes it mid-epoch); else the dataset's order.

    Args:
        seed: the run's seed (order, augmentation, worker seeds); default torch's initial seed
            (what :func:`prepare_run` seeded).
    """
    from torch.utils.data import DataLoader

    from cxrkit.data.datasets import collate
    from cxrkit.data.sampling import ResumableSampler, SeededItems

    seed = (torch.initial_seed() if seed is None else seed) % 2**63
    if train and sampler is None:
        sampler = ResumableSampler(dataset, seed=seed)
        dataset = SeededItems(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        # Each iterator draws its workers' base seed from this generator, not from torch's global
        # RNG, which the model's steps use (Faster R-CNN samples proposals with it): a resumed
        # run creates one iterator more than an uninterrupted one, and must not shift that RNG.
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )


def inference_device(accelerator: str) -> torch.device:
    """The device for inference: ``"auto"`` (or a trainer accelerator such as ``"gpu"``) is CUDA
    when available; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are taken as given.

    Raises:
        ConfigError: anything else, or CUDA asked for on a machine without it.
    """
    text = accelerator.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text in ("auto", "gpu"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {accelerator!r}: no CUDA device on this machine; use cpu")
        return torch.device(text)
    raise ConfigError(f"device {accelerator!r} is not auto, cpu, cuda or cuda:N")


def best_checkpoint(output_dir: Path) -> Path | None:
    """``checkpoints/best.ckpt`` when the run kept one, else ``last.ckpt``, else None."""
    ckpts = Path(output_dir) / CHECKPOINT_DIR
    for name in (f"{BEST_NAME}.ckpt", LAST_CHECKPOINT):
        if (ckpts / name).is_file():
            return ckpts / name
    return None


def load_checkpoint_weights(module: nn.Module, path: Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` (strict, ``weights_only``).

    The checked, memory-mapped load is the only read: ``load_state_dict`` copies the tensors.
    """
    module.load_state_dict(check_checkpoint(Path(path))["state_dict"], strict=True)
