"""The statistics the KCR table needs: DeLong's unpaired test under both conventions, bootstrap
p floors, and model comparisons restricted to AP and PA images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.eval import bootstrap, classification, compare, views


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, float, int]:
    """AUROC, its DeLong variance and n, by the m x n comparisons of DeLong et al. (1988)."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    theta = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # per case, per control
    var = v10.var(ddof=1) / x.size + v01.var(ddof=1) / z.size
    return float(theta), float(var), int(y.size)


# A small hand case: 5 + 4 images in set a, 4 + 5 in set b, ties included
Y_A = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
S_A = np.array([0.9, 0.8, 0.8, 0.4, 0.35, 0.8, 0.3, 0.2, 0.1])
Y_B = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
S_B = np.array([0.7, 0.6, 0.3, 0.2, 0.6, 0.5, 0.4, 0.1, 0.05])


def test_unpaired_delong_t_follows_proc_welch_formula() -> None:
    auc_a, var_a, n_a = _placements(Y_A, S_A)
    auc_b, var_b, n_b = _placements(Y_B, S_B)
    statistic = (auc_b - auc_a) / math.sqrt(var_a + var_b)
    # pROC delong.unpaired.test: df = (V_R + V_S)^2 / (V_R^2 / (N_R - 1) + V_S^2 / (N_S - 1))
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    p_t = 2 * stats.t.sf(abs(statistic), df)
    p_z = 2 * stats.norm.sf(abs(statistic))

    t = classification.delong_test_unpaired(
        y_true_a=Y_A, score_a=S_A, y_true_b=Y_B, score_b=S_B, distribution="t"
    )
    z = classification.delong_test_unpaired(y_true_a=Y_A, score_a=S_A, y_true_b=Y_B, score_b=S_B)
    assert t["auroc_a"] == pytest.approx(auc_a) and t["auroc_b"] == pytest.approx(auc_b)
    assert t["z"] == pytest.approx(statistic) and z["z"] == pytest.approx(statistic)
    assert t["df"] == pytest.approx(df)
    assert t["p_value"] == pytest.approx(p_t, rel=1e-12)
    assert z["p_value"] == pytest.approx(p_z, rel=1e-12) and math.isnan(z["df"])
    assert t["p_value"] > z["p_value"]  # heavier tails at small n
    assert "Welch" in t["distribution"] and z["distribution"] == "normal z"


def test_unpaired_delong_rejects_an_unknown_distribution() -> None:
    with pytest.raises(ConfigError, match="distribution"):
        classification.delong_test_unpaired(
            y_true_a=Y_A, score_a=S_A, y_true_b=Y_B, score_b=S_B, distribution="chi2"
        )


def test_p_floor_is_the_smallest_bootstrap_p() -> None:
    for b in (2000, 20000):
        all_positive = np.linspace(0.01, 0.2, b)
        assert bootstrap.p_value(all_positive) == pytest.approx(bootstrap.p_floor(b))
    assert bootstrap.p_floor(2000) == pytest.approx(2 / 2001)  # ~0.001
    assert bootstrap.p_floor(20000) < 0.0002  # the KCR abstract's p is reachable
    entry = bootstrap.p_value_entry(np.array([0.1, math.nan, -0.2, 0.3]))
    assert entry["n_replicates"] == 3 and entry["p_floor"] == pytest.approx(0.5)
    assert math.isnan(bootstrap.p_value_entry(None)["p_floor"])


def _view_records(n: int, seed: int) -> tuple[list[Record], pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    records, rows_a, rows_b = [], [], []
    for i in range(n):
        view = "AP" if i % 2 else "PA"
        labels = {"F1": int(rng.random() < 0.4), "F2": int(rng.random() < 0.5)}
        records.append(
            Record(
                image_id=f"i{i}",
                source="s",
                path="p",
                patient_id=f"p{i // 2}",  # one AP and one PA film per patient
                width=4,
                height=4,
                view=view,
                labels=labels,
            )
        )
        for f, y in labels.items():
            noise_a = 1.5 if view == "AP" else 0.8
            rows_a.append((f"i{i}", f, y + noise_a * rng.standard_normal()))
            rows_b.append((f"i{i}", f, y + 0.6 * rng.standard_normal()))
    cols = ["image_id", "finding", "score"]
    return records, pd.DataFrame(rows_a, columns=cols), pd.DataFrame(rows_b, columns=cols)


def test_compare_per_view_equals_compare_on_that_view_alone() -> None:
    records, a, b = _view_records(120, seed=3)
    result = classification.compare(a, b, records, n_bootstrap=200, views=("AP", "PA"))
    for view in ("AP", "PA"):
        ids = {r.image_id for r in records if r.view == view}
        alone = classification.compare(
            a[a["image_id"].isin(ids)],
            b[b["image_id"].isin(ids)],
            [r for r in records if r.view == view],
            n_bootstrap=0,
        )
        got = result["per_view"][view]
        for f in ("F1", "F2"):
            for key in ("n", "auroc_a", "auroc_b", "p_value"):
                assert got["per_finding"][f][key] == pytest.approx(alone["per_finding"][f][key])
        assert got["mean"]["auroc_b"] == pytest.approx(alone["mean"]["auroc_b"])
        assert got["mean"]["p_floor"] == pytest.approx(2 / 201)
        low, high = got["mean"]["difference"]["ci"]
        assert low <= got["mean"]["difference"]["value"] <= high
    # the "all" numbers are those of the call without views
    plain = classification.compare(a, b, records, n_bootstrap=200)
    assert result["per_finding"] == plain["per_finding"]


def test_kcr_table_has_ap_and_pa_deltas_with_p_and_floor() -> None:
    records, a, b = _view_records(120, seed=4)
    table, details = compare.compare_models(a, b, records, n_bootstrap=300, delong_distribution="t")
    assert list(table.columns) == list(compare.COLUMNS)
    rows = table.set_index("finding")
    pv = details["comparison"]["per_view"]
    for view in ("ap", "pa"):
        for f in ("F1", "F2"):
            entry = pv[view.upper()]["per_finding"][f]
            assert rows.loc[f, f"auroc_{view}_difference"] == pytest.approx(
                entry["difference"]["value"]
            )
            assert rows.loc[f, f"auroc_{view}_p_value"] == pytest.approx(entry["p_value"])
        assert 0 < rows.loc["mean", f"auroc_{view}_p_value"] <= 1
        diff = rows.loc["mean", f"auroc_{view}_difference"]
        assert rows.loc["mean", f"auroc_{view}_difference_ci_low"] <= diff
        assert diff <= rows.loc["mean", f"auroc_{view}_difference_ci_high"]
    # AP and PA AUROCs are the same numbers the gap table uses
    gaps = views.evaluate(a, records, predictions_b=b, n_bootstrap=0, delong_distribution="t")
    assert rows.loc["F1", "auroc_ap_model2"] == pytest.approx(
        gaps["per_finding"]["F1"]["model_b"]["auroc_ap"]
    )
    assert rows.loc["F1", "gap_p_value_model1"] == pytest.approx(
        gaps["per_finding"]["F1"]["p_value"]
    )
    assert rows["p_floor"].tolist() == pytest.approx([2 / 301] * 3)
    assert "Welch" in rows.loc["F1", "p_method"] and rows.loc["mean", "p_method"].endswith(
        "bootstrap"
    )
