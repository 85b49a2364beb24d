"""The thesis' screening protocol: train per-disease members in two stages, then fit the SVM.

Each member (:mod:`cxrkit.multitask.ensemble`) is a 3-class model (normal / its disease / another
disease; or 2-class with ``screening.classes=2``) with the dilated-lesion reconstruction decoder,
trained in two stages (thesis §3.3.4 steps 2-3):

1. ``hard``: images with lesion masks (plus normal images, whose lesion mask is known empty),
   classification + lambda x reconstruction;
2. ``weak``: images without masks (``screening.weak_records``), starting from the hard stage's
   BEST checkpoint, decoder (and with ``weak_trains: classifier`` encoder) frozen, reconstruction
   off. The member is saved from the weak stage's best checkpoint.

The SVM over all members' logits is then fitted on ``screening.svm_split``
(:func:`cxrkit.multitask.ensemble.fit_svm`; step 4). The ensemble directory::

    OUT/members/<disease>/{hard,weak}/   Lightning runs of each stage (each resumable)
    OUT/members/<disease>/member.pt      exported weights + config (cxrkit.io model file)
    OUT/svm.skops, OUT/ensemble.json     the trained ensemble (cxrkit.multitask.ensemble)
    OUT/risk_groups.yaml                 the config's risk groups for `cxrkit eval screening`
    OUT/predictions_<split>.csv          image_id, score (SVM decision value)
    OUT/members_<split>.csv              image_id, member, p_normal, p_target[, p_other]
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only

from cxrkit import engine, io
from cxrkit.data.cache import Cache
from cxrkit.data.findings import check_labelled
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError
from cxrkit.multitask import targets
from cxrkit.multitask.config import MultiTaskConfig, StageConfig
from cxrkit.multitask.dataset import lesion_members
from cxrkit.multitask.ensemble import Ensemble, fit_svm, member_frame, screening_frame
from cxrkit.multitask.model import MultiTaskModel
from cxrkit.multitask.module import MultiTaskModule
from cxrkit.multitask.train import (
    inference_loader,
    load,
    predict_logits,
    save_model,
    train_stage,
)

log = logging.getLogger(__name__)

MEMBER_FILE = "member.pt"
SVM_DECISION_THRESHOLD = 0.0  # SVC.predict calls a sample positive when decision_function > 0
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
    images without lesion masks (``weak_records=without_masks``) or all (``all``). With
    ``screening.other=listed`` an image whose findings all lie outside the screening diseases is
    in neither (:func:`trainable`).
    """
    names = {m for d in config.screening.diseases for m in parse_finding(d)[1]}
    hard, weak = [], []
    for r in trainable(records, config=config):
        has_mask = any(n in r.mask_paths for n in names)
        is_normal = targets.is_abnormal(r) == 0
        if has_mask or (is_normal and config.reconstruction.empty_when_negative):
            hard.append(r)
        if not has_mask or config.screening.weak_records == "all":
            weak.append(r)
    return hard, weak


def trainable(records: Sequence[Record], *, config: MultiTaskConfig) -> list[Record]:
    """The records a member (and the SVM) may learn from: all with ``screening.other=any``; with
    ``listed`` (thesis) those that are normal, unlabelled, or positive for a screening disease."""
    if config.screening.other == "any":
        return list(records)
    names = {m for d in config.screening.diseases for m in parse_finding(d)[1]}
    return [
        r
        for r in records
        if targets.is_abnormal(r) != 1 or any(r.labels.get(n) == 1 for n in names)
    ]


def thesis_splits(
    records: Sequence[Record], *, config: MultiTaskConfig, seed: int = 0
) -> list[Record]:
    """Copies of ``records`` split as the thesis did (§3.1), by patient.

    Hard-label images (a lesion mask of a screening disease) and normal images are split 8:1:1
    into train / val / test (:func:`cxrkit.data.splits.assign_splits`, stratified on the
    screening diseases); every weak-label image (abnormal, no such mask) is training data. The
    thesis does not say where its normal images went: splitting them with the hard labels is
    cxrkit's reading. A weak image of a patient whose hard or normal images went to val or test
    follows them (no patient in two splits).
    """
    from cxrkit.data import splits

    names = [m for d in config.screening.diseases for m in parse_finding(d)[1]]
    hard, weak = [], []
    for r in records:
        has_mask = any(n in r.mask_paths for n in names)
        (hard if has_mask or targets.is_abnormal(r) != 1 else weak).append(r)
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}  # thesis: 8:1:1
    split_hard = splits.assign_splits(hard, fractions=fractions, seed=seed, stratify_on=names)
    patient_split = {r.patient_id: r.split for r in split_hard}
    split_weak = [
        dataclasses.replace(r, split=patient_split.get(r.patient_id, "train")) for r in weak
    ]
    order = {r.image_id: k for k, r in enumerate(records)}
    return sorted(split_hard + split_weak, key=lambda r: order[r.image_id])


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


