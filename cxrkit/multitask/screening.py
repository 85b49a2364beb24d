"""The thesis' screening protocol: train per-disease members in two stages, then fit the SVM.

Each member (:mod:`cxrkit.multitask.ensemble`) is a 3-class model (normal / its disease / another
disease) with the dilated-lesion reconstruction decoder, trained in two stages:

1. ``hard``: images with lesion masks (plus normal images, whose lesion mask is known empty),
   classification + lambda x reconstruction;
2. ``weak``: images without masks (``screening.weak_records``), decoder frozen, reconstruction off.

The SVM over all members' logits is then fitted on ``screening.svm_split``
(:func:`cxrkit.multitask.ensemble.fit_svm`). The ensemble directory::

    OUT/members/<disease>/{hard,weak}/   Lightning runs of each stage (each resumable)
    OUT/members/<disease>/member.pt      exported weights + config (cxrkit.io model file)
    OUT/svm.skops, OUT/ensemble.json     the trained ensemble (cxrkit.multitask.ensemble)
    OUT/risk_groups.yaml                 the config's risk groups for `cxrkit eval screening`
    OUT/predictions_<split>.csv          image_id, score (SVM decision value)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from cxrkit import engine, io
from cxrkit.data.cache import Cache
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError
from cxrkit.multitask import targets
from cxrkit.multitask.config import MultiTaskConfig, StageConfig
from cxrkit.multitask.dataset import lesion_members
from cxrkit.multitask.ensemble import Ensemble, fit_svm
from cxrkit.multitask.module import MultiTaskModule
from cxrkit.multitask.train import load, save_model, train_stage

log = logging.getLogger(__name__)

MEMBER_FILE = "member.pt"
RISK_GROUPS_FILE = "risk_groups.yaml"


def member_slug(disease: str) -> str:
    """Folder name of a member: ``"Nodule/Mass=Nodule|Mass"`` -> ``"Nodule_Mass"``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", parse_finding(disease).name).strip("_") or "disease"


def stage_records(
    records: Sequence[Record], *, config: MultiTaskConfig
) -> tuple[list[Record], list[Record]]:
    """Split training records into the hard-label stage (lesion masks, or normal) and the weak one.

    An image is in the hard stage when it has a mask of any screening disease, or (with
    ``reconstruction.empty_when_negative``) when it is labelled normal. The weak stage takes the
    images without lesion masks (``weak_records=without_masks``) or all (``all``).
    """
    names = {m for d in config.screening.diseases for m in parse_finding(d)[1]}
    hard, weak = [], []
    for r in records:
        has_mask = any(n in r.mask_paths for n in names)
        is_normal = targets.is_abnormal(r) == 0
        if has_mask or (is_normal and config.reconstruction.empty_when_negative):
            hard.append(r)
        if not has_mask or config.screening.weak_records == "all":
            weak.append(r)
    return hard, weak


def risk_groups(config: MultiTaskConfig) -> dict[str, list[str]]:
    """``{group: [label spellings]}`` for ``cxrkit eval screening``.

    Each disease of a group comes with all its member spellings (records carry the source's own
    names); without ``screening.risk_groups`` it is eval's default table.
    """
    from cxrkit.eval.screening import DEFAULT_RISK_GROUPS

    groups = config.screening.groups()
    if not groups:
        return {g: list(fs) for g, fs in DEFAULT_RISK_GROUPS.items()}
    spellings = {parse_finding(d)[0]: parse_finding(d)[1] for d in config.screening.diseases}
    out: dict[str, list[str]] = {}
    for group, names in groups.items():
        out[group] = []
        for spelling in (s for name in names for s in [name, *spellings[name]]):
            if spelling not in out[group]:
                out[group].append(spelling)
    return out


