"""Train a multi-label experiment (KCR Model 1 / Model 2, Guendel); score a split for cxrkit eval.

A run directory::

    OUT/config.yaml                 the resolved configuration
    OUT/checkpoints/{last,best}.ckpt, OUT/tensorboard/, OUT/metrics.json   (cxrkit.engine)
    OUT/model.pt                    the exported model (cxrkit.io.save_model, kind "multitask")
    OUT/predictions_<split>.csv     image_id, finding, score (sigmoid), members for `cxrkit eval`
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrkit import engine, io
from cxrkit.config import TrainerConfig, to_dict
from cxrkit.data import augmentation, datasets
from cxrkit.data.cache import Cache
from cxrkit.data.findings import check_labelled
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import CheckpointError, DataError
from cxrkit.eval.predictions import MEMBERS
from cxrkit.multitask.config import SELECTIONS, MultiTaskConfig, config_from_dict
from cxrkit.multitask.dataset import MaskLayout, MultiTaskDataset, mask_layout
from cxrkit.multitask.model import MultiTaskModel, build_from_config
from cxrkit.multitask.module import MultiTaskModule
from cxrkit.multitask.predictor import Classifier

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"
MODEL_KIND = "multitask"


def build_dataset(
    *,
    config: MultiTaskConfig,
    records: Sequence[Record],
    cache: Cache,
    disease: str | None = None,
    train: bool = False,
    inference: bool = False,
    labelled: bool = True,
) -> MultiTaskDataset:
    """The multi-task dataset of ``records``: augmented when ``train`` and ``config.augment``;
    with ``inference`` no mask is read (predictions need only the image); ``labelled`` as in
    :class:`~cxrkit.data.datasets.ClassificationDataset`."""
    layout = mask_layout(config, disease=disease)
    if inference:
        layout = MaskLayout(names=[], organs=[], lesions=[], lung=None)
    findings = config.screening.diseases if config.task == "screening" else config.findings
    augment = None
    if train and config.augment:
        augment = augmentation.default_augment(
            kind="classification",
            size=config.data.preprocess.size,
            transforms=config.augment_transforms or None,
        )
    base = datasets.ClassificationDataset(
        records=records,
        cache=cache,
        findings=findings,
        masks=layout.names,
        augment=augment,
        labelled=labelled,
    )
    return MultiTaskDataset(
        base=base,
        records=records,
        disease_members=parse_finding(disease)[1] if disease is not None else None,
        lung_channel=layout.lung,
        min_overlap=config.location.min_overlap,
    )


def build_loader(
    dataset: MultiTaskDataset,
    *,
    batch_size: int,
    num_workers: int,
    train: bool,
    seed: int | None = None,
) -> DataLoader:
    """:func:`cxrkit.engine.build_loader`, without a ragged last batch when training; a training
    loader's order and augmentation come from ``seed`` (epoch and position), resumable mid-epoch."""
    return engine.build_loader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        train=train,
        drop_last=train and len(dataset) > batch_size,
        seed=seed,
    )


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
    """Long table ``image_id, finding, score, members`` from FloatTensor[N, F] scores.

    ``members`` names the labels a group finding was trained on (``Nodule|Mass``; empty for a
    plain finding), so that ``cxrkit eval classification`` scores it against the same label.
    """
    parsed = [parse_finding(f) for f in findings]
    names = [f.name for f in parsed]
    members = ["|".join(f.members) if f.is_group else "" for f in parsed]
    return pd.DataFrame(
        {
            "image_id": [i for i in ids for _ in names],
            "finding": names * len(ids),
            "score": probs.reshape(-1).double().numpy(),
            MEMBERS: members * len(ids),
        }
    )


def save_model(model: MultiTaskModel, config: MultiTaskConfig, path: Path, **extra: Any) -> Path:
    """Write the model file (:func:`cxrkit.io.save_model`, kind ``"multitask"``) atomically."""
    return io.save_model(
        path, kind=MODEL_KIND, state_dict=model.state_dict(), config=to_dict(config), **extra
    )


