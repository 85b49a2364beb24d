"""The KCR table is cxrkit.eval's numbers, rearranged; group findings are labelled as documented."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit import cli
from cxrkit.config import save
from cxrkit.data.findings import expand_records
from cxrkit.data.records import Record
from cxrkit.eval import classification, views
from cxrkit.eval.compare import COLUMNS, compare_models
from cxrkit.eval.predictions import write_predictions
from cxrkit.multitask.config import MultiTaskConfig

from .conftest import Phantoms

FINDINGS = ["Consolidation", "Nodule/Mass=Nodule|Mass", "Effusion"]


def _record(labels: dict[str, int]) -> Record:
    return Record(
        image_id="a", source="s", path="p", patient_id="1", width=4, height=4, labels=labels
    )


def _predictions(records: list[Record], *, noise: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grouped = expand_records(records, FINDINGS)
    rows = []
    for r in grouped:
        for name in ("Consolidation", "Nodule/Mass", "Effusion"):
            rows.append((r.image_id, name, r.labels[name] + noise * rng.standard_normal()))
    return pd.DataFrame(rows, columns=["image_id", "finding", "score"])


def test_kcr_table_equals_eval_results(phantoms: Phantoms) -> None:
    records = phantoms.records
    model1 = _predictions(records, noise=2.0, seed=0)
    model2 = _predictions(records, noise=0.3, seed=1)
    table, details = compare_models(model1, model2, records, findings=FINDINGS, n_bootstrap=50)
    assert list(table.columns) == list(COLUMNS)
    assert list(table["finding"]) == ["Consolidation", "Nodule/Mass", "Effusion", "mean"]
    grouped = expand_records(records, FINDINGS)
    names = ["Consolidation", "Nodule/Mass", "Effusion"]
    direct = classification.compare(model1, model2, grouped, findings=names, n_bootstrap=50)
    gaps = views.evaluate(model1, grouped, predictions_b=model2, findings=names, n_bootstrap=50)
    for name in names:
        row = table.set_index("finding").loc[name]
        assert row["auroc_model1"] == direct["per_finding"][name]["auroc_a"]
        assert row["auroc_model2"] == direct["per_finding"][name]["auroc_b"]
        assert row["auroc_p_value"] == direct["per_finding"][name]["p_value"]
        assert row["auroc_ap_model2"] == gaps["per_finding"][name]["model_b"]["auroc_ap"]
        assert row["gap_model1"] == gaps["per_finding"][name]["gap"]["value"]
    mean = table.set_index("finding").loc["mean"]
    assert mean["auroc_model2"] > mean["auroc_model1"]
    assert 0 <= mean["auroc_p_value"] <= 1 and 0 <= mean["gap_change_p_value"] <= 1
    assert math.isclose(
        mean["gap_model1"], mean["auroc_ap_model1"] - mean["auroc_pa_model1"], abs_tol=1e-12
    )
    assert details["view_gaps"]["kind"] == "view_gaps"


def test_compare_cli_uses_the_run_config_for_groups(phantoms: Phantoms, tmp_path: Path) -> None:
    paths = []
    for k, noise in enumerate((2.0, 0.3)):
        run = tmp_path / f"model{k + 1}"
        save(MultiTaskConfig(findings=FINDINGS), run / "config.yaml")
        path = run / "predictions_test.csv"
        write_predictions(
            _predictions(phantoms.records, noise=noise, seed=k), path, kind="classification"
        )
        paths.append(path)
    out = tmp_path / "kcr.csv"
    rc = cli.main(
        [
            "multitask",
            "compare",
            "--model1",
            str(paths[0]),
            "--model2",
            str(paths[1]),
            "--manifest",
            str(phantoms.manifest),
            "--split",
            "all",
            "--n-bootstrap",
            "20",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table["finding"]) == ["Consolidation", "Nodule/Mass", "Effusion", "mean"]
    assert out.with_suffix(".json").is_file()
