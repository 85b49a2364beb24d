"""AUROC, DeLong and operating points: golden values, scikit-learn, brute force, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrkit.errors import DataError
from cxrkit.eval import classification as cls

# ------------------------------------------------------------------------------------------------
# AUROC


def test_auroc_golden_value():
    # (pos 0.5 vs neg 0.5: tie = 1/2) + (0.5 > 0.2) + (8.3 > 0.5) + (8.3 > 0.2) = 3.5 of 4
    assert cls.auroc(y_true=[0, 1, 0, 1], y_score=[0.5, 0.5, 0.2, 8.3]) == 0.875


def test_auroc_undefined_with_one_class():
    assert math.isnan(cls.auroc(y_true=[1, 1], y_score=[0.1, 0.2]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_weighted_auroc_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes ties
    assert cls.auroc(y_true=y, y_score=s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    weights = rng.integers(0, 3, size=(4, n)).astype(float)
    got = cls.weighted_auroc(y_true=y, y_score=s, weights=weights)
    for row, w in zip(got, weights, strict=True):
        idx = np.repeat(np.arange(n), w.astype(int))  # the resampled list the weights stand for
        assert row == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_weighted_auroc_nan_when_a_class_has_no_weight():
    got = cls.weighted_auroc(y_true=[0, 1, 1], y_score=[0.1, 0.5, 0.9], weights=[[0, 1, 1]])
    assert math.isnan(got[0])


# ------------------------------------------------------------------------------------------------
# DeLong


def brute_force_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988), eqs. for V10, V01, S10, S01 written out in full."""
    x, z = scores[:, y == 1], scores[:, y == 0]
    m, n = x.shape[1], z.shape[1]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])  # (k, m, n)
    aucs = psi.mean(axis=(1, 2))
    v10 = psi.mean(axis=2)  # (k, m)
    v01 = psi.mean(axis=1)  # (k, n)
    k = len(scores)
    s10, s01 = np.zeros((k, k)), np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = np.sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1)
            s01[r, s] = np.sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1)
    return aucs, s10 / m + s01 / n


@pytest.mark.parametrize("seed", range(4))
def test_fast_delong_equals_structural_components(seed):
    rng = np.random.default_rng(seed)
    n = 40
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1
    base = rng.normal(size=n) + y
    scores = np.vstack([base, base + rng.normal(size=n), np.round(base, 0)])  # ties in the last
    aucs, cov = cls.delong_covariance(y_true=y, y_scores=scores)
    ref_aucs, ref_cov = brute_force_delong(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)


def test_hanley_mcneil_worked_example():
    # Hanley & McNeil (1982), Radiology 143:29, Table 1: 109 CT images rated 1-5; 58 normal
    # (33, 6, 6, 11, 2) and 51 abnormal (3, 2, 2, 11, 33). Published: area 0.893, SE 0.032.
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    ratings = np.arange(1, 6)
    y = np.r_[np.zeros(58), np.ones(51)]
    s = np.r_[np.repeat(ratings, normal), np.repeat(ratings, abnormal)]
    aucs, cov = cls.delong_covariance(y_true=y, y_scores=s)
    assert round(aucs[0], 3) == 0.893
    a, m, n = aucs[0], 51, 58
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley_se = math.sqrt((a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n))
    assert round(hanley_se, 3) == 0.032  # the published SE from the same area
    # DeLong's nonparametric SE is a different estimator of the same quantity
    assert math.sqrt(cov[0, 0]) == pytest.approx(hanley_se, abs=0.003)


