"""``cxrkit reproduce barlowtwins-cxr``: the whole chain at tiny scale, the plan, the errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from cxrkit import cli
from cxrkit.errors import ConfigError, MissingFileError
from cxrkit.reproduce import barlowtwins_cxr as driver


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("btcxr") / "out"
    code = cli.main(
        ["reproduce", "barlowtwins-cxr", "--scale", "tiny", "--seeds", "2", "--out", str(out)]
    )
    assert code == 0
    return out


def test_tiny_chain_writes_three_arms_over_two_seeds_with_intervals(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    arms = report["eval"]["arms"]
    assert [(r["arm"], r["seeds"]) for r in arms] == [("bt", 2), ("imagenet", 2), ("random", 2)]
    for row in arms:
        assert len(row["map50"]["per_seed"]) == 2
        low, high = row["map50"]["bootstrap_ci"]
        assert low <= row["map50"]["value"] + 1e-12 and row["map50"]["value"] <= high + 1e-12
        seed_low, seed_high = row["map50"]["seed_ci"]
        mean = sum(row["map50"]["per_seed"]) / 2
        assert math.isclose((seed_low + seed_high) / 2, mean, abs_tol=1e-9)
    (difference,) = report["eval"]["differences"]
    bt, imagenet = arms[0]["map50"]["value"], arms[1]["map50"]["value"]
    assert math.isclose(difference["map50"]["value"], bt - imagenet, abs_tol=1e-12)
    assert 0 < difference["map50"]["p_value"] <= 1
    table = (tiny_run / "table.md").read_text()
    for title in ("Barlow Twins (NIH)", "ImageNet V1", "random init", "seed interval",
                  "bootstrap interval", "Kaggle mAP@0.4", "paired", "Linear evaluation",
                  "random-weight stand-in"):  # fmt: skip
        assert title in table, title
    with (tiny_run / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    detector = [r for r in rows if r["section"] == "detector" and r["metric"] == "map50"]
    assert sorted(r["arm"] for r in detector) == ["bt", "imagenet", "random"]
    assert all(r["n_seeds"] == "2" and r["per_seed"].count(";") == 1 for r in detector)
    linear = report["linear_eval"]
    assert set(linear) == {"cxrkit-bt", "cxrkit-imagenet", "cxrkit-random"}
    assert all(set(v["auroc"]) == {"0.5", "1"} for v in linear.values())
    assert Path(report["cams"]["panel"]).is_file()


def test_a_rerun_skips_every_stage(tiny_run: Path, capsys) -> None:
    before = (tiny_run / "report.json").read_text()
    code = cli.main(
        ["reproduce", "barlowtwins-cxr", "--scale", "tiny", "--seeds", "2", "--out", str(tiny_run)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == len(driver.plan(scale=driver.TINY, seeds=2))
    assert json.loads((tiny_run / "report.json").read_text()) == json.loads(before)


def test_plan_only_prints_estimates_and_runs_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "plan"
    code = cli.main(["reproduce", "barlowtwins-cxr", "--plan", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    # 800 epochs x floor(112,120 / 768) steps at the authors' logged 1.31 s per step
    assert "116,000 steps of 768" in text and "authors' LOG.TXT" in text
    assert "detector-random-640-seed2" in text and "estimated time to run" in text
    assert not (out / "stages").exists()


def test_paper_scale_needs_data_and_weights(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--nih ROOT"):
        driver.run(out_dir=tmp_path / "a", scale="paper", log=lambda _: None)
    nih, vindr = tmp_path / "nih", tmp_path / "vindr"
    nih.mkdir()
    vindr.mkdir()
    with pytest.raises(MissingFileError, match="resnet50-0676ba61.pth and pass --imagenet-v1"):
        driver.run(out_dir=tmp_path / "b", nih=nih, vindr=vindr, log=lambda _: None)
