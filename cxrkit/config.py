"""Typed configuration: dataclass defaults are the truth; YAML files and ``key=value`` override.

Every stage defines one top-level dataclass (for example ``cxrkit.pretrain.config.PretrainConfig``)
built from the shared pieces here. :func:`load` merges, in order, the dataclass defaults, each YAML
file, and dotted ``key=value`` overrides (``trainer.max_steps=10 data.size=128``). An unknown key, a
value of the wrong type, or a value a ``__post_init__`` rejects fails here, naming the key, before
any work starts. :func:`save` writes the resolved configuration beside every output.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cxrkit.errors import ConfigError, MissingFileError
from cxrkit.io import atomic_write

T = TypeVar("T")


@dataclass
class PreprocessConfig:
    """The preprocessing recipe (ARCHITECTURE.md, "Preprocessing"); each step is a switch."""

    clip_percentiles: bool = True
    clip_low: float = 0.5  # percentile
    clip_high: float = 99.5  # percentile
    apply_voi_lut: bool = True  # DICOM window / VOI LUT when the header has one
    pad_square: bool = True
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    size: int = 1024  # output side in pixels; training caches use 224 / 256 / 512

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < self.clip_high <= 100:
            raise ValueError(
                f"clip_low/clip_high must satisfy 0 <= low < high <= 100, got "
                f"{self.clip_low}/{self.clip_high}"
            )
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if self.clahe_clip_limit <= 0 or self.clahe_tile_grid < 1:
            raise ValueError("clahe_clip_limit must be > 0 and clahe_tile_grid >= 1")


@dataclass
class DataConfig:
    """Where a training stage reads its images: a manifest and a cache (built on first use)."""

    manifest: str = ""  # Parquet manifest from `cxrkit prepare`
    # where the manifest's images are now: its relative paths are joined to this folder instead of
    # the root it records (cxrkit's option, for a manifest moved with its data); "" = recorded root
    root: str = ""
    cache: str = ""  # cache directory; built from the manifest with `preprocess` if missing
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 32  # per device
    # loader worker processes per training process, or "auto": :func:`auto_workers` (resolved
    # when the config is loaded; the saved config.yaml records the number used)
    num_workers: int | str = 4
    on_error: str = "fail"  # fail | skip, for building the cache

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if isinstance(self.num_workers, str):
            text = self.num_workers.strip().lower()
            if text == "auto":
                self.num_workers = auto_workers()
            elif text.isdigit():
                self.num_workers = int(text)
            else:
                raise ValueError(
                    f"data.num_workers must be a number or 'auto', got {self.num_workers!r}"
                )
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("data.batch_size must be >= 1 and data.num_workers >= 0")


AUTO_WORKERS_CAP = 16
"""The most loader workers ``num_workers: auto`` starts (cxrkit's choice: beyond this a single
training process rarely gains, and each worker holds a copy of the dataset's state)."""


def auto_workers() -> int:
    """``num_workers: auto``: the CPU cores this process may use, less one for the training
    process itself, capped at :data:`AUTO_WORKERS_CAP` and divided among the GPUs of a multi-GPU
    node (``LOCAL_WORLD_SIZE`` / ``SLURM_NTASKS_PER_NODE`` when a launcher sets them)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    ranks = 1
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            ranks = int(value)
            break
    return max(0, min(AUTO_WORKERS_CAP, cores // ranks - 1))


@dataclass
class TrainerConfig:
    """Lightning Trainer settings shared by every training stage."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: str = "auto"  # "auto", a count ("4") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | ...
    # 32-true | bf16-mixed | 16-mixed | bf16-true, or auto: bf16-mixed on a GPU that supports
    # bfloat16, else 32-true (resolved when the trainer is built: see resolve_precision)
    precision: str = "32-true"
    max_epochs: int = 1
    max_steps: int = -1  # -1: bounded by max_epochs
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    sync_batchnorm: bool = True  # under DDP only
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 500
    val_check_interval: float = 1.0
    seed: int = 0
    deterministic: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"):
            raise ValueError(f"precision {self.precision!r} is not supported")
        if self.accumulate_grad_batches < 1 or self.num_nodes < 1:
            raise ValueError("accumulate_grad_batches and num_nodes must be >= 1")
        devices = self.devices.strip()
        if not (devices == "auto" or re.fullmatch(r"-1|\d+|\d+(\s*,\s*\d+)*\s*,?", devices)):
            raise ValueError(
                f"trainer.devices must be 'auto', a count ('4', -1 for all) or a list of device "
                f"indices ('0,1'), got {self.devices!r}"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"trainer.max_steps must be -1 (bounded by max_epochs) or >= 1, got "
                f"{self.max_steps}: a run of 0 steps trains nothing"
            )
        if self.max_epochs == 0 or self.max_epochs < -1:
            raise ValueError(f"trainer.max_epochs must be -1 or >= 1, got {self.max_epochs}")


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    return f"key {key!r}: {msg}" if key else msg


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix[:-1]]
    return [k for key, value in node.items() for k in _flat_keys(value, f"{prefix}{key}.")]


def _check_renamed(schema: type, origin: str, layer: Any) -> None:
    # A schema may name keys it replaced (``RENAMED: ClassVar[dict[str, str]]``, old dotted key ->
    # what to write instead), so that an old config fails saying the new keys, not only the old.
    renamed: dict[str, str] = getattr(schema, "RENAMED", {})
    for key in _flat_keys(OmegaConf.to_container(layer)):
        if key in renamed:
            raise ConfigError(f"{origin}: key {key!r} was replaced: {renamed[key]}")


def load(
    schema: type[T],
    *,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> T:
    """Build a ``schema`` instance from defaults, YAML ``files`` and ``key=value`` ``overrides``.

    Raises :class:`ConfigError` naming the offending key or file.
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    layers = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise MissingFileError(f"{path}: config file not found")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        layers.append((str(path), OmegaConf.create(content)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, value = item.partition("=")
        try:
            layers.append(
                (f"override {item!r}", OmegaConf.from_dotlist([f"{key.strip()}={value}"]))
            )
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {_describe(exc)}") from exc
    merged = base
    for origin, layer in layers:
        _check_renamed(schema, origin, layer)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{origin}: {_describe(exc)}") from exc
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for checkpoints and hparams)."""
    return dataclasses.asdict(config)


def save(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; :func:`load` of that file gives it back."""
    return atomic_write(path, yaml.safe_dump(to_dict(config), sort_keys=False))
