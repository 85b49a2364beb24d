"""Train a multi-label experiment (KCR Model 1 / Model 2, Guendel); score a split for cxrkit eval.

A run directory::

    OUT/config.yaml                 the resolved configuration
    OUT/checkpoints/{last,best}.ckpt, OUT/tensorboard/, OUT/metrics.json   (cxrkit.engine)
    OUT/model.pt                    the exported model: {"state_dict", "config", "findings"}
    OUT/predictions_<split>.csv     image_id, finding, score (sigmoid) for `cxrkit eval`
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrkit import engine
from cxrkit.config import to_dict
from cxrkit.data import augmentation, datasets, loading
from cxrkit.data.cache import Cache
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import DataError, MissingFileError
from cxrkit.multitask.config import MultiTaskConfig, config_from_dict
from cxrkit.multitask.dataset import MaskLayout, MultiTaskDataset, mask_layout
from cxrkit.multitask.model import MultiTaskModel, build_from_config
from cxrkit.multitask.module import MultiTaskModule

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"


def build_dataset(
    *,
    config: MultiTaskConfig,
    records: Sequence[Record],
    cache: Cache,
    disease: str | None = None,
    train: bool = False,
    inference: bool = False,
) -> MultiTaskDataset:
    """The multi-task dataset of ``records``: augmented when ``train`` and ``config.augment``;
    with ``inference`` no mask is read (predictions need only the image)."""
    layout = mask_layout(config, disease=disease)
    if inference:
        layout = MaskLayout(names=[], organs=[], lesions=[], lung=None)
    findings = config.screening.diseases if config.task == "screening" else config.findings
    augment = None
    if train and config.augment:
        augment = augmentation.default_augment(
            kind="classification", size=config.data.preprocess.size
        )
    base = datasets.ClassificationDataset(
        records=records, cache=cache, findings=findings, masks=layout.names, augment=augment
    )
    return MultiTaskDataset(
        base=base,
        records=records,
        disease_members=parse_finding(disease)[1] if disease is not None else None,
        lung_channel=layout.lung,
        min_overlap=config.location.min_overlap,
    )


def build_loader(dataset: MultiTaskDataset, *, config: MultiTaskConfig, train: bool) -> DataLoader:
    """A DataLoader with the shared ``collate``; shuffled without a ragged last batch to train."""
    workers = config.data.num_workers
    return DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > config.data.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=datasets.collate,
        pin_memory=torch.cuda.is_available(),
    )


def inference_device(config: MultiTaskConfig) -> torch.device:
    """CUDA when available and not disabled by ``trainer.accelerator=cpu``."""
    use_gpu = torch.cuda.is_available() and config.trainer.accelerator != "cpu"
    return torch.device("cuda" if use_gpu else "cpu")


@torch.no_grad()
def predict_logits(
    model: MultiTaskModel, loader: DataLoader, *, device: torch.device
) -> tuple[list[str], torch.Tensor]:
    """Image ids and the classification logits FloatTensor[N, outputs] (CPU), in loader order."""
    model.eval().to(device)
    ids: list[str] = []
    chunks = []
    for batch in loader:
        out = model(batch["image"].to(device, non_blocking=True), reconstruct=False)
        chunks.append(out["logits"].float().cpu())
        ids.extend(batch["image_id"])
    if not chunks:
        return ids, torch.zeros(0, 0)
    return ids, torch.cat(chunks)


def predictions_frame(
    ids: Sequence[str], probs: torch.Tensor, findings: Sequence[str]
) -> pd.DataFrame:
    """Long table ``image_id, finding, score`` from FloatTensor[N, F] scores."""
    names = [parse_finding(f)[0] for f in findings]
    return pd.DataFrame(
        {
            "image_id": [i for i in ids for _ in names],
            "finding": names * len(ids),
            "score": probs.reshape(-1).double().numpy(),
        }
    )


def save_model(model: MultiTaskModel, config: MultiTaskConfig, path: Path, **extra: Any) -> Path:
    """Write ``{"state_dict", "config", **extra}`` atomically; loads with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": to_dict(config), **extra}, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | Path) -> tuple[MultiTaskModel, MultiTaskConfig, dict[str, Any]]:
    """Read a file written by :func:`save_model` (``torch.load(weights_only=True)``).

    Returns:
        The model (weights loaded, eval mode), its config and the whole file's dict.

    Raises:
        MissingFileError: no such file. DataError: not a cxrkit multitask model file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: model file not found; train one with `cxrkit multitask --config ...` "
            f"(it writes OUTPUT_DIR/{MODEL_FILE})"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not our file"
        raise DataError(f"{path}: not a readable model file ({exc})") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise DataError(f"{path}: not a cxrkit multitask model (needs 'state_dict' and 'config')")
    config = config_from_dict(blob["config"])
    outputs = 3 if config.task == "screening" else len(config.findings)
    model = build_from_config(config, num_outputs=outputs, load_weights=False)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise DataError(
            f"{path}: weights do not match the model its config describes ({exc})"
        ) from exc
    return model.eval(), config, blob


def _best_or_last(output_dir: Path) -> Path | None:
    ckpts = output_dir / engine.CHECKPOINT_DIR
    for name in (f"{engine.BEST_NAME}.ckpt", engine.LAST_CHECKPOINT):
        if (ckpts / name).is_file():
            return ckpts / name
    return None


def load_checkpoint_weights(module: MultiTaskModule, path: Path) -> None:
    """Load a Lightning checkpoint's weights into ``module`` (``weights_only=True``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(blob["state_dict"], strict=True)


