"""Normal-vs-abnormal screening: the "definite normal" question of the screening thesis.

The model gives one score per image, the probability of *abnormal*; an image scoring below the
threshold is called normal and may leave the radiologist's worklist, so the misses that matter are
abnormal images called normal. The reference comes from the manifest labels:

- abnormal: any finding labelled 1, other than "No Finding" / "No finding";
- normal: "No Finding" labelled 1, or every finding labelled 0;
- unknown (no label at all): left out and counted.

Misses are broken down by **risk group**: a finding -> group table (critical, urgent, non-urgent,
cardiomegaly by default; see :data:`DEFAULT_RISK_GROUPS`, or a YAML file of the same shape through
:func:`load_risk_groups`). Findings in no group fall in ``other``. An image counts in every group
of its findings, and once in the breakdown by its most severe group (the groups' order).

**Where the threshold comes from.** A threshold picked on the images being scored (the operating
point at ``target_sensitivity``) flatters the model: on new images it reaches less than the target.
The screening ensemble saves the threshold it chose on its calibration split (``ensemble.json``,
written by :mod:`cxrkit.multitask.ensemble`); :func:`saved_threshold` reads it (the JSON only: eval
never imports a training stage) and :func:`evaluate` labels every operating point with where its
threshold came from (``chosen_on``), a test-chosen one as optimistic.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError, MissingFileError
from cxrkit.eval import bootstrap, classification
from cxrkit.eval.predictions import Issues, match_ids, validate_predictions

# the file cxrkit.multitask.ensemble writes (its ENSEMBLE_FILE; a test keeps the two names equal)
ENSEMBLE_FILE = "ensemble.json"
NO_FINDING = "no finding"  # compared after normalisation: "No Finding" (NIH), "No finding" (VinDr)
OTHER_GROUP = "other"

# The screening thesis' Table 1 (Kim J., SCXNN, University of Ulsan 2024, §3.1): its 13 diseases
# in four risk groups, most severe first. The thesis takes the grouping from Nam et al., Eur Respir
# J 2021 (its ref. 38). Only spellings of the SAME finding are added: NIH ChestX-ray14 writes
# pleural effusion "Effusion".
# Pneumonia, edema and fracture are the thesis' unseen diseases (Table 9): they are in no group.
# Public datasets name these findings differently and only approximately (VinDr "Tuberculosis" has
# no active/advanced split, CheXpert's "Enlarged Cardiomediastinum" is not mediastinal widening);
# configs/scxnn/public_approximate.yaml maps them and says what is approximate.
DEFAULT_RISK_GROUPS: dict[str, tuple[str, ...]] = {
    "critical": ("Pneumothorax", "Pneumoperitoneum", "Mediastinal Widening"),
    "urgent": (
        "Pleural Effusion",
        "Effusion",
        "Nodule",
        "Consolidation",
        "Active Tuberculosis",
        "Advanced Tuberculosis",
    ),
    "non-urgent": (
        "Atelectasis",
        "Support Device",
        "Pleural Calcification",
        "Interstitial Opacity",
    ),
    "cardiomegaly": ("Cardiomegaly",),
}


def normalise(name: str) -> str:
    """Case-, space-, ``_`` and ``-``-insensitive spelling of a finding ("Pleural_Thickening")."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def check_risk_groups(groups: Mapping[str, Sequence[str]], *, source: str = "risk groups") -> None:
    """Raise :class:`ConfigError` unless ``groups`` maps names to lists of findings, each once."""
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"{source}: expected a mapping of group name -> list of findings")
    seen: dict[str, str] = {}
    for group, findings in groups.items():
        if group == OTHER_GROUP:
            raise ConfigError(f"{source}: {OTHER_GROUP!r} is reserved for unlisted findings")
        if isinstance(findings, str) or not isinstance(findings, Sequence):
            raise ConfigError(f"{source}: group {group!r} must list findings, got {findings!r}")
        for finding in findings:
            key = normalise(str(finding))
            if key in seen and seen[key] != group:
                raise ConfigError(
                    f"{source}: finding {finding!r} is in both {seen[key]!r} and {group!r}"
                )
            seen[key] = group


