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
    assert set(linear) == {f"{p}-{a}" for p in ("cxrkit", "authors") for a in driver.ARMS}
    assert all(set(v["auroc"]) == {"0.5", "1"} for v in linear.values())
    # the authors' protocol says how leaky it is; cxrkit's has no such count
    leak = linear["authors-bt"]["leakage"]["1"]
    assert 0 <= leak["patient_in_train"] <= leak["test_images"] > 0
    assert "leakage" not in linear["cxrkit-bt"]
    assert "Protocol: **authors**" in table and "Leakage of this protocol" in table
    assert Path(report["cams"]["panel"]).is_file()
    # CAM scores per arm, from the same images, with the BT - ImageNet difference
    cams = report["cams"]
    assert set(cams["scores"]) == set(driver.ARMS)
    for arm in driver.ARMS:
        with Path(cams["indexes"][arm]).open() as f:
            index = list(csv.DictReader(f))
        assert {r["image_id"] for r in index} == set(cams["images"])
        summary = cams["scores"][arm]
        assert summary["n_cams"] == len(index) == cams["cams"][arm]
        mean = sum(float(r["energy_in_box"]) for r in index) / len(index)
        assert math.isclose(summary["energy_in_box"]["value"], mean, abs_tol=1e-9)
    bt_e, im_e = (cams["scores"][a]["energy_in_box"]["value"] for a in ("bt", "imagenet"))
    assert cams["difference"]["pairing"] == "paired by image"
    assert math.isclose(cams["difference"]["energy_in_box"]["value"], bt_e - im_e, abs_tol=1e-9)
    assert "## Ablation-CAM localisation" in table and "pointing hit rate" in table
    assert {r["arm"] for r in rows if r["section"] == "cam"} == set(driver.ARMS)
    # the per-class AP50 figure, arms side by side
    assert (tiny_run / "per_class_ap50.png").is_file() and "per_class_ap50.png" in table


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


def _result(map50: float, kaggle: float, ap_a: float) -> dict:
    def est(v):
        return {"value": v, "ci": None, "n_undefined": 0}

    return {
        "mean": {"map50": est(map50), "voc_map": est(kaggle)},
        "kaggle": {"map": est(kaggle)},
        "views": {"map50": {"AP": est(map50), "PA": est(map50 - 0.1)}, "counts": {"AP": 1}},
        "per_class": {"A": {"ap50": est(ap_a), "n_gt": 3}},
        "counts": {"n_images": 5, "n_gt_boxes": 3},
    }


def test_aggregate_means_intervals_and_the_paired_difference() -> None:
    import numpy as np

    grid = [driver.Detector(arm, 224, seed) for arm in driver.ARMS for seed in range(3)]
    values = {"bt": [0.50, 0.54, 0.52], "imagenet": [0.40, 0.44, 0.42], "random": [0.1, 0.2, 0.3]}
    per, reps = {}, {}
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.02, size=400)  # the same resample moves every model alike
    for d in grid:
        v = values[d.arm][d.seed]
        per[d.name] = _result(v, v, v)
        reps[d.name] = {
            k: v + shared + rng.normal(0, 0.001, size=400)
            for k in ("map50", "kaggle_map", "voc_map", "map50_AP", "map50_PA")
        }
    out = driver.aggregate(grid, per=per, reps=reps, classes=["A"])
    bt = out["arms"][0]
    assert bt["map50"]["value"] == pytest.approx(0.52)
    # Student t, 2 degrees of freedom: 4.303 x sd 0.02 / sqrt(3)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert bt["map50"]["seed_ci"] == pytest.approx([0.52 - half, 0.52 + half], rel=1e-5)
    low, high = bt["map50"]["bootstrap_ci"]
    assert low < 0.52 < high and high - low == pytest.approx(4 * 0.02, rel=0.15)
    (diff,) = out["differences"]
    assert diff["map50"]["value"] == pytest.approx(0.10)
    # paired: the shared resample noise cancels, so the interval is narrow and excludes 0
    d_low, d_high = diff["map50"]["bootstrap_ci"]
    assert 0.09 < d_low < 0.10 < d_high < 0.11
    assert diff["map50"]["p_value"] == pytest.approx(2 / 401)
    assert bt["per_class"]["A"] == pytest.approx(0.52)
