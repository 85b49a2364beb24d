"""The thesis' screening ensemble: per-disease 3-class models, then an SVM over all their logits.

Each member is a :class:`~cxrkit.multitask.model.MultiTaskModel` with a 3-class head (normal / its
disease / another disease) and the dilated-lesion reconstruction decoder, trained in two stages:

1. ``hard``: images with lesion masks (plus normal images, whose lesion mask is known empty),
   classification + lambda x reconstruction;
2. ``weak``: images without masks (``screening.weak_records``), decoder frozen, reconstruction off.

An SVM (scikit-learn ``StandardScaler`` + ``SVC``) over the concatenated logits of every member then
decides normal vs abnormal; its threshold on the decision value is the highest one reaching
``screening.target_sensitivity`` on ``screening.svm_split``. The ensemble directory::

    OUT/members/<disease>/{hard,weak}/   Lightning runs of each stage (resumable)
    OUT/members/<disease>/member.pt      exported weights + config (torch.load weights_only=True)
    OUT/svm.skops                        the SVM pipeline (skops: no arbitrary unpickling)
    OUT/ensemble.json                    members (paths, sha256), feature order, threshold, target
    OUT/risk_groups.yaml                 the config's risk groups for `cxrkit eval screening`
    OUT/predictions_<split>.csv          image_id, score (SVM decision value)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only

from cxrkit import engine
from cxrkit.data import loading
from cxrkit.data.cache import Cache
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import DataError, MissingFileError
from cxrkit.multitask import targets
from cxrkit.multitask.config import MultiTaskConfig, StageConfig
from cxrkit.multitask.dataset import lesion_members
from cxrkit.multitask.model import MultiTaskModel
from cxrkit.multitask.module import MultiTaskModule
from cxrkit.multitask.train import (
    build_dataset,
    build_loader,
    inference_device,
    load_model,
    save_model,
)

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
SVM_FILE = "svm.skops"
MEMBER_FILE = "member.pt"
RISK_GROUPS_FILE = "risk_groups.yaml"
ENSEMBLE_VERSION = 1
# The only types an SVM file may contain; anything else is refused before loading.
TRUSTED_TYPES = (
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.SVC",
)


def member_slug(disease: str) -> str:
    """Folder name of a member: ``"Nodule/Mass=Nodule|Mass"`` -> ``"Nodule_Mass"``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", parse_finding(disease)[0]).strip("_") or "disease"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def feature_names(diseases: Sequence[str]) -> list[str]:
    """SVM input columns: ``<disease>:<class>`` for each member, in member order."""
    return [f"{parse_finding(d)[0]}:{c}" for d in diseases for c in targets.THREE_CLASSES]


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


# --------------------------------------------------------------------------------------------------
# the ensemble


