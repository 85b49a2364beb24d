"""AP/PA view gaps on a hand-made set with a known answer, the gap change, view mappings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrkit.errors import DataError
from cxrkit.eval import classification, views


def hand_made(record):
    """AP: AUROC 0.875 (the golden case); PA: 1.0; plus one unknown-view and one LL image."""
    ap_y, ap_s = [0, 1, 0, 1], [0.5, 0.5, 0.2, 8.3]
    pa_y, pa_s = [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]
    records, rows_a, rows_b = [], [], []
    for view, ys, ss in (("AP", ap_y, ap_s), ("PA", pa_y, pa_s)):
        for i, (y, s) in enumerate(zip(ys, ss, strict=True)):
            image = f"{view}{i}"
            records.append(record(image, labels={"F": y, "G": y}, view=view))
            rows_a += [(image, "F", s), (image, "G", s)]
            # model B separates AP perfectly: its F gap is 0
            rows_b += [(image, "F", float(y) if view == "AP" else s), (image, "G", s)]
    for image, view in (("U0", "unknown"), ("L0", "LL")):
        records.append(record(image, labels={"F": 1, "G": 0}, view=view))
        rows_a += [(image, "F", 0.0), (image, "G", 0.0)]
        rows_b += [(image, "F", 0.0), (image, "G", 0.0)]
    columns = ["image_id", "finding", "score"]
    return records, pd.DataFrame(rows_a, columns=columns), pd.DataFrame(rows_b, columns=columns)


def test_gap_known_answer(record):
    records, preds, _ = hand_made(record)
    result = views.evaluate(preds, records, n_bootstrap=0)
    f = result["per_finding"]["F"]
    assert (f["auroc_ap"], f["auroc_pa"]) == (0.875, 1.0)
    assert f["gap"]["value"] == pytest.approx(-0.125)
    assert (f["n_ap"], f["n_pa"]) == (4, 4)
    ref = classification.delong_test_unpaired(
        y_true_a=[0, 1, 0, 1],
        score_a=[0.1, 0.9, 0.2, 0.8],
        y_true_b=[0, 1, 0, 1],
        score_b=[0.5, 0.5, 0.2, 8.3],
    )
    assert f["p_value"] == pytest.approx(ref["p_value"])
    assert ref["difference"] == pytest.approx(-0.125)
    assert result["mean"]["gap"]["value"] == pytest.approx(-0.125)
    # unknown and LL views are counted, not silently dropped
    assert result["counts"] == {"PA": 4, "AP": 4, "LL": 1, "unknown": 1}


def test_gap_change_between_two_models(record):
    records, preds_a, preds_b = hand_made(record)
    result = views.evaluate(preds_a, records, predictions_b=preds_b, n_bootstrap=200, seed=1)
    f, g = result["per_finding"]["F"], result["per_finding"]["G"]
    assert f["model_b"]["gap"]["value"] == pytest.approx(0.0)
    assert f["gap_change"]["value"] == pytest.approx(0.125)
    assert g["gap_change"]["value"] == pytest.approx(0.0)
    assert g["p_gap_change"] == 1.0  # identical scores for G: every paired replicate is 0
    assert result["mean"]["gap_change"]["value"] == pytest.approx(0.0625)
    lo, hi = f["gap"]["ci"]
    assert lo <= -0.125 <= hi
    assert result["settings"]["models"] == 2


def test_gap_bootstrap_against_explicit_resampling(record):
    # the vectorised bootstrap equals recomputing scikit-learn AUROCs on the resampled images
    rng = np.random.default_rng(2)
    n = 40
    y = rng.integers(0, 2, n)
    y[:4] = [0, 1, 0, 1]
    s = rng.normal(size=n) + y
    view = np.where(np.arange(n) % 2 == 0, "AP", "PA")
    patient = [f"p{i // 2}" for i in range(n)]  # each patient: one AP and one PA image
    records = [
        record(f"i{i:02d}", labels={"F": int(y[i])}, view=view[i], patient=patient[i])
        for i in range(n)
    ]
    preds = pd.DataFrame({"image_id": [r.image_id for r in records], "finding": "F", "score": s})
    reps = classification.bootstrap_aurocs(
        labels=y[:, None].astype(float),
        scores=[s[:, None]],
        groups=np.array(patient),
        subsets={"AP": view == "AP", "PA": view == "PA"},
        n_bootstrap=5,
        seed=9,
    )
    weights = np.concatenate(
        list(classification.bootstrap.iter_patient_weights(groups=patient, n_bootstrap=5, seed=9))
    )
    for b in range(5):
        idx = np.repeat(np.arange(n), weights[b].astype(int))
        for v in ("AP", "PA"):
            keep = idx[view[idx] == v]
            ref = classification.auroc(y_true=y[keep], y_score=s[keep])
            assert reps[(0, v)][b, 0] == pytest.approx(ref, nan_ok=True)
    result = views.evaluate(preds, records, n_bootstrap=5, seed=9)
    gap_reps = reps[(0, "AP")][:, 0] - reps[(0, "PA")][:, 0]
    lo, hi, _ = classification.bootstrap.percentile_interval(gap_reps, level=0.95)
    assert result["per_finding"]["F"]["gap"]["ci"] == pytest.approx([lo, hi])


def test_no_ap_images_gives_nan_not_an_error(record):
    records = [record(f"i{i}", labels={"F": i % 2}, view="unknown") for i in range(6)]
    preds = pd.DataFrame(
        {"image_id": [f"i{i}" for i in range(6)], "finding": "F", "score": np.arange(6.0)}
    )
    result = views.evaluate(preds, records, n_bootstrap=20)
    assert math.isnan(result["per_finding"]["F"]["gap"]["value"])
    assert result["counts"]["unknown"] == 6


def test_view_map_read_and_apply(tmp_path, record):
    path = tmp_path / "views.csv"
    path.write_text("image_id,view\n001,AP\n002,PA\n999,PA\n")
    mapping = views.read_view_map(path)
    assert mapping == {"001": "AP", "002": "PA", "999": "PA"}
    records = [record("001", view="unknown"), record("002"), record("003", view="AP")]
    out, counts = views.apply_view_map(records, mapping)
    assert [r.view for r in out] == ["AP", "PA", "AP"]
    assert counts == {"mapped": 2, "not_in_mapping": 1, "mapping_ids_not_in_manifest": 1}
    assert records[0].view == "unknown"  # the input records are not modified


def test_view_map_errors(tmp_path):
    bad = tmp_path / "views.csv"
    bad.write_text("image_id,view\n001,lateral\n")
    with pytest.raises(DataError, match="line 2: 'lateral'"):
        views.read_view_map(bad)
    bad.write_text("image_id,view\n001,AP\n001,PA\n")
    with pytest.raises(DataError, match="different views"):
        views.read_view_map(bad)