def write_split_predictions(
    model: MultiTaskModel,
    config: MultiTaskConfig,
    *,
    records: Sequence[Record],
    cache: Cache,
    path: Path,
) -> Path:
    """Score ``records`` and write ``image_id, finding, score`` (sigmoid) to ``path``."""
    from cxrkit.eval.predictions import write_predictions

    loader = build_loader(
        build_dataset(config=config, records=records, cache=cache, inference=True),
        config=config,
        train=False,
    )
    ids, logits = predict_logits(model, loader, device=inference_device(config))
    frame = predictions_frame(ids, logits.sigmoid(), config.findings)
    return write_predictions(frame, path, kind="classification")


def fit(config: MultiTaskConfig) -> Path:
    """Train a multi-label model as ``config`` says; write ``model.pt`` and the split's predictions.

    Resumes from ``OUTPUT_DIR/checkpoints/last.ckpt`` when present. Returns the output directory.
    """
    if config.task != "multilabel":
        raise ValueError("fit() trains task=multilabel; use screening.train_ensemble")
    out = Path(config.output_dir)
    L.seed_everything(config.trainer.seed, workers=True)
    engine.save_run_config(config, out)
    cache = loading.open_cache(config.data)
    train_records = loading.load_records(config.data, split=config.data.train_split, cache=cache)
    val_records = loading.load_records(config.data, split=config.data.val_split, cache=cache)
    if not train_records:
        raise DataError(
            f"{config.data.manifest}: no record in split {config.data.train_split!r} to train on"
        )
    has_val = bool(val_records)
    monitor = "val/loss" if has_val else "train/loss_epoch"
    module = MultiTaskModule(config=config, monitor=monitor)
    engine.apply_channels_last_and_compile(module.model, config.trainer)
    train_loader = build_loader(
        build_dataset(config=config, records=train_records, cache=cache, train=True),
        config=config,
        train=True,
    )
    val_loader = (
        build_loader(
            build_dataset(config=config, records=val_records, cache=cache),
            config=config,
            train=False,
        )
        if has_val
        else None
    )
    trainer = engine.build_trainer(
        config=config.trainer, output_dir=out, monitor="val/loss" if has_val else None, mode="min"
    )
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        output_dir=out,
    )
    if not trainer.is_global_zero:
        return out
    best = _best_or_last(out) if has_val else None
    if best is not None and best.name != engine.LAST_CHECKPOINT:
        load_checkpoint_weights(module, best)
    findings = [parse_finding(f)[0] for f in config.findings]
    save_model(module.model, config, out / MODEL_FILE, findings=findings)
    split = config.predict_split
    records = loading.load_records(config.data, split=split, cache=cache)
    if records:
        path = write_split_predictions(
            module.model,
            config,
            records=records,
            cache=cache,
            path=out / f"predictions_{split}.csv",
        )
        log.info("wrote %s (%d images)", path, len(records))
    else:
        log.warning("no record in split %r: no predictions written", split)
    return out