def load(path: str | Path) -> Classifier:
    """Read a model file written by :func:`save_model` (also those written before the ``format``
    key existed), with ``torch.load(weights_only=True)``.

    Returns:
        The :class:`~cxrkit.multitask.predictor.Classifier`: ``.model`` (weights loaded, eval
        mode), ``.config``, ``.extra`` (the whole file's dict), ``.findings``, and
        ``.predict_images(paths)`` on image files.

    Raises:
        MissingFileError: no such file. CheckpointError: not a cxrkit multitask model file, or
            weights that do not match the model its config describes.
    """
    blob = io.load_model(
        path,
        kind=MODEL_KIND,
        hint=f"train one with `cxrkit multitask --config ...` (it writes OUTPUT_DIR/{MODEL_FILE})",
    )
    config = config_from_dict(blob["config"])
    model = build_from_config(config, num_outputs=num_outputs(config), load_weights=False)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the model its config describes ({exc})"
        ) from None
    return Classifier(model=model.eval(), config=config, extra=blob, path=Path(path))


def num_outputs(config: MultiTaskConfig) -> int:
    """Classifier outputs: ``screening.classes`` for a screening member (3: normal / disease /
    other; 2: normal / disease), else one per finding."""
    return config.screening.classes if config.task == "screening" else len(config.findings)


def inference_loader(
    config: MultiTaskConfig, *, records: Sequence[Record], cache: Cache, labelled: bool = True
) -> DataLoader:
    """Images only (no masks), in record order, with the config's batch size and workers
    (``labelled`` as in :func:`build_dataset`)."""
    return build_loader(
        build_dataset(
            config=config, records=records, cache=cache, inference=True, labelled=labelled
        ),
        batch_size=config.data.batch_size,
        num_workers=config.data.num_workers,
        train=False,
    )


def predict(
    model: MultiTaskModel,
    config: MultiTaskConfig,
    *,
    records: Sequence[Record],
    cache: Cache,
    device: str = "auto",
) -> pd.DataFrame:
    """Score ``records``: ``image_id, finding, score`` (sigmoid) and ``members`` per finding.

    Args:
        model, config: as returned by :func:`load` (or ``fit``'s ``"model"`` artifact).
        records, cache: the images, read from a cache with the model's preprocessing recipe.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`cxrkit.engine.inference_device`).
    """
    loader = inference_loader(config, records=records, cache=cache)
    ids, logits = predict_logits(model, loader, device=engine.inference_device(device))
    return predictions_frame(ids, logits.sigmoid(), config.findings)


def write_split_predictions(
    model: MultiTaskModel,
    config: MultiTaskConfig,
    *,
    records: Sequence[Record],
    cache: Cache,
    path: Path,
    device: str = "auto",
) -> Path:
    """Score ``records`` (:func:`predict`) and write the predictions file ``path`` (checked first,
    so a bad path fails before the inference)."""
    from cxrkit.eval.predictions import check_output, write_predictions

    check_output(path)
    frame = predict(model, config, records=records, cache=cache, device=device)
    return write_predictions(frame, path, kind="classification")


def fit(config: MultiTaskConfig, *, resume: str | Path | bool = "auto") -> engine.RunResult:
    """Train the experiment ``config`` describes: a multi-label model, or with ``task=screening``
    the screening ensemble (:func:`cxrkit.multitask.screening.fit_ensemble`).

    Args:
        resume: ``"auto"`` continues from ``OUTPUT_DIR/checkpoints/last.ckpt`` when present, a path
            from that checkpoint, ``False`` starts fresh. A resumed run does not read
            ``encoder.weights``, and continues mid-epoch with the batches and augmentations of
            an uninterrupted run (both follow ``trainer.seed``, the epoch and the position).

    Returns:
        A multi-label run's artifacts ``"model"`` (``model.pt``, for :func:`load`) and, when
        ``predict_split`` has images, ``"predictions"``; a screening run's as in ``fit_ensemble``.
    """
    if config.task == "screening":
        from cxrkit.multitask.screening import fit_ensemble

        return fit_ensemble(config, resume=resume)
    return fit_multilabel(config, resume=resume)


HEADS_FILE = "heads.json"