@dataclasses.dataclass
class Ensemble:
    """Trained members and the SVM that combines their logits.

    Attributes:
        diseases: member disease entries, in feature order.
        members: one 3-class model per disease.
        svm: scikit-learn pipeline; ``decision_function`` > ``threshold`` means abnormal.
        threshold: decision value at ``target_sensitivity`` on the calibration split.
        target_sensitivity: the sensitivity the threshold was chosen for.
        info: extra JSON fields (calibration counts, image size, ...).
        config: the members' training configuration (data recipe, batch size) for inference.
    """

    diseases: list[str]
    members: list[MultiTaskModel]
    svm: Any
    threshold: float
    target_sensitivity: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: MultiTaskConfig | None = None

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> np.ndarray:
        """Concatenated member logits, float64 (B, 3 x members), for FloatTensor[B, 1, H, W]."""
        cols = []
        for model in self.members:
            device = next(model.parameters()).device
            out = model.eval()(image.to(device), reconstruct=False)
            cols.append(out["logits"].float().cpu())
        return torch.cat(cols, dim=1).double().numpy()

    def score(self, features: np.ndarray) -> np.ndarray:
        """SVM decision values (higher = more likely abnormal), float64 (N,)."""
        return np.asarray(self.svm.decision_function(features), dtype=np.float64)

    def to(self, device: torch.device) -> Ensemble:
        for m in self.members:
            m.to(device)
        return self

    def save(self, directory: str | Path, *, member_paths: Sequence[Path]) -> Path:
        """Write ``svm.skops`` and ``ensemble.json`` (members already saved at ``member_paths``)."""
        import skops.io as sio

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{SVM_FILE}.tmp{os.getpid()}"
        sio.dump(self.svm, tmp)
        os.replace(tmp, root / SVM_FILE)
        members = []
        for disease, path in zip(self.diseases, member_paths, strict=True):
            path = Path(path)
            rel = os.path.relpath(path, root)
            members.append({"disease": disease, "checkpoint": rel, "sha256": _sha256(path)})
        doc = {
            "version": ENSEMBLE_VERSION,
            "members": members,
            "features": feature_names(self.diseases),
            "svm": SVM_FILE,
            "svm_sha256": _sha256(root / SVM_FILE),
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            **self.info,
        }
        _write_atomic(root / ENSEMBLE_FILE, json.dumps(doc, indent=2))
        return root / ENSEMBLE_FILE

    @classmethod
    def load(cls, directory: str | Path) -> Ensemble:
        """Read an ensemble directory written by :meth:`save`.

        Members load with ``torch.load(weights_only=True)``; the SVM with skops, refusing any type
        outside :data:`TRUSTED_TYPES`. Checksums in ``ensemble.json`` must match the files.

        Raises:
            MissingFileError: the directory, ``ensemble.json``, the SVM or a member is missing.
            DataError: a checksum mismatch, an untrusted type or a malformed file.
        """
        import skops.io as sio

        root = Path(directory)
        doc_path = root / ENSEMBLE_FILE
        if not doc_path.is_file():
            raise MissingFileError(
                f"{doc_path}: not an ensemble directory; train one with `cxrkit multitask --config "
                "configs/multitask/screening_ensemble.yaml`"
            )
        try:
            doc = json.loads(doc_path.read_text())
            entries = doc["members"]
            threshold = float(doc["threshold"])
            target = float(doc["target_sensitivity"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{doc_path}: malformed ensemble file ({exc})") from exc
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{doc_path}: the ensemble lists no member")
        svm_path = root / doc.get("svm", SVM_FILE)
        if not svm_path.is_file():
            raise MissingFileError(f"{svm_path}: the ensemble's SVM file is missing")
        if doc.get("svm_sha256") and _sha256(svm_path) != doc["svm_sha256"]:
            raise DataError(f"{svm_path}: checksum differs from {doc_path}; the file was changed")
        untrusted = [t for t in sio.get_untrusted_types(file=svm_path) if t not in TRUSTED_TYPES]
        if untrusted:
            raise DataError(f"{svm_path}: refusing to load untrusted types {untrusted}")
        svm = sio.load(svm_path, trusted=list(TRUSTED_TYPES))
        diseases, members, config = [], [], None
        for entry in entries:
            path = root / entry["checkpoint"]
            if not path.is_file():
                raise MissingFileError(f"{path}: member checkpoint of {entry['disease']!r} missing")
            if entry.get("sha256") and _sha256(path) != entry["sha256"]:
                raise DataError(f"{path}: checksum differs from {doc_path}; the file was changed")
            model, member_config, _ = load_model(path)
            config = config or member_config
            diseases.append(entry["disease"])
            members.append(model)
        if doc.get("features") and doc["features"] != feature_names(diseases):
            raise DataError(f"{doc_path}: feature order does not match its members")
        info = {k: v for k, v in doc.items() if k not in _SAVED_KEYS}
        return cls(
            diseases=diseases,
            members=members,
            svm=svm,
            threshold=threshold,
            target_sensitivity=target,
            info=info,
            config=config,
        )


_SAVED_KEYS = {
    "version",
    "members",
    "features",
    "svm",
    "svm_sha256",
    "threshold",
    "target_sensitivity",
}


def fit_svm(
    features: np.ndarray,
    abnormal: np.ndarray,
    *,
    kernel: str = "rbf",
    c: float = 1.0,
    class_weight: str | None = "balanced",
    target_sensitivity: float = 0.95,
) -> tuple[Any, float]:
    """Fit ``StandardScaler + SVC`` on features (N, D) and 0/1 ``abnormal``; pick the threshold.

    Returns:
        ``(pipeline, threshold)``: the highest decision value whose sensitivity on these images
        reaches ``target_sensitivity``
        (:func:`cxrkit.eval.classification.threshold_for_sensitivity`).

    Raises:
        DataError: only one class among the images.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from cxrkit.eval import classification

    y = np.asarray(abnormal, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise DataError(
            f"the SVM needs normal and abnormal images; the calibration images have only class "
            f"{int(y[0]) if len(y) else 'none'} ({len(y)} images)"
        )
    svm = make_pipeline(StandardScaler(), SVC(kernel=kernel, C=c, class_weight=class_weight))
    svm.fit(features, y)
    scores = svm.decision_function(features)
    threshold = classification.threshold_for_sensitivity(
        y_true=y, y_score=scores, target=target_sensitivity
    )
    return svm, float(threshold)


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

    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, yaml.safe_dump(risk_groups(config), sort_keys=False))
    return path


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
) -> MultiTaskModule:
    has_val = bool(val_records)
    monitor = "val/loss" if has_val else "train/loss_epoch"
    module = MultiTaskModule(
        config=config,
        disease=disease,
        stage=stage,
        lr=settings.lr,
        monitor=monitor,
        load_weights=init_state is None,
    )
    if init_state is not None:
        module.model.load_state_dict(init_state, strict=True)
    if not records:
        log.warning("%s: no image for stage %r; stage skipped", parse_finding(disease)[0], stage)
        return module
    engine.apply_channels_last_and_compile(module.model, config.trainer)
    trainer_config = dataclasses.replace(config.trainer, max_steps=settings.max_steps)
    trainer = engine.build_trainer(
        config=trainer_config,
        output_dir=output_dir,
        monitor="val/loss" if has_val else None,
        mode="min",
        max_epochs=settings.max_epochs,
    )
    train_loader = build_loader(
        build_dataset(config=config, records=records, cache=cache, disease=disease, train=True),
        config=config,
        train=True,
    )
    val_loader = None
    if has_val:
        val_loader = build_loader(
            build_dataset(config=config, records=val_records, cache=cache, disease=disease),
            config=config,
            train=False,
        )
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        output_dir=output_dir,
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
) -> Path:
    """Train one member through both stages; write and return ``output_dir/member.pt``.

    A member whose ``member.pt`` exists is kept (the ensemble resumes member by member); an
    interrupted stage resumes from its own ``last.ckpt``.
    """
    final = output_dir / MEMBER_FILE
    if final.is_file():
        log.info("%s: %s exists, member kept", parse_finding(disease)[0], final)
        return final
    hard, weak = stage_records(train_records, config=config)
    members = lesion_members(config, disease=disease)
    if not any(
        targets.three_class_label(r, members=members) == targets.DISEASE for r in hard + weak
    ):
        log.warning(
            "%s: no training image is labelled with it (%s); its member learns normal/other only",
            parse_finding(disease)[0],
            "/".join(members),
        )
    if not any(any(m in r.mask_paths for m in members) for r in hard):
        log.warning(
            "%s: no training image has a %s mask; the reconstruction stage sees only empty targets",
            parse_finding(disease)[0],
            "/".join(members),
        )
    first = _fit_stage(
        config=config,
        disease=disease,
        stage="hard",
        settings=config.screening.hard,
        records=hard,
        val_records=val_records,
        cache=cache,
        output_dir=output_dir / "hard",
        init_state=None,
    )
    second = _fit_stage(
        config=config,
        disease=disease,
        stage="weak",
        settings=config.screening.weak,
        records=weak,
        val_records=val_records,
        cache=cache,
        output_dir=output_dir / "weak",
        init_state={k: v.detach().clone() for k, v in first.model.state_dict().items()},
    )
    if rank_zero_only.rank == 0:
        save_model(second.model, config, final, disease=disease)
    return final


def member_features(
    ensemble: Ensemble, *, config: MultiTaskConfig, records: Sequence[Record], cache: Cache
) -> tuple[list[str], np.ndarray]:
    """Image ids and SVM features (N, 3 x members) of ``records``, in one pass over the images."""
    loader = build_loader(
        build_dataset(config=config, records=records, cache=cache, inference=True),
        config=config,
        train=False,
    )
    ensemble.to(inference_device(config))
    ids: list[str] = []
    chunks = []
    for batch in loader:
        chunks.append(ensemble.features(batch["image"]))
        ids.extend(batch["image_id"])
    width = 3 * len(ensemble.members)
    return ids, np.concatenate(chunks) if chunks else np.zeros((0, width))


def screening_frame(ids: Sequence[str], scores: np.ndarray) -> pd.DataFrame:
    """``image_id, score``: the SVM decision value; abnormal when ``score >= threshold``."""
    return pd.DataFrame({"image_id": list(ids), "score": np.asarray(scores, dtype=np.float64)})


def train_ensemble(config: MultiTaskConfig) -> Path:
    """Train every member, fit the SVM, save the ensemble, score ``predict_split``.

    Returns the output directory (see the module docstring for its layout).
    """
    if config.task != "screening":
        raise ValueError("train_ensemble() needs task=screening")
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
    paths = [
        train_member(
            config=config,
            disease=disease,
            train_records=train_records,
            val_records=val_records,
            cache=cache,
            output_dir=out / "members" / member_slug(disease),
        )
        for disease in config.screening.diseases
    ]
    if rank_zero_only.rank != 0:
        return out
    members = [load_model(p)[0] for p in paths]
    ensemble = Ensemble(
        diseases=list(config.screening.diseases),
        members=members,
        svm=None,
        threshold=float("nan"),
        target_sensitivity=config.screening.target_sensitivity,
        config=config,
    )
    split = config.screening.svm_split
    calib = loading.load_records(config.data, split=split, cache=cache)
    calib = [r for r in calib if targets.is_abnormal(r) is not None]
    if not calib:
        raise DataError(
            f"{config.data.manifest}: no labelled record in split {split!r} for the SVM"
        )
    ids, feats = member_features(ensemble, config=config, records=calib, cache=cache)
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
    ensemble.info = {
        "calibration": {"split": split, **at},
        "image_size": config.data.preprocess.size,
    }
    ensemble.save(out, member_paths=paths)
    write_risk_groups(config, out / RISK_GROUPS_FILE)
    log.info(
        "SVM threshold %.4f: sensitivity %.3f, specificity %.3f on %s",
        ensemble.threshold,
        at["sensitivity"],
        at["specificity"],
        split,
    )
    records = loading.load_records(config.data, split=config.predict_split, cache=cache)
    if records:
        screen_records(
            ensemble,
            config=config,
            records=records,
            cache=cache,
            path=out / f"predictions_{config.predict_split}.csv",
        )
    return out


def screen_records(
    ensemble: Ensemble,
    *,
    config: MultiTaskConfig,
    records: Sequence[Record],
    cache: Cache,
    path: Path,
) -> Path:
    """Run the ensemble on ``records`` and write screening predictions (``image_id, score``)."""
    from cxrkit.eval.predictions import write_predictions

    ids, feats = member_features(ensemble, config=config, records=records, cache=cache)
    frame = screening_frame(ids, ensemble.score(feats))
    return write_predictions(frame, path, kind="screening")
