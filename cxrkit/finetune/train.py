"""Train the localizer as a config says, and load a trained one back.

A run directory::

    OUT/config.yaml                         the resolved configuration (fusion choice included)
    OUT/checkpoints/{last,best}.ckpt        Lightning checkpoints (best by val/mAP50)
    OUT/tensorboard/, OUT/metrics.json      each loss term, lr, val/mAP50, val/AP50/<class>
    OUT/detector.pt                         the best weights: {"state_dict", "config", "classes"}
    OUT/predictions_<val split>.csv         the best model's validation detections, original pixels
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrkit import engine
from cxrkit.config import to_dict
from cxrkit.data import augmentation, datasets, loading
from cxrkit.data.cache import Cache
from cxrkit.data.records import Record
from cxrkit.errors import DataError, MissingFileError
from cxrkit.finetune.config import FinetuneConfig, config_from_dict
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.module import MONITOR, DetectorModule, detector_from_config

log = logging.getLogger(__name__)
DETECTOR_FILE = "detector.pt"


@dataclass
class RunResult:
    """Where a finished run put its outputs."""

    output_dir: Path
    detector: Path  # OUT/detector.pt
    checkpoint: Path | None  # best.ckpt (or last.ckpt without validation)
    predictions: Path | None  # validation detections of the best model, original pixels
    val_map50: float | None  # the best model's val/mAP50


def build_loader(
    dataset: torch.utils.data.Dataset, *, config: FinetuneConfig, train: bool
) -> DataLoader:
    """A DataLoader with the shared ``collate``; shuffled for training."""
    workers = config.data.num_workers
    return DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        shuffle=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=datasets.collate,
        pin_memory=torch.cuda.is_available(),
    )


def detection_dataset(
    records: list[Record], *, config: FinetuneConfig, cache: Cache, train: bool
) -> datasets.DetectionDataset:
    """The DetectionDataset of fused ``records`` (augmented when training and enabled)."""
    augment = None
    if train and config.augment.enabled:
        augment = augmentation.default_augment(
            kind="detection",
            size=config.data.preprocess.size,
            strength=config.augment.strength,
            hflip=config.augment.hflip,
        )
    return datasets.DetectionDataset(
        records=records, cache=cache, classes=config.classes, augment=augment
    )


def fit(config: FinetuneConfig, *, resume: str | bool = "auto") -> RunResult:
    """Train the detector; keep the best epoch by ``val/mAP50``; export ``detector.pt``.

    Resumes from ``OUT/checkpoints/last.ckpt`` when present (``resume="auto"``), from a given
    checkpoint path, or starts fresh (``False``).
    """
    import lightning as L

    config = dataclasses.replace(config, model=config.model.resolved())
    out = Path(config.output_dir)
    L.seed_everything(config.trainer.seed, workers=True)
    engine.save_run_config(config, out)
    cache = loading.open_cache(config.data)
    train_raw = loading.load_records(config.data, split=config.data.train_split, cache=cache)
    val_raw = loading.load_records(config.data, split=config.data.val_split, cache=cache)
    if not train_raw:
        raise DataError(
            f"{config.data.manifest}: no record in split {config.data.train_split!r} to train on"
        )
    train_records = detection_records(
        train_raw, config=config, train=True, seed=config.trainer.seed
    )
    val_records = detection_records(val_raw, config=config, train=False)
    log.info(
        "detector: %d training images (%d without boxes), %d validation images; fusion %s",
        len(train_records),
        sum(not r.boxes for r in train_records),
        len(val_records),
        config.fusion.method,
    )
    module = DetectorModule(config=config, val_records=val_records, cache=cache)
    engine.apply_channels_last_and_compile(module.model, config.trainer)
    has_val = bool(val_records)
    train_loader = build_loader(
        detection_dataset(train_records, config=config, cache=cache, train=True),
        config=config,
        train=True,
    )
    val_loader = (
        build_loader(
            detection_dataset(val_records, config=config, cache=cache, train=False),
            config=config,
            train=False,
        )
        if has_val
        else None
    )
    trainer = engine.build_trainer(
        config=config.trainer, output_dir=out, monitor=MONITOR if has_val else None, mode="max"
    )
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        output_dir=out,
        resume=resume,
    )
    ckpt_dir = out / engine.CHECKPOINT_DIR
    best = ckpt_dir / f"{engine.BEST_NAME}.ckpt"
    checkpoint = best if has_val and best.is_file() else ckpt_dir / engine.LAST_CHECKPOINT
    val_map50 = None
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) == MONITOR and callback.best_model_score is not None:
            val_map50 = float(callback.best_model_score)
    result = RunResult(
        output_dir=out,
        detector=out / DETECTOR_FILE,
        checkpoint=checkpoint if checkpoint.is_file() else None,
        predictions=None,
        val_map50=val_map50,
    )
    if not trainer.is_global_zero:
        return result
    if result.checkpoint is not None:
        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"], strict=True)
    save_detector(module.model, config, result.detector)
    if has_val:
        from cxrkit.eval.predictions import write_predictions
        from cxrkit.finetune.predict import predict

        frame = predict(
            module.model,
            records=val_records,
            cache=cache,
            classes=config.classes,
            batch_size=config.data.batch_size,
            device=inference_device(config),
            progress=config.trainer.progress_bar,
        )
        result.predictions = write_predictions(
            frame, out / f"predictions_{config.data.val_split}.csv", kind="detection"
        )
    return result


def inference_device(config: FinetuneConfig) -> torch.device:
    """CUDA when available and not disabled by ``trainer.accelerator=cpu``."""
    use_gpu = torch.cuda.is_available() and config.trainer.accelerator != "cpu"
    return torch.device("cuda" if use_gpu else "cpu")


def save_detector(model: nn.Module, config: FinetuneConfig, path: Path) -> Path:
    """Write ``{"state_dict", "config", "classes"}`` atomically (``weights_only=True`` loads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": to_dict(config), "classes": config.classes}, tmp)
    os.replace(tmp, path)
    return path


def load_detector(path: str | Path) -> tuple[nn.Module, FinetuneConfig]:
    """Load a detector from ``detector.pt`` or a Lightning checkpoint of this stage.

    Returns:
        The model in eval mode (CPU) and its configuration.

    Raises:
        MissingFileError: no such file. DataError: not a detector of this stage, or its weights do
            not fit the model its configuration describes.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: detector not found; train one with `cxrkit finetune --config ...` (it writes "
            f"OUTPUT_DIR/{DETECTOR_FILE} and OUTPUT_DIR/checkpoints/best.ckpt)"
        )
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not our file"
        raise DataError(f"{path}: not a readable detector file ({exc})") from exc
    if isinstance(blob, dict) and "hyper_parameters" in blob and "state_dict" in blob:
        values = blob["hyper_parameters"].get("config")
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
    elif isinstance(blob, dict) and "config" in blob and "state_dict" in blob:
        values, state = blob["config"], blob["state_dict"]
    else:
        raise DataError(
            f"{path}: not a cxrkit detector (expected {DETECTOR_FILE} or a finetune checkpoint)"
        )
    if not isinstance(values, dict):
        raise DataError(f"{path}: holds no finetune configuration")
    config = config_from_dict(values, where=str(path))
    model = detector_from_config(config, load_weights=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:2])
        raise DataError(
            f"{path}: weights do not fit the detector its config describes: {first}"
        ) from exc
    return model.eval(), config