def _report_heads(config: MultiTaskConfig, records: Sequence[Record], out: Path) -> dict[str, int]:
    """How many training images feed each head (records without masks or boxes train fewer
    heads): printed in the run summary and written to ``OUT/heads.json`` (rank 0)."""
    import json

    from lightning.pytorch.utilities import rank_zero_only

    from cxrkit.multitask.dataset import head_counts

    counts = head_counts(config, records)
    if rank_zero_only.rank == 0:
        io.atomic_write(out / HEADS_FILE, json.dumps(counts, indent=2) + "\n")
        parts = ", ".join(f"{name} {n}" for name, n in counts.items() if name != "images")
        print(f"training images per head ({counts['images']} images): {parts}", flush=True)
    return counts


def fit_multilabel(
    config: MultiTaskConfig, *, resume: str | Path | bool = "auto"
) -> engine.RunResult:
    """Train a multi-label model; write ``model.pt`` and the ``predict_split`` predictions."""
    if config.task != "multilabel":
        raise ValueError("fit_multilabel() trains task=multilabel; use screening.fit_ensemble")
    data = config.data
    splits = (data.train_split, data.val_split, config.predict_split)
    run = engine.prepare_run(config, resume=resume, data=data, splits=splits)
    out, cache = run.output_dir, run.cache
    train_records, val_records = run.records[data.train_split], run.records[data.val_split]
    if not train_records:
        raise DataError(f"{data.manifest}: no record in split {data.train_split!r} to train on")
    where = f"{data.manifest} (split {data.train_split!r})"
    check_labelled(train_records, config.findings, what="findings", where=where)
    has_val = bool(val_records)
    heads = _report_heads(config, train_records, out)
    monitor = config.selection if has_val else "train/loss_epoch"
    module = MultiTaskModule(config=config, monitor=monitor, load_weights=not run.resuming)
    trainer = train_stage(
        module=module,
        config=config,
        trainer_config=config.trainer,
        run=run,
        train_records=train_records,
        val_records=val_records,
        cache=cache,
    )
    result = engine.RunResult(output_dir=out, checkpoint=engine.best_checkpoint(out))
    result.metrics.update({f"heads/{name}": float(n) for name, n in heads.items()})
    if not trainer.is_global_zero:
        return result
    best = result.checkpoint if has_val else None
    if best is not None and best.name != engine.LAST_CHECKPOINT:
        engine.load_checkpoint_weights(module, best)
    findings = [parse_finding(f).name for f in config.findings]
    model_path = save_model(module.model, config, out / MODEL_FILE, findings=findings)
    result.artifacts["model"] = model_path
    split = config.predict_split
    records = run.records[split]
    if records:
        path = write_split_predictions(
            module.model,
            config,
            records=records,
            cache=cache,
            path=out / f"predictions_{split}.csv",
            device=config.trainer.accelerator,
        )
        result.artifacts["predictions"] = path
        log.info("wrote %s (%d images)", path, len(records))
    else:
        log.warning("no record in split %r: no predictions written", split)
    return result


def train_stage(
    *,
    module: MultiTaskModule,
    config: MultiTaskConfig,
    trainer_config: TrainerConfig,
    run: engine.Run,
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    cache: Cache,
    disease: str | None = None,
    max_epochs: int | None = None,
) -> L.Trainer:
    """Fit ``module`` on ``train_records`` in ``run.output_dir`` and return the trainer; shared by
    multi-label runs and screening stages.

    The trainer (``trainer_config``, ``max_epochs``) keeps the best checkpoint by
    ``config.selection`` when there are ``val_records`` to validate on; the run continues from
    ``run.checkpoint`` when set.
    """
    trainer = engine.build_trainer(
        config=trainer_config,
        output_dir=run.output_dir,
        monitor=config.selection if val_records else None,
        mode=SELECTIONS[config.selection],
        max_epochs=max_epochs,
    )
    engine.apply_channels_last_and_compile(module.model, config.trainer)
    loaders = [
        build_loader(
            build_dataset(
                config=config, records=records, cache=cache, disease=disease, train=train
            ),
            batch_size=config.data.batch_size,
            num_workers=config.data.num_workers,
            train=train,
            seed=trainer_config.seed,
        )
        if records
        else None
        for records, train in ((train_records, True), (val_records, False))
    ]
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=loaders[0],
        val_dataloaders=loaders[1],
        output_dir=trainer.default_root_dir,
        resume=run.checkpoint or False,
    )
    return trainer
