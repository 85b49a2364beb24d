"""Train the localizer as a config says, and load a trained one back.

A run directory::

    OUT/config.yaml                         the resolved configuration (fusion choice included)
    OUT/checkpoints/{last,best}.ckpt        Lightning checkpoints (best by val/mAP50)
    OUT/tensorboard/, OUT/metrics.json      each loss term, lr, val/mAP50, val/AP50/<class>
    OUT/detector.pt                         the best weights (cxrkit.io model file, kind "detector")
    OUT/predictions_<val split>.csv         the best model's validation detections, original pixels
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch import nn

from cxrkit import engine, io
from cxrkit.config import to_dict
from cxrkit.data import augmentation, datasets
from cxrkit.data.cache import Cache
from cxrkit.data.findings import check_labelled
from cxrkit.data.records import Record
from cxrkit.errors import CheckpointError, DataError
from cxrkit.finetune.config import AugmentConfig, FinetuneConfig, config_from_dict
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.model import build_detector, from_config
from cxrkit.finetune.module import MONITOR, DetectorModule
from cxrkit.finetune.predictor import Detector

log = logging.getLogger(__name__)
DETECTOR_FILE = "detector.pt"
KIND = "detector"
CHECKPOINT_PREFIX = "model."  # DetectorModule keeps the detector under this attribute


def detection_dataset(
    records: list[Record],
    *,
    cache: Cache,
    classes: list[str],
    size: int,
    augment: AugmentConfig | None = None,
) -> datasets.DetectionDataset:
    """The DetectionDataset of fused ``records``; ``augment`` (training) when given and enabled."""
    transform = None
    if augment is not None and augment.enabled:
        transform = augmentation.default_augment(
            kind="detection",
            size=size,
            strength=augment.strength,
            hflip=augment.hflip,
            transforms=augment.transforms,
        )
    return datasets.DetectionDataset(
        records=records, cache=cache, classes=classes, augment=transform
    )


def fit(config: FinetuneConfig, *, resume: str | Path | bool = "auto") -> engine.RunResult:
    """Train the detector; keep the best epoch by ``val/mAP50``; export ``detector.pt``.

    Resumes from ``OUT/checkpoints/last.ckpt`` when present (``resume="auto"``), from a given
    checkpoint path, or starts fresh (``False``). A resumed run does not read the initial-weights
    file (``model.weights``): the checkpoint holds every weight. The training order and every
    image's augmentation follow ``trainer.seed`` (with the epoch and position), so two runs with
    one seed train alike and a run resumed mid-epoch continues as the uninterrupted run would.

    Returns:
        ``artifacts["detector"]`` (``detector.pt``, the best weights) and, with a validation split,
        ``artifacts["predictions"]`` (its detections, original pixels) and
        ``metrics["val/mAP50"]``; ``checkpoint`` is ``best.ckpt``, else ``last.ckpt``.
    """
    config = dataclasses.replace(config, model=config.model.resolved())
    data = config.data
    run = engine.prepare_run(
        config,
        resume=resume,
        data=data,
        splits=(data.train_split, data.val_split),
        schedule_keys=engine.SCHEDULE_KEYS,
    )
    cache = run.cache
    assert cache is not None, "prepare_run opens the cache when given data"
    train_raw, val_raw = run.records[data.train_split], run.records[data.val_split]
    if not train_raw:
        raise DataError(f"{data.manifest}: no record in split {data.train_split!r} to train on")
    train_records = detection_records(
        train_raw, config=config, train=True, seed=config.trainer.seed
    )
    val_records = detection_records(val_raw, config=config, train=False)
    where = f"{data.manifest} (split {data.train_split!r})"
    check_labelled(train_records, config.classes, what="classes", where=where)
    log.info(
        "detector: %d training images (%d without boxes), %d validation images; fusion %s",
        len(train_records),
        sum(not r.boxes for r in train_records),
        len(val_records),
        config.fusion.method,
    )
    module = DetectorModule(
        model=build_detector(**from_config(config, read_weights=not run.resuming)),
        classes=config.classes,
        optim=config.optim,
        config=to_dict(config),
        val_records=val_records,
        cache=cache,
        log_images=config.log_images,
    )
    engine.apply_channels_last_and_compile(module.model, config.trainer)
    has_val = bool(val_records)
    size = data.preprocess.size
    train_loader = engine.build_loader(
        detection_dataset(
            train_records, cache=cache, classes=config.classes, size=size, augment=config.augment
        ),
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        train=True,
        seed=config.trainer.seed,  # data order and augmentation: exact resume (cxrkit.engine.fit)
    )
    val_loader = None
    if has_val:
        val_loader = engine.build_loader(
            detection_dataset(val_records, cache=cache, classes=config.classes, size=size),
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            train=False,
        )
    out = run.output_dir
    trainer = engine.build_trainer(
        config=config.trainer, output_dir=out, monitor=MONITOR if has_val else None, mode="max"
    )
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        output_dir=out,
        resume=run.checkpoint or False,
    )
    result = engine.RunResult(
        output_dir=out,
        checkpoint=engine.best_checkpoint(out),
        artifacts={"detector": out / DETECTOR_FILE},
    )
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) == MONITOR and callback.best_model_score is not None:
            result.metrics[MONITOR] = float(callback.best_model_score)
    if not trainer.is_global_zero:
        return result
    if result.checkpoint is not None:
        engine.load_checkpoint_weights(module, result.checkpoint)
    save(module.model, config, out / DETECTOR_FILE)
    if has_val:
        from cxrkit.eval.predictions import write_predictions
        from cxrkit.finetune.detections import predict

        frame = predict(
            module.model,
            records=val_records,
            cache=cache,
            classes=config.classes,
            batch_size=data.batch_size,
            device=engine.inference_device(config.trainer.accelerator),
            progress=config.trainer.progress_bar,
        )
        result.artifacts["predictions"] = write_predictions(
            frame, out / f"predictions_{data.val_split}.csv", kind="detection"
        )
    return result


def save(model: nn.Module, config: FinetuneConfig, path: Path) -> Path:
    """Write the detector file: :func:`cxrkit.io.save_model` of kind ``"detector"`` with the
    resolved config and the class table."""
    return io.save_model(
        path,
        kind=KIND,
        state_dict=model.state_dict(),
        config=to_dict(config),
        classes=list(config.classes),
    )


def load(path: str | Path) -> Detector:
    """Load a detector from ``detector.pt`` (or an older file without a format key) or a
    Lightning checkpoint (``.ckpt``) of this stage. The initial-weights file is not read.

    Returns:
        The :class:`~cxrkit.finetune.predictor.Detector`: ``.model`` in eval mode (CPU),
        ``.config``, ``.path``, ``.classes``, and ``.predict_images(paths)`` on image files.

    Raises:
        MissingFileError: no such file. CheckpointError: not a detector file or finetune
            checkpoint. DataError: its weights do not fit the model its configuration describes.
    """
    path = Path(path)
    hint = (
        f"train one with `cxrkit finetune --config ...` (it writes OUTPUT_DIR/{DETECTOR_FILE} and "
        "OUTPUT_DIR/checkpoints/best.ckpt)"
    )
    if path.suffix == ".ckpt":
        blob = io.load_torch(path, what="finetune checkpoint", hint=hint)
        if not isinstance(blob, dict) or "hyper_parameters" not in blob or "state_dict" not in blob:
            raise CheckpointError(f"{path}: not a Lightning checkpoint of `cxrkit finetune`")
        values = blob["hyper_parameters"].get("config")
        n = len(CHECKPOINT_PREFIX)
        state = {k[n:]: v for k, v in blob["state_dict"].items() if k.startswith(CHECKPOINT_PREFIX)}
    else:
        blob = io.load_model(path, kind=KIND, hint=hint)
        values, state = blob["config"], blob["state_dict"]
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: holds no finetune configuration")
    config = config_from_dict(values, where=str(path))
    model = build_detector(**from_config(config, read_weights=False))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:2])
        raise DataError(
            f"{path}: weights do not fit the detector its config describes: {first}"
        ) from exc
    return Detector(model=model.eval(), config=config, path=path)
