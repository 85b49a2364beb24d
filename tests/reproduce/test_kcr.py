"""`cxrkit reproduce kcr --scale tiny`: phantoms -> both models -> the KCR tables, resumable."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrkit import cli
from cxrkit.eval.compare import COLUMNS
from cxrkit.reproduce import kcr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kcr") / "run"
    assert cli.main(["reproduce", "kcr", "--scale", "tiny", "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_the_table_over_both_datasets(tiny_run: Path) -> None:
    table = pd.read_csv(tiny_run / "table.csv")
    assert list(table.columns) == ["dataset", *COLUMNS]
    for column in (
        "auroc_ap_difference_ci_low",
        "auroc_ap_p_value",
        "auroc_pa_difference_ci_high",
        "auroc_pa_p_value",
        "gap_change_p_value",
        "p_floor",
    ):
        assert column in table.columns
    findings = ["Consolidation", "Pneumothorax", "Nodule/Mass", "Fibrosis", "Effusion", "mean"]
    for name in kcr.TINY_EXTERNALS:
        part = table[table["dataset"] == name]
        assert list(part["finding"]) == findings
        mean = part.set_index("finding").loc["mean"]
        # the mean's difference on AP images is the mean of the per-finding AP AUROCs' difference
        per = part[part["finding"] != "mean"]
        expected = (per["auroc_ap_model2"] - per["auroc_ap_model1"]).mean()
        assert mean["auroc_ap_difference"] == pytest.approx(expected)
        assert mean["gap_model1"] == pytest.approx(
            mean["auroc_ap_model1"] - mean["auroc_pa_model1"]
        )
        assert 0 < mean["gap_change_p_value"] <= 1
        assert mean["p_floor"] == pytest.approx(2 / (kcr.SCALES["tiny"].n_bootstrap + 1))
        assert (tiny_run / name / "kcr_table.md").is_file()
        block = (tiny_run / name / "result_block.md").read_text()
        assert "AP-PA mAUROC gap" in block and "Pneumothorax" in block
    report = (tiny_run / "report.md").read_text()
    assert "Welch" in report and "p floor" in report
    for name in kcr.TINY_EXTERNALS:  # Model 1 vs Model 2 side by side, by view
        assert (tiny_run / name / "models_by_view.png").is_file()
        assert f"]({name}/models_by_view.png)" in report


def test_models_by_view_figure_legend_gives_each_models_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrkit.eval import report

    drawn: dict = {}
    real = report.comparison_figure

    def spy(path: Path, **kwargs: object) -> Path:
        drawn.update(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(report, "comparison_figure", spy)
    nan = float("nan")
    rows = [
        {"finding": "Mass", "auroc_ap_model1": 0.6, "auroc_ap_model2": 0.7,
         "auroc_pa_model1": 0.8, "auroc_pa_model2": nan},
        {"finding": "mean", "auroc_ap_model1": 0.6, "auroc_ap_model2": 0.7,
         "auroc_pa_model1": 0.8, "auroc_pa_model2": nan},
    ]  # fmt: skip
    assert kcr.models_by_view_figure(tmp_path / "f.png", rows, "public").is_file()
    assert drawn["categories"] == ["Mass"]  # the mean row is the legend's, not a bar
    assert drawn["panels"]["AP films"] == {"Model 1": [0.6], "Model 2": [0.7]}
    assert drawn["legends"]["AP films"]["Model 2"] == "Model 2 (mean AUROC 0.700)"
    assert drawn["legends"]["PA films"]["Model 2"] == "Model 2 (mean AUROC n/a)"


def test_both_models_are_selected_by_validation_mauroc(tiny_run: Path) -> None:
    for model in kcr.MODELS:
        best = tiny_run / model / "checkpoints" / "best.ckpt"
        state = torch.load(best, map_location="cpu", weights_only=True)
        monitors = [
            v["monitor"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")
        ]
        assert "val/mAUROC" in monitors


def test_rerun_skips_finished_stages_and_plan_exits(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reproduce", "kcr", "--scale", "tiny", "--out", str(tiny_run), "--plan"]) == 0
    plan = capsys.readouterr().out
    stage_lines = [line for line in plan.splitlines() if line.startswith("   ")]
    assert len(stage_lines) == 8 and all(" done " in line for line in stage_lines)
    assert cli.main(["reproduce", "kcr", "--scale", "tiny", "--out", str(tiny_run)]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 8


def test_paper_scale_needs_a_training_manifest(tmp_path: Path) -> None:
    assert cli.main(["reproduce", "kcr", "--out", str(tmp_path / "x")]) == 1
    with pytest.raises(Exception, match="NAME=MANIFEST"):
        kcr.parse_externals(["public"])