def check_diseases(config: MultiTaskConfig, records: Sequence[Record], *, where: str) -> None:
    """Every disease, and so every disease a risk group names, is labelled in some record.

    Raises:
        DataError: naming the risk group and the disease no record has (the group's rows of the
            screening tables would be empty), or the disease when no group names it.
    """
    for group, names in config.screening.groups().items():
        entries = [d for d in config.screening.diseases if parse_finding(d)[0] in names]
        check_labelled(records, entries, what=f"screening.risk_groups group {group!r}", where=where)
    check_labelled(records, config.screening.diseases, what="screening.diseases", where=where)


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
    trainer = train_stage(
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
    # thesis: each stage continues from, and a member is saved from, its best epoch
    best = engine.best_checkpoint(Path(trainer.default_root_dir))
    if val_records and best is not None and best.name != engine.LAST_CHECKPOINT:
        engine.load_checkpoint_weights(module, best)
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
        init_state = None  # the weak stage starts from a copy of the hard stage's best weights
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
    check_diseases(config, train_records, where=f"{data.manifest} (split {data.train_split!r})")
    paths = [
        train_member(
            config=config,
            disease=disease,
            train_records=train_records,
            val_records=trainable(run.records[data.val_split], config=config),
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
        members=[load(p).model for p in paths],
        svm=None,
        threshold=float("nan"),
        target_sensitivity=config.screening.target_sensitivity,
        config=config,
        operating_point=config.screening.operating_point,
    )
    calib = [
        r
        for r in trainable(run.records[split], config=config)
        if targets.is_abnormal(r) is not None
    ]
    if not calib:
        raise DataError(f"{data.manifest}: no labelled record in split {split!r} for the SVM")
    device = config.trainer.accelerator
    ids, feats = ensemble.features_of(records=calib, cache=cache, device=device)
    by_id = {r.image_id: r for r in calib}
    y = np.array([targets.is_abnormal(by_id[i]) for i in ids])
    svm_cfg = config.screening.svm
    ensemble.svm, at_sensitivity = fit_svm(
        feats,
        y,
        kernel=svm_cfg.kernel,
        c=svm_cfg.c,
        class_weight=None if svm_cfg.class_weight == "none" else svm_cfg.class_weight,
        target_sensitivity=config.screening.target_sensitivity,
    )
    # thesis: the SVM's own decision (decision value >= 0); cxrkit's option: the threshold
    # reaching target_sensitivity on the calibration split
    thresholds = {"svm": SVM_DECISION_THRESHOLD, "sensitivity": at_sensitivity}
    ensemble.threshold = thresholds[config.screening.operating_point]
    from cxrkit.eval import classification

    at = classification.threshold_metrics(
        y_true=y, y_score=ensemble.score(feats), threshold=ensemble.threshold
    )
    ensemble.info = {
        "calibration": {"split": split, **at},
        "image_size": data.preprocess.size,
        "thresholds": thresholds,
        "classes": config.screening.classes,
    }
    ensemble.save(out, member_paths=paths)
    result.artifacts["ensemble"] = out
    result.artifacts["risk_groups"] = write_risk_groups(config, out / RISK_GROUPS_FILE)
    result.metrics = {"sensitivity": at["sensitivity"], "specificity": at["specificity"]}
    log.info(
        "SVM threshold %.4f (%s): sensitivity %.3f, specificity %.3f on %s",
        ensemble.threshold,
        config.screening.operating_point,
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
            members_path=out / f"members_{config.predict_split}.csv",
            device=device,
        )
        result.artifacts["members"] = out / f"members_{config.predict_split}.csv"
    return result


def screen_records(
    ensemble: Ensemble,
    *,
    records: Sequence[Record],
    cache: Cache,
    path: Path,
    members_path: Path | None = None,
    device: str = "auto",
) -> Path:
    """Run the ensemble on ``records`` and write screening predictions (``image_id, score``) to
    ``path``; with ``members_path`` also every member's class probabilities
    (:meth:`Ensemble.member_frame`: one row per image x member). Both paths are checked first, so
    a bad path fails before the inference. The images are read once for both files."""
    from cxrkit.eval.predictions import check_output, write_predictions

    check_output(path)
    if members_path is not None:
        check_output(members_path)
    ids, feats = ensemble.features_of(records=records, cache=cache, device=device)
    if members_path is not None:
        write_members(ensemble.member_frame(ids, feats), members_path)
    return write_predictions(screening_frame(ids, ensemble.score(feats)), path, kind="screening")


def predict_member(
    model: MultiTaskModel,
    config: MultiTaskConfig,
    *,
    disease: str,
    records: Sequence[Record],
    cache: Cache,
    device: str = "auto",
) -> pd.DataFrame:
    """One member's class probabilities on ``records`` (:func:`cxrkit.multitask.ensemble.
    member_frame` with one member)."""
    loader = inference_loader(config, records=records, cache=cache)
    ids, logits = predict_logits(model, loader, device=engine.inference_device(device))
    return member_frame(
        ids, logits.double().numpy(), diseases=[disease], classes=config.screening.classes
    )


def write_members(frame: pd.DataFrame, path: Path) -> Path:
    """Write a member table (:meth:`Ensemble.member_frame`) as CSV or Parquet, atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return io.atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return io.atomic_write(path, frame.to_csv(index=False))
