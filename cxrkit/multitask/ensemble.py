"""The screening ensemble as users load and call it: per-disease members, then an SVM.

Each member is a 3-class :class:`~cxrkit.multitask.model.MultiTaskModel` (normal / its disease /
another disease; or 2-class, normal / its disease); an SVM (scikit-learn ``StandardScaler`` +
``SVC``) over the concatenated logits of every member decides normal vs abnormal. The operating
point is the SVM's own decision (decision value >= 0; the thesis') or, as cxrkit's option, the
highest threshold reaching the target sensitivity on the calibration split. Training lives in
:mod:`cxrkit.multitask.screening`; this module holds what a trained ensemble is::

    OUT/members/<disease>/member.pt      exported weights + config (cxrkit.io model file)
    OUT/svm.skops                        the SVM pipeline (skops: no arbitrary unpickling)
    OUT/ensemble.json                    members (paths, sha256), feature order, threshold, target

    ensemble = Ensemble.load("runs/multitask/screening")
    scores = ensemble.predict(records=records, cache=cache)   # image_id, score
    frame = ensemble.predict_images(["a.dcm", "b.png"])       # logits, score, abnormal per file
    ids, feats = ensemble.features_of(records=records, cache=cache)
    per_member = ensemble.member_frame(ids, feats)   # image_id, member, p_normal, p_target, ...
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrkit import engine, io
from cxrkit.data import single
from cxrkit.data.cache import Cache
from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import DataError, MissingFileError
from cxrkit.multitask import targets
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.model import MultiTaskModel
from cxrkit.multitask.predictor import for_files
from cxrkit.multitask.train import inference_loader, load

ENSEMBLE_FILE = "ensemble.json"
SVM_FILE = "svm.skops"
ENSEMBLE_VERSION = 1
# The only types an SVM file may contain; anything else is refused before loading.
TRUSTED_TYPES = (
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.SVC",
)


def feature_names(diseases: Sequence[str], *, classes: int = 3) -> list[str]:
    """SVM input columns: ``<disease>:<class>`` for each member, in member order."""
    names = targets.THREE_CLASSES[:classes]
    return [f"{parse_finding(d).name}:{c}" for d in diseases for c in names]


# member table columns: the probabilities of normal, the member's target disease, another disease
MEMBER_COLUMNS = ("p_normal", "p_target", "p_other")


@dataclasses.dataclass
class Ensemble:
    """Trained members and the SVM that combines their logits.

    Attributes:
        diseases: member disease entries, in feature order.
        members: one 3-class model per disease.
        svm: scikit-learn pipeline; ``decision_function`` > ``threshold`` means abnormal.
        threshold: decision value at ``target_sensitivity`` on the calibration split.
        target_sensitivity: the sensitivity of cxrkit's optional threshold.
        info: extra JSON fields (calibration counts, image size, both thresholds, ...).
        config: the members' training configuration (data recipe, batch size) for inference.
        operating_point: ``svm`` (threshold 0, the SVM's decision) or ``sensitivity``.
    """

    diseases: list[str]
    members: list[MultiTaskModel]
    svm: Any
    threshold: float
    target_sensitivity: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: MultiTaskConfig | None = None
    operating_point: str = "svm"

    @property
    def classes(self) -> int:
        """Outputs per member: 3 (normal / target / other) or 2 (normal / target)."""
        return int(self.members[0].classifier.out_features) if self.members else 3

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> np.ndarray:
        """Concatenated member logits, float64 (B, classes x members), of FloatTensor[B, 1, H, W]
        images."""
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

    def features_of(
        self,
        *,
        records: Sequence[Record],
        cache: Cache,
        device: str = "auto",
        labelled: bool = True,
    ) -> tuple[list[str], np.ndarray]:
        """Image ids and SVM features (N, classes x members) of ``records``, in one pass over the
        images (read with the members' recipe and batch size; ``labelled`` as in
        :func:`cxrkit.multitask.train.build_dataset`)."""
        if self.config is None:
            raise ValueError("this ensemble has no configuration to read images with")
        self.to(engine.inference_device(device))
        ids: list[str] = []
        chunks = []
        loader = inference_loader(self.config, records=records, cache=cache, labelled=labelled)
        for batch in loader:
            chunks.append(self.features(batch["image"]))
            ids.extend(batch["image_id"])
        width = self.classes * len(self.members)
        return ids, np.concatenate(chunks) if chunks else np.zeros((0, width))

    def member_frame(self, ids: Sequence[str], features: np.ndarray) -> pd.DataFrame:
        """Every member's class probabilities from ``features`` (:func:`member_frame`)."""
        return member_frame(ids, features, diseases=self.diseases, classes=self.classes)

    def predict(
        self, *, records: Sequence[Record], cache: Cache, device: str = "auto"
    ) -> pd.DataFrame:
        """``image_id, score``: the SVM decision value; abnormal when ``score >= threshold``."""
        ids, feats = self.features_of(records=records, cache=cache, device=device)
        return screening_frame(ids, self.score(feats))

    def predict_images(
        self,
        paths: Sequence[str | Path] | single.Images,
        *,
        device: str | None = None,
        on_error: str = "fail",
    ) -> pd.DataFrame:
        """Screen image files, read with the members' preprocessing recipe; one row per image.
        ``paths``, ``device`` and ``on_error`` as in
        :meth:`cxrkit.multitask.predictor.Classifier.predict_images`.

        Returns:
            ``path, image_id``, every member logit (columns :func:`feature_names`,
            ``<disease>:normal`` ...), ``score`` (the SVM decision value, as in ``cxrkit
            multitask screen``) and ``abnormal`` (``score >= threshold``, the ensemble's saved
            operating point; ``frame.attrs["threshold"]`` holds it).

        Raises:
            ValueError: an ensemble without configuration or SVM (not a trained one).
            ConfigError, ImageReadError, DataError: as
                :meth:`cxrkit.multitask.predictor.Classifier.predict_images`.
        """
        if self.config is None or self.svm is None:
            raise ValueError("this ensemble has no configuration or SVM: load a trained one")
        images = single.ensure_read(paths, recipe=self.config.data.preprocess, on_error=on_error)
        files = dataclasses.replace(self, config=for_files(self.config))
        ids, feats = files.features_of(
            records=images.records, cache=images.cache, device=device or "auto", labelled=False
        )
        frame = pd.DataFrame(feats, columns=feature_names(self.diseases, classes=self.classes))
        frame.insert(0, "image_id", list(ids))
        frame["score"] = self.score(feats) if len(ids) else np.zeros(0)
        frame["abnormal"] = frame["score"] >= self.threshold
        frame = single.with_paths(frame, images)
        frame.attrs["threshold"] = self.threshold
        return frame

    def save(self, directory: str | Path, *, member_paths: Sequence[Path]) -> Path:
        """Write ``svm.skops`` and ``ensemble.json`` (members already saved at ``member_paths``)."""
        import skops.io as sio

        root = Path(directory)
        svm_path = io.atomic_write(root / SVM_FILE, lambda tmp: sio.dump(self.svm, tmp))
        members = []
        for disease, path in zip(self.diseases, member_paths, strict=True):
            path = Path(path)
            rel = os.path.relpath(path, root)
            members.append({"disease": disease, "checkpoint": rel, "sha256": io.sha256(path)})
        doc = {
            "version": ENSEMBLE_VERSION,
            "members": members,
            "features": feature_names(self.diseases, classes=self.classes),
            "svm": SVM_FILE,
            "svm_sha256": io.sha256(svm_path),
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "operating_point": self.operating_point,
            **self.info,
        }
        return io.atomic_write(root / ENSEMBLE_FILE, json.dumps(doc, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Ensemble:
        """Read an ensemble directory written by :meth:`save`.

        Members load with :func:`cxrkit.multitask.train.load` (``weights_only=True``); the SVM with
        skops, refusing any type outside :data:`TRUSTED_TYPES`. Checksums in ``ensemble.json`` must
        match the files.

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
        if doc.get("svm_sha256") and io.sha256(svm_path) != doc["svm_sha256"]:
            raise DataError(f"{svm_path}: checksum differs from {doc_path}; the file was changed")
        try:
            found = sio.get_untrusted_types(file=svm_path)
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
            raise DataError(f"{svm_path}: not a skops file ({exc}); retrain the ensemble") from None
        untrusted = [t for t in found if t not in TRUSTED_TYPES]
        if untrusted:
            raise DataError(f"{svm_path}: refusing to load untrusted types {untrusted}")
        svm = sio.load(svm_path, trusted=list(TRUSTED_TYPES))
        diseases, members, config = [], [], None
        for entry in entries:
            path = root / entry["checkpoint"]
            if not path.is_file():
                raise MissingFileError(f"{path}: member checkpoint of {entry['disease']!r} missing")
            if entry.get("sha256") and io.sha256(path) != entry["sha256"]:
                raise DataError(f"{path}: checksum differs from {doc_path}; the file was changed")
            member = load(path)
            model, member_config = member.model, member.config
            config = config or member_config
            diseases.append(entry["disease"])
            members.append(model)
        classes = int(members[0].classifier.out_features)
        if doc.get("features") and doc["features"] != feature_names(diseases, classes=classes):
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
            operating_point=str(doc.get("operating_point", "sensitivity")),
        )


_SAVED_KEYS = {
    "version",
    "members",
    "features",
    "svm",
    "svm_sha256",
    "threshold",
    "target_sensitivity",
    "operating_point",
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


def member_frame(
    ids: Sequence[str], logits: np.ndarray, *, diseases: Sequence[str], classes: int = 3
) -> pd.DataFrame:
    """One row per image x member: ``image_id, member, p_normal, p_target[, p_other],
    prediction``.

    Args:
        ids: N image ids.
        logits: (N, classes x members) member logits in member order (:meth:`Ensemble.features`).
        diseases: the members' disease entries (their names label the rows).
        classes: 3 (normal / target / other) or 2 (no ``p_other`` column).

    Rows are image-major in member order; the probabilities are each member's softmax and
    ``prediction`` its argmax class (``normal``, ``target``, ``other``).
    """
    names = [parse_finding(d).name for d in diseases]
    x = np.asarray(logits, dtype=np.float64).reshape(len(ids), len(names), classes)
    z = np.exp(x - x.max(axis=2, keepdims=True))
    probs = (z / z.sum(axis=2, keepdims=True)).reshape(-1, classes)
    frame = pd.DataFrame(
        {
            "image_id": np.repeat(np.asarray(list(ids), dtype=object), len(names)),
            "member": names * len(ids),
        }
    )
    for j, column in enumerate(MEMBER_COLUMNS[:classes]):
        frame[column] = probs[:, j]
    frame["prediction"] = np.array(["normal", "target", "other"])[probs.argmax(axis=1)]
    return frame


def screening_frame(ids: Sequence[str], scores: np.ndarray) -> pd.DataFrame:
    """``image_id, score``: the SVM decision value; abnormal when ``score >= threshold``."""
    return pd.DataFrame({"image_id": list(ids), "score": np.asarray(scores, dtype=np.float64)})
