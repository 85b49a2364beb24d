"""`cxrkit reproduce guendel --scale tiny`: both variants trained, one AUC table, head counts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrkit import cli
from cxrkit.data.records import read_manifest
from cxrkit.eval import classification
from cxrkit.eval.predictions import read_predictions
from cxrkit.reproduce import guendel


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guendel") / "run"
    assert cli.main(["reproduce", "guendel", "--scale", "tiny", "--out", str(out)]) == 0
    return out


def test_table_has_auc_with_and_without_auxiliary_heads(tiny_run: Path) -> None:
    table = pd.read_csv(tiny_run / "table.csv")
    assert list(table.columns) == list(guendel.COLUMNS)
    findings = ["Consolidation", "Pneumothorax", "Nodule/Mass", "Fibrosis", "Effusion"]
    assert list(table["finding"]) == [*findings, "mean"]
    rows = table.set_index("finding")
    # each column is that model's AUC on the test split, recomputed here from its predictions
    test = [r for r in read_manifest(tiny_run / "data" / "manifest.parquet") if r.split == "test"]
    for variant, column in (
        ("multitask", "auc_multitask"),
        ("classification", "auc_classification_only"),
    ):
        frame = read_predictions(
            tiny_run / variant / "predictions_test.csv", kind="classification"
        )[0]
        result = classification.evaluate(
            frame, test, n_bootstrap=0, curves=False, findings=guendel_findings()
        )
        for f in findings:
            expected = result["per_finding"][f]["auroc"]["value"]
            assert rows.loc[f, column] == pytest.approx(expected, nan_ok=True)
    diff = rows["auc_multitask"] - rows["auc_classification_only"]
    assert rows["auc_difference"].tolist() == pytest.approx(diff.tolist(), nan_ok=True)
    notes = (tiny_run / "table.md").read_text()
    assert "6-region grid" in notes and "not the paper's 12" in notes


def guendel_findings() -> list[str]:
    from cxrkit.reproduce.multitask_runs import load_model_config

    return load_model_config("tiny_guendel", config_dir=None, overrides=[]).findings


def test_heads_count_images_without_masks(tiny_run: Path) -> None:
    heads = pd.read_csv(tiny_run / "heads.csv")
    multitask = heads[heads["variant"] == "multitask"].set_index("head")["train_images"]
    n_train = int(heads["of_images"].iloc[0])
    # the tiny data stage drops the organ masks of every third training image
    assert multitask["classification"] == n_train
    assert multitask["segmentation"] == n_train - len(range(0, n_train, 3))
    ablation = heads[heads["variant"] == "classification"]
    assert list(ablation["head"]) == ["classification"]


def test_ablation_trains_no_auxiliary_head(tiny_run: Path) -> None:
    import yaml

    config = yaml.safe_load((tiny_run / "classification" / "config.yaml").read_text())
    assert not config["segmentation"]["enabled"] and not config["location"]["enabled"]
    full = yaml.safe_load((tiny_run / "multitask" / "config.yaml").read_text())
    assert full["segmentation"]["enabled"] and full["location"]["enabled"]
    assert config["encoder"] == full["encoder"] and config["selection"] == "val/mAUROC"