def test_paired_delong_agrees_with_a_large_bootstrap():
    rng = np.random.default_rng(7)
    n = 400
    y = (rng.random(n) < 0.4).astype(int)
    shared = rng.normal(size=n)
    a = y * 0.8 + shared + 0.6 * rng.normal(size=n)
    b = y * 1.1 + shared + 0.6 * rng.normal(size=n)
    test = cls.delong_test_paired(y_true=y, score_a=a, score_b=b)
    assert test["difference"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    reps = cls.bootstrap_aurocs(
        labels=y[:, None].astype(float),
        scores=[a[:, None], b[:, None]],
        groups=np.arange(n).astype(str),
        subsets={"all": np.ones(n, dtype=bool)},
        n_bootstrap=1500,
        seed=0,
    )
    diff = reps[(1, "all")][:, 0] - reps[(0, "all")][:, 0]
    assert diff.std(ddof=1) == pytest.approx(test["se"], rel=0.12)
    z_boot = test["difference"] / diff.std(ddof=1)
    assert test["z"] == pytest.approx(z_boot, rel=0.12)
    assert 0 < test["p_value"] < 0.05


def test_identical_models_have_p_one():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    test = cls.delong_test_paired(y_true=y, score_a=s, score_b=s)
    assert test["difference"] == 0 and test["p_value"] == 1.0


def test_unpaired_delong_sums_variances():
    rng = np.random.default_rng(1)
    y1, y2 = rng.integers(0, 2, 50), rng.integers(0, 2, 70)
    s1, s2 = rng.normal(size=50) + y1, rng.normal(size=70) + 2 * y2
    test = cls.delong_test_unpaired(y_true_a=y1, score_a=s1, y_true_b=y2, score_b=s2)
    _, v1 = brute_force_delong(y1, s1[None])
    _, v2 = brute_force_delong(y2, s2[None])
    assert test["se"] == pytest.approx(math.sqrt(v1[0, 0] + v2[0, 0]), abs=1e-12)
    assert test["difference"] == pytest.approx(roc_auc_score(y2, s2) - roc_auc_score(y1, s1))


def test_delong_needs_two_of_each_class():
    with pytest.raises(DataError, match="at least 2 positive"):
        cls.delong_covariance(y_true=[0, 0, 1], y_scores=[0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------------
# operating points


def test_threshold_metrics_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.6]
    m = cls.threshold_metrics(y_true=y, y_score=s, threshold=0.6)  # >= 0.6 is positive
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 2, 2)
    assert m["sensitivity"] == 2 / 3 and m["specificity"] == 2 / 4
    assert m["ppv"] == 2 / 4 and m["npv"] == 2 / 3


def test_threshold_for_sensitivity_is_the_highest_reaching_it():
    y = [1, 1, 1, 1, 0, 0]
    s = [0.9, 0.8, 0.5, 0.2, 0.6, 0.1]
    assert cls.threshold_for_sensitivity(y_true=y, y_score=s, target=0.75) == 0.5
    assert cls.threshold_for_sensitivity(y_true=y, y_score=s, target=0.76) == 0.2
    assert cls.threshold_for_sensitivity(y_true=y, y_score=s, target=0.5) == 0.8


# ------------------------------------------------------------------------------------------------
# evaluate


def predictions_from(table: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [(i, f, s) for i, scores in table.items() for f, s in scores.items()]
    return pd.DataFrame(rows, columns=["image_id", "finding", "score"])


def test_evaluate_golden_values(record):
    records = [
        record("a", labels={"Mass": 0, "Effusion": 1}),
        record("b", labels={"Mass": 1, "Effusion": 0}),
        record("c", labels={"Mass": 0}),  # Effusion unknown: left out of its AUROC
        record("d", labels={"Mass": 1, "Effusion": 1}),
    ]
    preds = predictions_from(
        {
            "a": {"Mass": 0.5, "Effusion": 0.9},
            "b": {"Mass": 0.5, "Effusion": 0.3},
            "c": {"Mass": 0.2, "Effusion": 0.99},
            "d": {"Mass": 8.3, "Effusion": 0.8},
        }
    )
    result = cls.evaluate(preds, records, n_bootstrap=0)
    mass, effusion = result["per_finding"]["Mass"], result["per_finding"]["Effusion"]
    assert mass["auroc"] == {"value": 0.875, "ci": None, "n_undefined": 0}
    assert effusion["auroc"]["value"] == 1.0  # 0.9, 0.8 vs 0.3; image c ignored
    assert (effusion["n"], effusion["n_unlabelled"]) == (3, 1)
    assert result["mean"]["auroc"]["value"] == pytest.approx((0.875 + 1.0) / 2)
    at = mass["at_threshold"]  # score >= 0.5 is positive: b, d (positives) and a (negative)
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (2, 1, 1, 0)


def test_bootstrap_resamples_patients_not_images(record):
    # every patient has two identical images: a patient-level bootstrap gives exactly the
    # distribution of the one-image-per-patient set (weights double, AUROC unchanged)
    rng = np.random.default_rng(0)
    n = 30
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + y
    single = [record(f"i{i:02d}", labels={"F": int(y[i])}, patient=f"p{i:02d}") for i in range(n)]
    double = single + [
        record(f"j{i:02d}", labels={"F": int(y[i])}, patient=f"p{i:02d}") for i in range(n)
    ]
    p1 = predictions_from({f"i{i:02d}": {"F": s[i]} for i in range(n)})
    p2 = pd.concat([p1, p1.assign(image_id=p1["image_id"].str.replace("i", "j"))])
    r1 = cls.evaluate(p1, single, n_bootstrap=300, seed=5)
    r2 = cls.evaluate(p2, double, n_bootstrap=300, seed=5)
    assert r1["mean"]["auroc"]["value"] == pytest.approx(r2["mean"]["auroc"]["value"])
    np.testing.assert_allclose(r1["mean"]["auroc"]["ci"], r2["mean"]["auroc"]["ci"])
    assert r2["counts"] == {"n_images": 60, "n_patients": 30, "views": {"PA": 60}}


def test_undefined_resamples_are_counted_and_dropped(record):
    records = [record(f"i{i}", labels={"F": int(i == 0)}) for i in range(12)]
    preds = predictions_from({f"i{i}": {"F": float(i == 0)} for i in range(12)})
    result = cls.evaluate(preds, records, n_bootstrap=400, seed=0)
    auroc = result["per_finding"]["F"]["auroc"]
    # the single positive patient is absent from about (11/12)^12 = 35 % of resamples
    assert 100 < auroc["n_undefined"] < 180
    assert auroc["ci"] == [1.0, 1.0]


def test_missing_ids_and_unknown_findings(record):
    records = [record("a", labels={"F": 0}), record("b", labels={"F": 1})]
    with pytest.raises(DataError, match="1 manifest images have no prediction.*'b'"):
        cls.evaluate(predictions_from({"a": {"F": 0.1}}), records, n_bootstrap=0)
    with pytest.raises(DataError, match="1 predicted image ids are not in the manifest.*'z'"):
        cls.evaluate(
            predictions_from({"a": {"F": 0.1}, "b": {"F": 1}, "z": {"F": 1}}),
            records,
            n_bootstrap=0,
        )
    unknown = predictions_from({"a": {"F": 0.1, "G": 1}, "b": {"F": 0.9, "G": 0}})
    with pytest.raises(DataError, match="predicted findings have no label.*'G'"):
        cls.evaluate(unknown, records, n_bootstrap=0)
    result = cls.evaluate(unknown, records, n_bootstrap=0, allow_missing=True)
    assert result["findings"] == ["F"]
    assert result["issues"]["unknown_findings"] == {"count": 1, "examples": ["G"]}


def test_labelled_pair_without_score_is_reported(record):
    records = [record("a", labels={"F": 0, "G": 1}), record("b", labels={"F": 1, "G": 0})]
    preds = predictions_from({"a": {"F": 0.1, "G": 0.3}, "b": {"F": 0.9}})
    with pytest.raises(DataError, match="labelled image/finding pairs have no score.*'b/G'"):
        cls.evaluate(preds, records, n_bootstrap=0)
    result = cls.evaluate(preds, records, n_bootstrap=0, allow_missing=True)
    assert result["per_finding"]["G"]["n"] == 1
    assert math.isnan(result["per_finding"]["G"]["auroc"]["value"])
    assert result["mean"]["findings_included"] == ["F"]


def test_compare_two_models(record):
    rng = np.random.default_rng(3)
    n = 80
    y = rng.integers(0, 2, n)
    records = [record(f"i{i}", labels={"F": int(y[i])}) for i in range(n)]
    a = rng.normal(size=n) + 0.5 * y
    b = rng.normal(size=n) + 2.0 * y
    pa = predictions_from({f"i{i}": {"F": a[i]} for i in range(n)})
    pb = predictions_from({f"i{i}": {"F": b[i]} for i in range(n)})
    result = cls.compare(pa, pb, records, n_bootstrap=300)
    f = result["per_finding"]["F"]
    ref = cls.delong_test_paired(y_true=y, score_a=a, score_b=b)
    assert f["p_value"] == pytest.approx(ref["p_value"])
    assert f["difference"]["value"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    lo, hi = f["difference"]["ci"]
    assert 0 < lo < f["difference"]["value"] < hi
    assert result["mean"]["p_value"] < 0.05
