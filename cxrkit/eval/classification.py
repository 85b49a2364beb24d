"""Classification metrics: AUROC with patient-bootstrap intervals, DeLong's tests, operating points.

Point AUROCs come from scikit-learn (``roc_auc_score``); the bootstrap re-evaluates them with
integer weights (:func:`weighted_auroc`, the Mann-Whitney statistic with ties counted one half,
which equals ``roc_auc_score`` on the resampled images). DeLong's variance uses the fast algorithm
of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21(11).

Labels follow the manifest: ``Record.labels[finding]`` is 1 or 0, and an absent finding is unknown,
so the image is left out of that finding's AUROC (and counted as ``n_unlabelled``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from cxrkit.data import findings as finding_groups
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError
from cxrkit.eval import bootstrap
from cxrkit.eval.predictions import (
    Issues,
    finding_entries,
    match_ids,
    report_or_raise,
    validate_predictions,
)

MAX_CURVE_POINTS = 400  # ROC points kept per curve in results (plots only)


# --------------------------------------------------------------------------------------------------
# AUROC


def _binary(y_true: object, y_score: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("y_score must be finite")
    return y.astype(np.int8), s


def auroc(*, y_true: object, y_score: object) -> float:
    """Area under the ROC curve (scikit-learn); NaN when ``y_true`` holds one class only.

    Ties between a positive and a negative count one half, so AUROC(y=[0,1,0,1],
    p=[0.5,0.5,0.2,8.3]) = (1 + 0.5 + 1 + 1) / 4 = 0.875.
    """
    y, s = _binary(y_true, y_score)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, s))


class _SortedScores:
    """One sort of the scores, reused by every bootstrap replicate (the order never changes)."""

    def __init__(self, y: np.ndarray, s: np.ndarray) -> None:
        order = np.argsort(s, kind="mergesort")
        self.order = order
        self.positive = y[order].astype(np.float64)
        sorted_scores = s[order]
        # first index of each group of tied scores
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        w = weights[:, self.order]
        if w.shape[1] == 0:
            return np.full(w.shape[0], math.nan)
        pos = np.add.reduceat(w * self.positive, self.starts, axis=1)  # (b, tie groups)
        neg = np.add.reduceat(w * (1.0 - self.positive), self.starts, axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        numerator = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
        denominator = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / denominator, math.nan)


def weighted_auroc(*, y_true: object, y_score: object, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of non-negative integer ``weights`` (b, n); NaN if a class has no weight.

    Row ``w`` gives the AUROC of the list in which image ``i`` appears ``w[i]`` times.
    """
    y, s = _binary(y_true, y_score)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[1] != y.size:
        raise ValueError(f"weights have {weights.shape[1]} columns for {y.size} images")
    return _SortedScores(y, s).auroc(weights)


# --------------------------------------------------------------------------------------------------
# DeLong