def write_risk_groups(config: MultiTaskConfig, path: Path) -> Path:
    """Write :func:`risk_groups` as YAML, as ``cxrkit.eval.screening.load_risk_groups`` reads it."""
    import yaml

    return io.atomic_write(path, yaml.safe_dump(risk_groups(config), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# training


def _fit_stage(
    *,
    config: MultiTaskConfig,
    disease: str,
    stage: str,
    settings: StageConfig,
    records: Sequence[Record],
    val_records: Sequence[Record],
    cache: Cache,
    output_dir: Path,
    init_state: dict[str, torch.Tensor] | None,
    resume: str | bool = "auto",
) -> MultiTaskModule:
    # Each stage is a run of its own (seeded, resumable from its last.ckpt), so a member trains
    # the same whichever members ran before it in this process.
    run = engine.prepare_run(dataclasses.replace(config, output_dir=str(output_dir)), resume=resume)
    module = MultiTaskModule(
        config=config,
        disease=disease,
        stage=stage,
        lr=settings.lr,
        monitor="val/loss" if val_records else "train/loss_epoch",
        load_weights=init_state is None and not run.resuming,
    )
    if init_state is not None:
        module.model.load_state_dict(init_state, strict=True)
    if not records:
        log.warning("%s: no image for stage %r; stage skipped", parse_finding(disease).name, stage)
        return module
    train_stage(
        module=module,
        config=config,
        trainer_config=dataclasses.replace(config.trainer, max_steps=settings.max_steps),
        max_epochs=settings.max_epochs,
        run=run,
        train_records=records,
        val_records=val_records,
        cache=cache,
        disease=disease,
    )
    return module


def train_member(
    *,
    config: MultiTaskConfig,
    disease: str,
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    cache: Cache,
    output_dir: Path,
    resume: str | bool = "auto",
) -> Path:
    """Train one member through both stages; write and return ``output_dir/member.pt``.

    A member whose ``member.pt`` exists is kept (the ensemble resumes member by member); an
    interrupted stage resumes from its own ``last.ckpt``.
    """
    final = output_dir / MEMBER_FILE
    if final.is_file():
        log.info("%s: %s exists, member kept", parse_finding(disease).name, final)
        return final
    hard, weak = stage_records(train_records, config=config)
    members = lesion_members(config, disease=disease)
    if not any(
        targets.three_class_label(r, members=members) == targets.DISEASE for r in hard + weak
    ):
        log.warning(
            "%s: no training image is labelled with it (%s); its member learns normal/other only",
            parse_finding(disease).name,
            "/".join(members),
        )
    if not any(any(m in r.mask_paths for m in members) for r in hard):
        log.warning(
            "%s: no training image has a %s mask; the reconstruction stage sees only empty targets",
            parse_finding(disease).name,
            "/".join(members),
        )
    module: MultiTaskModule | None = None
    for stage, settings, records in (
        ("hard", config.screening.hard, hard),
        ("weak", config.screening.weak, weak),
    ):
        init_state = None  # the weak stage starts from a copy of the hard stage's weights
        if module is not None:
            init_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        module = _fit_stage(
            config=config,
            disease=disease,
            stage=stage,
            settings=settings,
            records=records,
            val_records=val_records,
            cache=cache,
            output_dir=output_dir / stage,
            init_state=init_state,
            resume=resume,
        )
    if rank_zero_only.rank == 0:
        save_model(module.model, config, final, disease=disease)
    return final


def fit_ensemble(config: MultiTaskConfig, *, resume: str | bool = "auto") -> engine.RunResult:
    """Train every member, fit the SVM, save the ensemble, score ``predict_split``.

    Args:
        resume: ``"auto"`` keeps finished members and continues an interrupted stage from its
            ``last.ckpt``; ``False`` retrains the unfinished ones from the start. A checkpoint
            path is refused: an ensemble has one checkpoint per member stage.

    Returns:
        Artifacts ``"ensemble"`` (the directory :meth:`Ensemble.load` reads), ``"risk_groups"``
        and, when ``predict_split`` has images, ``"predictions"``; ``metrics`` the calibration
        sensitivity and specificity at the threshold.
    """
    if config.task != "screening":
        raise ValueError("fit_ensemble() needs task=screening")
    if resume not in ("auto", True, False, None):
        raise ConfigError(
            f"--resume {resume}: a screening ensemble resumes member by member from each stage's "
            "last.ckpt; give --resume auto or --resume never"
        )
    data = config.data
    split = config.screening.svm_split
    splits = (data.train_split, data.val_split, split, config.predict_split)
    run = engine.prepare_run(config, resume=False, data=data, splits=splits)
    out, cache = run.output_dir, run.cache
    train_records = run.records[data.train_split]
    if not train_records:
        raise DataError(f"{data.manifest}: no record in split {data.train_split!r} to train on")
    paths = [
        train_member(
            config=config,
            disease=disease,
            train_records=train_records,
            val_records=run.records[data.val_split],
            cache=cache,
            output_dir=out / "members" / member_slug(disease),
            resume="auto" if resume in ("auto", True) else False,
        )
        for disease in config.screening.diseases
    ]
    result = engine.RunResult(output_dir=out, checkpoint=None)
    if rank_zero_only.rank != 0:
        return result
    ensemble = Ensemble(
        diseases=list(config.screening.diseases),
        members=[load(p)[0] for p in paths],
        svm=None,
        threshold=float("nan"),
        target_sensitivity=config.screening.target_sensitivity,
        config=config,
    )
    calib = [r for r in run.records[split] if targets.is_abnormal(r) is not None]
    if not calib:
        raise DataError(f"{data.manifest}: no labelled record in split {split!r} for the SVM")
    device = config.trainer.accelerator
    ids, feats = ensemble.features_of(records=calib, cache=cache, device=device)
    by_id = {r.image_id: r for r in calib}
    y = np.array([targets.is_abnormal(by_id[i]) for i in ids])
    svm_cfg = config.screening.svm
    ensemble.svm, ensemble.threshold = fit_svm(
        feats,
        y,
        kernel=svm_cfg.kernel,
        c=svm_cfg.c,
        class_weight=None if svm_cfg.class_weight == "none" else svm_cfg.class_weight,
        target_sensitivity=config.screening.target_sensitivity,
    )
    from cxrkit.eval import classification

    at = classification.threshold_metrics(
        y_true=y, y_score=ensemble.score(feats), threshold=ensemble.threshold
    )
    ensemble.info = {"calibration": {"split": split, **at}, "image_size": data.preprocess.size}
    ensemble.save(out, member_paths=paths)
    result.artifacts["ensemble"] = out
    result.artifacts["risk_groups"] = write_risk_groups(config, out / RISK_GROUPS_FILE)
    result.metrics = {"sensitivity": at["sensitivity"], "specificity": at["specificity"]}
    log.info(
        "SVM threshold %.4f: sensitivity %.3f, specificity %.3f on %s",
        ensemble.threshold,
        at["sensitivity"],
        at["specificity"],
        split,
    )
    records = run.records[config.predict_split]
    if records:
        result.artifacts["predictions"] = screen_records(
            ensemble,
            records=records,
            cache=cache,
            path=out / f"predictions_{config.predict_split}.csv",
            device=device,
        )
    return result


def screen_records(
    ensemble: Ensemble,
    *,
    records: Sequence[Record],
    cache: Cache,
    path: Path,
    device: str = "auto",
) -> Path:
    """Run the ensemble on ``records`` and write screening predictions (``image_id, score``) to
    ``path`` (checked first, so a bad path fails before the inference)."""
    from cxrkit.eval.predictions import check_output, write_predictions

    check_output(path)
    frame = ensemble.predict(records=records, cache=cache, device=device)
    return write_predictions(frame, path, kind="screening")