def load_risk_groups(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a YAML mapping ``group: [finding, ...]``; the order of the groups is their priority.

    Example::

        critical: [Pneumothorax, Pneumoperitoneum]
        urgent: [Consolidation, Pleural effusion, Mass, Nodule]
        non-urgent: [Fibrosis]
        cardiomegaly: [Cardiomegaly]
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: risk-group file not found")
    try:
        groups = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    check_risk_groups(groups, source=str(path))
    return {str(g): tuple(str(f) for f in fs) for g, fs in groups.items()}


@dataclass(frozen=True)
class SavedThreshold:
    """The operating point a screening ensemble chose before the test: ``threshold`` on its
    scores, chosen on ``split`` (``None`` when the file does not say), read from ``path``."""

    threshold: float
    split: str | None
    how: str  # "svm" (the SVM's own decision, 0) or "sensitivity" (the target on ``split``)
    target_sensitivity: float | None
    path: Path

    def label(self) -> str:
        """``"chosen on the val split at sensitivity 0.99, from runs/x/ensemble.json"`` and the
        like."""
        on = f"the {self.split} split" if self.split else "its calibration split"
        if self.how == "svm":
            what = f"the SVM's own decision, fitted on {on}"
        elif self.target_sensitivity is None:
            what = f"chosen on {on}"
        else:
            what = f"chosen on {on} at sensitivity {self.target_sensitivity:g}"
        return f"{what}, from {self.path}"


def saved_threshold(directory: str | Path) -> SavedThreshold | None:
    """The threshold saved in ``directory/ensemble.json``, or None when there is no such file.

    Raises:
        DataError: the file exists but is not JSON or has no numeric ``threshold``.
    """
    path = Path(directory) / ENSEMBLE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        threshold = float(doc["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: no readable 'threshold' in the ensemble file ({exc})") from exc
    if not math.isfinite(threshold):
        raise DataError(f"{path}: the saved threshold is {threshold}; retrain the ensemble")
    calibration = doc.get("calibration") if isinstance(doc.get("calibration"), dict) else {}
    target = doc.get("target_sensitivity")
    return SavedThreshold(
        threshold=threshold,
        split=calibration.get("split"),
        how=str(doc.get("operating_point", "sensitivity")),
        target_sensitivity=None if target is None else float(target),
        path=path,
    )


def optimistic_label(split: str | None) -> str:
    """How a report names a threshold chosen on the images it scores."""
    return f"optimistic: threshold chosen on the {split or 'evaluated'} split"


def reference_abnormal(record: Record) -> bool | None:
    """True (abnormal), False (normal) or None (no label) from a record's labels."""
    labels = {normalise(f): v for f, v in record.labels.items()}
    if any(v == 1 for f, v in labels.items() if f != NO_FINDING):
        return True
    if labels.get(NO_FINDING) == 1 or (labels and all(v == 0 for v in labels.values())):
        return False
    return None


def clopper_pearson(successes: int, total: int, *, level: float) -> list[float] | None:
    """Exact binomial interval of a proportion (scipy), None when ``total`` is 0."""
    if total == 0:
        return None
    ci = stats.binomtest(successes, total).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def confusion_summary(
    *,
    ai_normal_ref_normal: int,
    ai_normal_ref_abnormal: int,
    ai_abnormal_ref_normal: int,
    ai_abnormal_ref_abnormal: int,
    level: float = 0.95,
) -> dict[str, dict[str, object]]:
    """Sensitivity, specificity and accuracy of a normal/abnormal 2 x 2 table (thesis Table 2).

    Each rate is ``{"value", "hits", "total", "ci"}`` with the exact Clopper-Pearson interval;
    ``value`` is NaN when its denominator is 0. The thesis' internal test set (109 / 4 / 53 /
    1325) gives sensitivity 1325 / 1329 and specificity 109 / 162.
    """
    counts = (
        ai_normal_ref_normal,
        ai_normal_ref_abnormal,
        ai_abnormal_ref_normal,
        ai_abnormal_ref_abnormal,
    )
    if any(int(c) != c or c < 0 for c in counts):
        raise ValueError(f"counts must be non-negative integers, got {counts}")
    tn, fn, fp, tp = (int(c) for c in counts)

    def rate(hits: int, total: int) -> dict[str, object]:
        return {
            "value": hits / total if total else math.nan,
            "hits": hits,
            "total": total,
            "ci": clopper_pearson(hits, total, level=level),
        }

    return {
        "sensitivity": rate(tp, tp + fn),
        "specificity": rate(tn, tn + fp),
        "accuracy": rate(tp + tn, tp + tn + fp + fn),
    }


def _screening_scores(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    allow_missing: bool,
) -> tuple[list[Record], np.ndarray, np.ndarray, Issues, int]:
    df, issues = validate_predictions(
        predictions, kind="screening", allow_missing=allow_missing, source="predictions"
    )
    index = classification.records_by_id(records)
    ids = sorted(match_ids(df["image_id"], index, allow_missing=allow_missing, issues=issues))
    score_by_id = dict(zip(df["image_id"], df["score"], strict=True))
    kept, y, s, unlabelled = [], [], [], []
    for image_id in ids:
        reference = reference_abnormal(index[image_id])
        if reference is None:
            unlabelled.append(image_id)
            continue
        kept.append(index[image_id])
        y.append(1 if reference else 0)
        s.append(score_by_id[image_id])
    issues.add("images_without_labels", unlabelled)
    return kept, np.array(y, dtype=np.int8), np.array(s, dtype=np.float64), issues, len(unlabelled)


def _rate(value: float, *, hits: int, misses: int, level: float) -> dict[str, object]:
    """A rate ``value`` = ``hits / (hits + misses)`` with its exact interval (None when the
    denominator is 0)."""
    return {"value": value, "ci": clopper_pearson(hits, hits + misses, level=level)}


def _group_of(finding: str, lookup: Mapping[str, str]) -> str:
    return lookup.get(normalise(finding), OTHER_GROUP)


def evaluate(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    threshold: float | None = None,
    target_sensitivity: float | None = 0.99,
    risk_groups: Mapping[str, Sequence[str]] | None = None,
    risk_groups_source: str = "risk groups",
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    allow_missing: bool = False,
    curves: bool = True,
    threshold_source: str = "given",
    threshold_optimistic: bool = False,
    split: str | None = None,
) -> dict[str, object]:
    """Confusion matrix, sensitivity, specificity and misses by risk group.

    Args:
        predictions: ``image_id, score`` (or ``image_id, finding="abnormal", score``).
        records: manifest records with labels.
        threshold: operating point (``score >= threshold`` is abnormal). None: use the threshold
            reaching ``target_sensitivity``.
        target_sensitivity: also report the operating point at the highest threshold reaching this
            sensitivity (the thesis screens at 0.99); None skips it (then ``threshold`` is needed).
        risk_groups: group -> findings, most severe first (default :data:`DEFAULT_RISK_GROUPS`).
            In a table given here every group must name a finding the evaluated images have
            labels for; other spellings no image has are listed in ``issues``.
        risk_groups_source: where ``risk_groups`` came from (the YAML file), for messages.
        n_bootstrap, seed, level: the AUROC's patient bootstrap (0: off) and the confidence level
            of every interval (exact Clopper-Pearson for sensitivity and specificity).
        allow_missing: tolerate and report missing ids and NaN scores.
        curves: include the ROC points.
        threshold_source: where ``threshold`` comes from, for the report (``"given"``, or
            :meth:`SavedThreshold.label`); the point at ``target_sensitivity`` is always chosen on
            these images and labelled optimistic (:func:`optimistic_label`).
        threshold_optimistic: ``threshold`` was chosen on these same images (a saved threshold
            whose calibration split is the one scored); its point is then labelled optimistic.
        split: the split these images are, for the labels (None: "the evaluated split").

    Returns:
        A JSON-able dict with ``kind``, ``settings``, ``counts``, ``auroc``, ``operating_points``
        (``at_threshold`` and / or ``at_target_sensitivity``: the confusion matrix
        ``ai_normal_ref_normal``, ``ai_normal_ref_abnormal``, ``ai_abnormal_ref_normal``,
        ``ai_abnormal_ref_abnormal``, sensitivity, specificity, PPV, NPV with intervals, and
        ``risk_groups`` with the misses of each group; ``chosen_on`` says where the threshold
        came from and ``optimistic`` whether it was chosen on these images), ``issues`` and
        ``curves``.

    Raises:
        ConfigError: no operating point asked for, or a malformed ``risk_groups``.
        DataError: no image with a reference label; a group of a given ``risk_groups`` none of
            whose findings any evaluated image has a label for (a misspelling, another dataset's
            names: the group would silently stay empty).
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    if threshold is None and target_sensitivity is None:
        raise ConfigError("give a threshold or a target sensitivity for the operating point")
    groups = dict(DEFAULT_RISK_GROUPS if risk_groups is None else risk_groups)
    check_risk_groups(groups)
    lookup = {normalise(f): g for g, fs in groups.items() for f in fs}
    order = [*groups, OTHER_GROUP]
    kept, y, s, issues, n_unlabelled = _screening_scores(
        predictions, records, allow_missing=allow_missing
    )
    if y.size == 0:
        raise DataError("no predicted image has a reference label")
    if risk_groups is not None:
        # A table given here may list several spellings of a disease (each source's label
        # name, as the screening stage writes it): a spelling no image has is only reported,
        # but a group none of whose findings any image has a label for would stay empty (a
        # misspelling, another dataset's names) and is refused.
        label_names = {f for r in kept for f in r.labels}
        labelled = {normalise(f) for f in label_names}
        absent = [f for fs in groups.values() for f in fs if normalise(f) not in labelled]
        empty = [g for g, fs in groups.items() if not any(normalise(f) in labelled for f in fs)]
        if empty:
            shown = sorted(label_names)
            listed = ", ".join(shown[:20]) + (" ..." if len(shown) > 20 else "")
            named = "; ".join(f"{g!r}: {', '.join(groups[g])}" for g in empty)
            raise DataError(
                f"{risk_groups_source}: no evaluated image has a label for any finding of "
                f"group {named} (the images have: {listed}); fix the spelling or remove the group"
            )
        issues.add("risk_group_findings_not_in_labels", absent)  # listed in the report
    value = classification.auroc(y_true=y, y_score=s)
    replicates = None
    if n_bootstrap and y.size:
        weights = bootstrap.iter_patient_weights(
            groups=[r.patient_id for r in kept], n_bootstrap=n_bootstrap, seed=seed
        )
        replicates = np.concatenate(
            [classification.weighted_auroc(y_true=y, y_score=s, weights=w) for w in weights]
        )
    findings_of = [
        sorted({f for f, v in r.labels.items() if v == 1 and normalise(f) != NO_FINDING})
        for r in kept
    ]

    def operating_point(t: float) -> dict[str, object]:
        m = classification.threshold_metrics(y_true=y, y_score=s, threshold=t)
        missed = (s < t) & (y == 1)
        by_group: dict[str, dict[str, object]] = {
            g: {"n_abnormal": 0, "n_missed": 0, "missed_examples": []} for g in order
        }
        worst: dict[str, int] = dict.fromkeys(order, 0)
        for i, record in enumerate(kept):
            if y[i] != 1:
                continue
            image_groups = {_group_of(f, lookup) for f in findings_of[i]}
            for g in image_groups:
                by_group[g]["n_abnormal"] += 1
                if missed[i]:
                    by_group[g]["n_missed"] += 1
                    if len(by_group[g]["missed_examples"]) < 10:
                        by_group[g]["missed_examples"].append(record.image_id)
            if missed[i]:
                worst[min(image_groups, key=order.index)] += 1
        for entry in by_group.values():
            n, k = entry["n_abnormal"], entry["n_missed"]
            entry["miss_rate"] = k / n if n else math.nan
        return {
            "threshold": float(t),
            "ai_normal_ref_normal": m["tn"],
            "ai_normal_ref_abnormal": m["fn"],
            "ai_abnormal_ref_normal": m["fp"],
            "ai_abnormal_ref_abnormal": m["tp"],
            "sensitivity": _rate(m["sensitivity"], hits=m["tp"], misses=m["fn"], level=level),
            "specificity": _rate(m["specificity"], hits=m["tn"], misses=m["fp"], level=level),
            "ppv": _rate(m["ppv"], hits=m["tp"], misses=m["fp"], level=level),
            "npv": _rate(m["npv"], hits=m["tn"], misses=m["fn"], level=level),
            "ai_normal_fraction": float(np.mean(s < t)),
            "risk_groups": by_group,
            "misses_by_most_severe_group": worst,
        }

    points: dict[str, object] = {}
    if threshold is not None:
        points["at_threshold"] = {
            **operating_point(threshold),
            "chosen_on": (
                f"{optimistic_label(split)} ({threshold_source})"
                if threshold_optimistic
                else threshold_source
            ),
            "optimistic": threshold_optimistic,
        }
    if target_sensitivity is not None:
        if (y == 1).any():
            t = classification.threshold_for_sensitivity(
                y_true=y, y_score=s, target=target_sensitivity
            )
            points["at_target_sensitivity"] = {
                "target": target_sensitivity,
                **operating_point(t),
                "chosen_on": optimistic_label(split),
                "optimistic": True,
            }
        else:
            issues.add("no_abnormal_image_for_target_sensitivity", ["all reference images normal"])
    unlisted = sorted({f for fs in findings_of for f in fs if _group_of(f, lookup) == OTHER_GROUP})
    return {
        "kind": "screening",
        "settings": {
            "threshold": threshold,
            "threshold_source": threshold_source if threshold is not None else None,
            "target_sensitivity": target_sensitivity,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "level": level,
            "risk_groups": {g: list(fs) for g, fs in groups.items()},
            "findings_in_other_group": unlisted,
        },
        "counts": {
            "n_images": int(y.size),
            "n_abnormal": int((y == 1).sum()),
            "n_normal": int((y == 0).sum()),
            "n_unlabelled": n_unlabelled,
            "n_patients": len({r.patient_id for r in kept}),
        },
        "auroc": bootstrap.estimate(value, replicates, level=level),
        "operating_points": points,
        "issues": issues.to_dict(),
        "curves": {"roc": classification.roc_points(y_true=y, y_score=s)} if curves else {},
    }