def delong_covariance(*, y_true: object, y_scores: object) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``k`` score vectors on the same images and DeLong's covariance of them.

    Args:
        y_true: ``(n,)`` labels 0/1 with at least two positives and two negatives.
        y_scores: ``(k, n)`` (or ``(n,)`` for one model) scores.

    Returns:
        ``(aucs (k,), covariance (k, k))`` (fast DeLong, Sun & Xu 2014: midranks instead of the
        ``m x n`` comparisons of DeLong et al. 1988).
    """
    scores = np.atleast_2d(np.asarray(y_scores, dtype=np.float64))
    y, _ = _binary(y_true, scores[0])
    positive = y == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise DataError(
            f"DeLong's variance needs at least 2 positive and 2 negative images, got {m} and {n}"
        )
    x, z = scores[:, positive], scores[:, ~positive]
    tx = stats.rankdata(x, axis=1)
    tz = stats.rankdata(z, axis=1)
    txz = stats.rankdata(np.concatenate([x, z], axis=1), axis=1)
    aucs = (txz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    # structural components: for each positive, the share of negatives ranked below it; for each
    # negative, the share of positives ranked above it (ties one half)
    v10 = (txz[:, :m] - tx) / n
    v01 = 1.0 - (txz[:, m:] - tz) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def _z_test(difference: float, variance: float) -> tuple[float, float]:
    if variance <= 0 or not math.isfinite(variance):
        # identical curves: no difference, no evidence against the null
        return (0.0, 1.0) if abs(difference) < 1e-15 else (math.nan, math.nan)
    z = difference / math.sqrt(variance)
    return float(z), float(2.0 * stats.norm.sf(abs(z)))


def delong_test_paired(*, y_true: object, score_a: object, score_b: object) -> dict[str, float]:
    """DeLong's test of AUROC(a) = AUROC(b) for two models scored on the same images.

    Returns ``auroc_a``, ``auroc_b``, ``difference`` (b - a), its ``se``, ``z`` and two-sided
    ``p_value``.
    """
    aucs, cov = delong_covariance(y_true=y_true, y_scores=np.vstack([score_a, score_b]))
    return _delong_result(aucs[0], aucs[1], variance=cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def _delong_result(auroc_a: float, auroc_b: float, *, variance: float) -> dict[str, float]:
    difference = float(auroc_b - auroc_a)
    variance = float(variance)
    z, p = _z_test(difference, variance)
    return {
        "auroc_a": float(auroc_a),
        "auroc_b": float(auroc_b),
        "difference": difference,
        "se": math.sqrt(max(variance, 0.0)),
        "z": z,
        "p_value": p,
    }


DELONG_DISTRIBUTIONS = ("normal", "t")  # unpaired test: normal z, or pROC's Student t (Welch df)
DISTRIBUTION_NAMES = {
    "normal": "normal z",
    "t": "Student t, Welch df (R pROC roc.test)",
}


def delong_test_unpaired(
    *,
    y_true_a: object,
    score_a: object,
    y_true_b: object,
    score_b: object,
    distribution: str = "normal",
) -> dict[str, float | str]:
    """DeLong's test of AUROC(a) = AUROC(b) for two disjoint image sets (e.g. AP vs PA images).

    The two AUROCs are independent, so the variance of the difference is the sum of the DeLong
    variances ``V = V_a + V_b``; the statistic is ``(AUROC_b - AUROC_a) / sqrt(V)``.

    Args:
        distribution: the reference distribution of the statistic. ``"normal"``: a z test.
            ``"t"``: R pROC's ``roc.test(paired=FALSE, method="delong")``, a Student t with the
            Welch-Satterthwaite degrees of freedom of the two variances,
            ``df = V^2 / (V_a^2 / (N_a - 1) + V_b^2 / (N_b - 1))`` where ``N`` counts the cases
            and controls of each set. The two differ most at small ``n`` (the t tails are heavier).

    Returns:
        The keys of :func:`delong_test_paired` (``difference`` = b - a; ``z`` is the statistic
        whichever the distribution) plus ``distribution`` (its name) and ``df`` (NaN for the
        normal).
    """
    if distribution not in DELONG_DISTRIBUTIONS:
        raise ConfigError(
            f"DeLong distribution {distribution!r} is not one of {DELONG_DISTRIBUTIONS}"
        )
    auc_a, var_a = delong_covariance(y_true=y_true_a, y_scores=score_a)
    auc_b, var_b = delong_covariance(y_true=y_true_b, y_scores=score_b)
    va, vb = float(var_a[0, 0]), float(var_b[0, 0])
    result: dict[str, float | str] = dict(_delong_result(auc_a[0], auc_b[0], variance=va + vb))
    result["distribution"] = DISTRIBUTION_NAMES[distribution]
    result["df"] = math.nan
    if distribution == "t":
        n_a, n_b = np.asarray(y_true_a).size, np.asarray(y_true_b).size
        denominator = va**2 / (n_a - 1) + vb**2 / (n_b - 1)
        if denominator > 0:
            df = (va + vb) ** 2 / denominator
            result["df"] = float(df)
            if math.isfinite(float(result["z"])):
                result["p_value"] = float(2.0 * stats.t.sf(abs(float(result["z"])), df))
    return result


# --------------------------------------------------------------------------------------------------
# operating points


def threshold_metrics(*, y_true: object, y_score: object, threshold: float) -> dict[str, float]:
    """Confusion counts and rates when ``score >= threshold`` is called positive.

    Returns ``threshold, tp, fp, tn, fn, sensitivity, specificity, ppv, npv`` (a rate whose
    denominator is 0 is NaN).
    """
    y, s = _binary(y_true, y_score)
    called = s >= threshold
    tp = int(np.sum(called & (y == 1)))
    fp = int(np.sum(called & (y == 0)))
    tn = int(np.sum(~called & (y == 0)))
    fn = int(np.sum(~called & (y == 1)))

    def rate(a: int, b: int) -> float:
        return a / (a + b) if a + b else math.nan

    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": rate(tp, fn),
        "specificity": rate(tn, fp),
        "ppv": rate(tp, fp),
        "npv": rate(tn, fn),
    }


def threshold_for_sensitivity(*, y_true: object, y_score: object, target: float) -> float:
    """The highest threshold whose sensitivity (``score >= threshold``) reaches ``target``.

    Raises:
        DataError: no positive image, so no sensitivity is defined.
    """
    if not 0 < target <= 1:
        raise ConfigError(f"target sensitivity must lie in (0, 1], got {target}")
    y, s = _binary(y_true, y_score)
    if not (y == 1).any():
        raise DataError("cannot choose a threshold for a sensitivity: no positive image")
    if not (y == 0).any():
        return float(np.sort(s[y == 1])[::-1][math.ceil(target * y.size) - 1])
    _, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # tpr rises as the threshold falls; the first point reaching the target is the highest one
    index = int(np.flatnonzero((tpr >= target - 1e-12) & np.isfinite(thresholds))[0])
    return float(thresholds[index])


def roc_points(*, y_true: object, y_score: object) -> dict[str, list[float]]:
    """ROC curve (scikit-learn) thinned to at most :data:`MAX_CURVE_POINTS` points, for plots."""
    y, s = _binary(y_true, y_score)
    if y.size == 0 or y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, s)
    if fpr.size > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, fpr.size - 1, MAX_CURVE_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}


# --------------------------------------------------------------------------------------------------
# predictions + manifest -> aligned arrays


@dataclass(frozen=True)
class ScoreTable:
    """Predictions aligned with the manifest, one row per image (sorted by id).

    Attributes:
        image_ids, patient_ids, views: ``(n,)`` arrays of str.
        findings: the ``F`` findings scored.
        labels: ``(n, F)`` float64, 1 / 0, NaN where the manifest does not know the label.
        scores: ``(n, F)`` float64, NaN where no score was given (only under ``allow_missing``).
        issues: problems found and tolerated under ``allow_missing``.
    """

    image_ids: np.ndarray
    patient_ids: np.ndarray
    views: np.ndarray
    findings: list[str]
    labels: np.ndarray
    scores: np.ndarray
    issues: Issues

    def restrict(self, keep: np.ndarray) -> ScoreTable:
        """The same table over the images where boolean ``keep`` is true."""
        return ScoreTable(
            image_ids=self.image_ids[keep],
            patient_ids=self.patient_ids[keep],
            views=self.views[keep],
            findings=self.findings,
            labels=self.labels[keep],
            scores=self.scores[keep],
            issues=self.issues,
        )


def records_by_id(records: Sequence[Record], *, source: str = "manifest") -> dict[str, Record]:
    """Index records by image id; a duplicated id is a :class:`DataError`."""
    index: dict[str, Record] = {}
    for record in records:
        if record.image_id in index:
            raise DataError(f"{source}: image_id {record.image_id!r} appears twice")
        index[record.image_id] = record
    return index


def score_table(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    findings: Sequence[str] | None = None,
    allow_missing: bool = False,
    source: str = "predictions",
) -> ScoreTable:
    """Align classification predictions (``image_id, finding, score``) with manifest labels.

    ``findings`` defaults to every finding in the predictions; each must have labels in the
    manifest. A group entry (``"Nodule/Mass=Nodule|Mass"``, in ``findings`` or carried by the
    predictions' ``members`` column) is labelled from its members (:mod:`cxrkit.data.findings`);
    an entry in ``findings`` wins over the file's. Missing ids on either side, findings unknown to
    the manifest, NaN scores and labelled images without a score raise :class:`DataError` with
    counts and examples, unless ``allow_missing`` (then they are left out and recorded in
    ``issues``).
    """
    df, issues = validate_predictions(
        predictions, kind="classification", allow_missing=allow_missing, source=source
    )
    entries = [*finding_entries(df), *(findings or [])]
    records = finding_groups.expand_records(records, entries)
    if findings is not None:
        findings = finding_groups.names(findings)
    index = records_by_id(records)
    known = sorted({f for r in records for f in r.labels})
    predicted_findings = sorted(df["finding"].unique())
    if findings is None:
        unknown = [f for f in predicted_findings if f not in known]
        report_or_raise(
            issues,
            "unknown_findings",
            unknown,
            message=f"predicted findings have no label in the manifest (known: {known})",
            allow_missing=allow_missing,
            source=source,
        )
        findings = [f for f in predicted_findings if f in known]
    else:
        findings = list(findings)
        absent = [f for f in findings if f not in known]
        if absent:
            raise DataError(f"manifest has no label for findings {absent} (known: {known})")
        unscored = [f for f in findings if f not in predicted_findings]
        if unscored:
            raise DataError(f"{source}: no score for findings {unscored}")
    if not findings:
        raise DataError(f"{source}: no finding left to evaluate")
    df = df[df["finding"].isin(findings)]
    ids = sorted(
        match_ids(df["image_id"], index, allow_missing=allow_missing, issues=issues, source=source)
    )
    if not ids:
        raise DataError(f"{source}: no image is both predicted and in the manifest")
    wide = df.pivot(index="image_id", columns="finding", values="score")
    scores = wide.reindex(index=ids, columns=findings).to_numpy(dtype=np.float64)
    labels = np.array(
        [[index[i].labels.get(f, math.nan) for f in findings] for i in ids], dtype=np.float64
    )
    unscored_pairs = np.isnan(scores) & ~np.isnan(labels)
    rows, cols = np.nonzero(unscored_pairs)
    report_or_raise(
        issues,
        "labelled_pairs_without_score",
        [f"{ids[r]}/{findings[c]}" for r, c in zip(rows, cols, strict=True)],
        message="labelled image/finding pairs have no score",
        allow_missing=allow_missing,
        source=source,
    )
    return ScoreTable(
        image_ids=np.array(ids, dtype=object),
        patient_ids=np.array([str(index[i].patient_id) for i in ids], dtype=object),
        views=np.array([index[i].view for i in ids], dtype=object),
        findings=findings,
        labels=labels,
        scores=scores,
        issues=issues,
    )


def model_tables(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    predictions_b: pd.DataFrame | None = None,
    findings: Sequence[str] | None = None,
    allow_missing: bool = False,
) -> list[ScoreTable]:
    """One model's :class:`ScoreTable`, or two models' tables paired (:func:`paired_tables`)."""
    a = score_table(
        predictions,
        records,
        findings=findings,
        allow_missing=allow_missing,
        source="predictions (model A)" if predictions_b is not None else "predictions",
    )
    if predictions_b is None:
        return [a]
    b = score_table(
        predictions_b,
        records,
        findings=findings,
        allow_missing=allow_missing,
        source="predictions (model B)",
    )
    return list(paired_tables(a, b))


def paired_tables(a: ScoreTable, b: ScoreTable) -> tuple[ScoreTable, ScoreTable]:
    """Restrict two models' tables to the images and findings both scored, for paired tests."""
    findings = [f for f in a.findings if f in b.findings]
    if not findings:
        raise DataError("the two models share no finding to compare")
    common = np.intersect1d(a.image_ids.astype(str), b.image_ids.astype(str))
    if common.size == 0:
        raise DataError("the two models share no image to compare")

    def select(t: ScoreTable) -> ScoreTable:
        cols = [t.findings.index(f) for f in findings]
        keep = np.isin(t.image_ids.astype(str), common)
        r = t.restrict(keep)
        return ScoreTable(
            image_ids=r.image_ids,
            patient_ids=r.patient_ids,
            views=r.views,
            findings=findings,
            labels=r.labels[:, cols],
            scores=r.scores[:, cols],
            issues=r.issues,
        )

    return select(a), select(b)


# --------------------------------------------------------------------------------------------------
# bootstrap over findings, image subsets and models at once


def bootstrap_aurocs(
    *,
    labels: np.ndarray,
    scores: Sequence[np.ndarray],
    groups: np.ndarray,
    subsets: Mapping[str, np.ndarray],
    n_bootstrap: int,
    seed: int,
) -> dict[tuple[int, str], np.ndarray]:
    """Bootstrap AUROCs of every model, subset and finding from one shared set of replicates.

    Args:
        labels: ``(n, F)`` 1 / 0 / NaN.
        scores: one ``(n, F)`` array per model (NaN = not scored).
        groups: ``(n,)`` patient ids; patients are resampled.
        subsets: name -> ``(n,)`` boolean mask of images (``{"all": ...}``, ``{"AP": ..., ...}``).
        n_bootstrap, seed: replicates and generator seed.

    Returns:
        ``{(model index, subset name): (n_bootstrap, F)}`` AUROCs, NaN where undefined. An image
        enters finding ``f`` when its label is known and *every* model scored it, so that model
        comparisons are paired.
    """
    usable = ~np.isnan(labels)
    for s in scores:
        usable &= ~np.isnan(s)
    sorted_ = {
        (k, name, f): _SortedScores(
            labels[usable[:, f] & mask, f].astype(np.int8), s[usable[:, f] & mask, f]
        )
        for k, s in enumerate(scores)
        for name, mask in subsets.items()
        for f in range(labels.shape[1])
    }
    columns = {
        (name, f): np.flatnonzero(usable[:, f] & mask)
        for name, mask in subsets.items()
        for f in range(labels.shape[1])
    }
    out = {
        (k, name): np.empty((n_bootstrap, labels.shape[1]))
        for k in range(len(scores))
        for name in subsets
    }
    row = 0
    for weights in bootstrap.iter_patient_weights(
        groups=groups, n_bootstrap=n_bootstrap, seed=seed
    ):
        block = slice(row, row + weights.shape[0])
        for (k, name, f), sorted_scores in sorted_.items():
            out[(k, name)][block, f] = sorted_scores.auroc(weights[:, columns[(name, f)]])
        row += weights.shape[0]
    return out


def mean_over_findings(replicates: np.ndarray, included: np.ndarray) -> np.ndarray:
    """Mean over the ``included`` findings per replicate; NaN (dropped later) if any undefined."""
    if not included.any():
        return np.full(replicates.shape[0], math.nan)
    return replicates[:, included].mean(axis=1)


# --------------------------------------------------------------------------------------------------
# the evaluation other stages import


def _finding_aurocs(table: ScoreTable, scores: np.ndarray | None = None) -> np.ndarray:
    scores = table.scores if scores is None else scores
    values = np.full(len(table.findings), math.nan)
    for f in range(len(table.findings)):
        ok = ~np.isnan(table.labels[:, f]) & ~np.isnan(scores[:, f])
        values[f] = auroc(y_true=table.labels[ok, f], y_score=scores[ok, f])
    return values


def evaluate(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    findings: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float | None = 0.5,
    target_sensitivity: float | None = None,
    allow_missing: bool = False,
    curves: bool = True,
) -> dict[str, object]:
    """Per-finding AUROC, mean AUROC, their patient-bootstrap intervals and operating points.

    Args:
        predictions: ``image_id, finding, score`` rows (see :mod:`cxrkit.eval.predictions`).
        records: the manifest records to score against (filter the split beforehand).
        findings: the findings to evaluate (default: every predicted finding).
        n_bootstrap: bootstrap replicates (0 turns intervals off; quick per-epoch validation).
        seed, level: bootstrap seed and confidence level.
        threshold: operating point reported as ``at_threshold`` (None: skip).
        target_sensitivity: also report the operating point at the highest threshold reaching this
            sensitivity (``at_target_sensitivity``); None skips it.
        allow_missing: tolerate and report missing ids, unknown findings and NaN scores.
        curves: include ROC points (for plots) under ``curves``.

    Returns:
        A JSON-able dict: ``kind``, ``settings``, ``counts``, ``per_finding`` (per finding: ``n``,
        ``n_positive``, ``n_negative``, ``n_unlabelled``, ``auroc`` as ``{"value", "ci",
        "n_undefined"}`` and the operating points), ``mean`` (``auroc`` over the findings whose
        AUROC is defined), ``issues`` and ``curves``.
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    table = score_table(predictions, records, findings=findings, allow_missing=allow_missing)
    values = _finding_aurocs(table)
    replicates = None
    if n_bootstrap:
        replicates = bootstrap_aurocs(
            labels=table.labels,
            scores=[table.scores],
            groups=table.patient_ids,
            subsets={"all": np.ones(len(table.image_ids), dtype=bool)},
            n_bootstrap=n_bootstrap,
            seed=seed,
        )[(0, "all")]
    per_finding: dict[str, object] = {}
    roc: dict[str, object] = {}
    for f, finding in enumerate(table.findings):
        labelled = ~np.isnan(table.labels[:, f])
        ok = labelled & ~np.isnan(table.scores[:, f])
        y, s = table.labels[ok, f], table.scores[ok, f]
        entry: dict[str, object] = {
            "n": int(ok.sum()),
            "n_positive": int((y == 1).sum()),
            "n_negative": int((y == 0).sum()),
            "n_unlabelled": int((~labelled).sum()),
            "auroc": bootstrap.estimate(
                values[f], None if replicates is None else replicates[:, f], level=level
            ),
        }
        if threshold is not None and ok.any():
            entry["at_threshold"] = threshold_metrics(y_true=y, y_score=s, threshold=threshold)
        if target_sensitivity is not None and (y == 1).any():
            t = threshold_for_sensitivity(y_true=y, y_score=s, target=target_sensitivity)
            entry["at_target_sensitivity"] = {
                "target": target_sensitivity,
                **threshold_metrics(y_true=y, y_score=s, threshold=t),
            }
        per_finding[finding] = entry
        if curves:
            roc[finding] = {"all": roc_points(y_true=y, y_score=s)}
            for view in ("AP", "PA"):
                v = ok & (table.views == view)
                roc[finding][view] = roc_points(
                    y_true=table.labels[v, f], y_score=table.scores[v, f]
                )
    included = np.isfinite(values)
    mean_value = float(values[included].mean()) if included.any() else math.nan
    return {
        "kind": "classification",
        "settings": {
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "level": level,
            "bootstrap_unit": "patient",
            "threshold": threshold,
            "target_sensitivity": target_sensitivity,
        },
        "counts": {
            "n_images": int(len(table.image_ids)),
            "n_patients": int(len(set(table.patient_ids))),
            "views": _view_counts(table.views),
        },
        "findings": table.findings,
        "per_finding": per_finding,
        "mean": {
            "auroc": bootstrap.estimate(
                mean_value,
                None if replicates is None else mean_over_findings(replicates, included),
                level=level,
            ),
            "findings_included": [f for f, ok in zip(table.findings, included, strict=True) if ok],
        },
        "issues": table.issues.to_dict(),
        "curves": {"roc": roc} if curves else {},
    }


def _view_counts(views: np.ndarray) -> dict[str, int]:
    return {
        str(k): int(v)
        for k, v in zip(*np.unique(views.astype(str), return_counts=True), strict=True)
    }


def _compare_subset(
    a: ScoreTable,
    b: ScoreTable,
    *,
    rows: np.ndarray,
    reps: dict[tuple[int, str], np.ndarray] | None,
    subset: str,
    level: float,
) -> tuple[dict[str, object], dict[str, object]]:
    """Per-finding and mean comparison of B against A over the images where ``rows`` is true."""
    both = ~np.isnan(a.scores) & ~np.isnan(b.scores) & ~np.isnan(a.labels) & rows[:, None]
    per_finding: dict[str, object] = {}
    auc_a = np.full(len(a.findings), math.nan)
    auc_b = np.full(len(a.findings), math.nan)
    for f, finding in enumerate(a.findings):
        ok = both[:, f]
        y = a.labels[ok, f]
        auc_a[f] = auroc(y_true=y, y_score=a.scores[ok, f])
        auc_b[f] = auroc(y_true=y, y_score=b.scores[ok, f])
        diff_reps = None if reps is None else reps[(1, subset)][:, f] - reps[(0, subset)][:, f]
        entry: dict[str, object] = {
            "n": int(ok.sum()),
            "n_positive": int((y == 1).sum()),
            "auroc_a": float(auc_a[f]),
            "auroc_b": float(auc_b[f]),
            "difference": bootstrap.estimate(auc_b[f] - auc_a[f], diff_reps, level=level),
        }
        if min((y == 1).sum(), (y == 0).sum()) >= 2:
            test = delong_test_paired(y_true=y, score_a=a.scores[ok, f], score_b=b.scores[ok, f])
            entry.update(z=test["z"], p_value=test["p_value"], se=test["se"])
        else:
            entry.update(z=math.nan, p_value=math.nan, se=math.nan)
        boot = bootstrap.p_value_entry(diff_reps)
        entry.update(
            p_bootstrap=boot["p_value"], p_floor=boot["p_floor"], n_replicates=boot["n_replicates"]
        )
        per_finding[finding] = entry
    included = np.isfinite(auc_a) & np.isfinite(auc_b)
    mean_a = float(auc_a[included].mean()) if included.any() else math.nan
    mean_b = float(auc_b[included].mean()) if included.any() else math.nan
    mean: dict[str, object] = {"n": int(rows.sum()), "auroc_a": mean_a, "auroc_b": mean_b}
    diff = None
    if reps is not None:
        diff = mean_over_findings(reps[(1, subset)], included) - mean_over_findings(
            reps[(0, subset)], included
        )
    mean["difference"] = bootstrap.estimate(mean_b - mean_a, diff, level=level)
    mean.update(bootstrap.p_value_entry(diff))
    mean["p_bootstrap"] = mean["p_value"]
    mean["findings_included"] = [f for f, ok in zip(a.findings, included, strict=True) if ok]
    return per_finding, mean


def compare(
    predictions_a: pd.DataFrame,
    predictions_b: pd.DataFrame,
    records: Sequence[Record],
    *,
    findings: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    allow_missing: bool = False,
    views: Sequence[str] = (),
) -> dict[str, object]:
    """Model B against model A on the same images: per-finding DeLong (paired) and the mean.

    Args:
        views: also compare the models on the images of each of these views (``("AP", "PA")``
            for KCR), from the same bootstrap replicates as the whole set.

    Returns:
        ``per_finding`` (``auroc_a``, ``auroc_b``, ``difference`` = B - A with its bootstrap
        interval, DeLong ``z`` and ``p_value``, and the paired bootstrap ``p_bootstrap`` with its
        ``p_floor``, the smallest p the replicates can give) and ``mean`` (difference of mean
        AUROCs with interval, paired bootstrap ``p_value`` and ``p_floor``); with ``views`` also
        ``per_view[view]`` holding the same ``per_finding`` and ``mean`` over that view's images.
        Only images and findings both models scored are used.
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    unknown = [v for v in views if v not in ("AP", "PA", "LL", "unknown")]
    if unknown:
        raise ConfigError(f"views {unknown} are not among AP, PA, LL, unknown")
    a, b = model_tables(
        predictions_a,
        records,
        predictions_b=predictions_b,
        findings=findings,
        allow_missing=allow_missing,
    )
    subsets = {"all": np.ones(len(a.image_ids), dtype=bool)}
    subsets.update({view: a.views == view for view in views})
    reps = None
    if n_bootstrap:
        reps = bootstrap_aurocs(
            labels=a.labels,
            scores=[a.scores, b.scores],
            groups=a.patient_ids,
            subsets=subsets,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    results = {
        name: _compare_subset(a, b, rows=rows, reps=reps, subset=name, level=level)
        for name, rows in subsets.items()
    }
    per_finding, mean = results["all"]
    issues = Issues()
    issues.merge(a.issues)
    issues.merge(b.issues)
    out: dict[str, object] = {
        "kind": "comparison",
        "settings": {
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "level": level,
            "p_floor": bootstrap.p_floor(n_bootstrap),
            "per_finding_p_value": "DeLong paired, normal z",
            "mean_p_value": "patient bootstrap, two-sided",
        },
        "n_images": int(len(a.image_ids)),
        "findings": a.findings,
        "per_finding": per_finding,
        "mean": mean,
        "issues": issues.to_dict(),
    }
    if views:
        out["per_view"] = {
            view: {"per_finding": results[view][0], "mean": results[view][1]} for view in views
        }
    return out
