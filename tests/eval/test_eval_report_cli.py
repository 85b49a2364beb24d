"""Reports and the `cxrkit eval` command, end to end on tiny manifests."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from cxrkit import cli as cxrkit_cli
from cxrkit.cli.eval import register
from cxrkit.data.records import Box, write_manifest
from cxrkit.eval import report


def test_formatting():
    assert report.fmt_estimate({"value": 0.8734, "ci": [0.8512, 0.8941]}) == "0.873 (0.851–0.894)"
    assert report.fmt_estimate({"value": -0.1, "ci": [-0.25, 0.05]}) == "−0.100 (−0.250 to 0.050)"
    assert report.fmt_estimate({"value": 0.5, "ci": None}) == "0.500"
    assert report.fmt_estimate({"value": math.nan, "ci": [math.nan, math.nan]}) == "n/a"
    assert report.fmt_p(0.0004) == "0.0004" and report.fmt_p(0.0123) == "0.012"
    assert report.fmt_p(0.00005) == "<0.0001" and report.fmt_p(0.0089) == "0.0089"
    assert report.fmt_number(-0.0001) == "0.000"


def test_json_has_no_nan_and_scalars_are_flat():
    result = {
        "kind": "classification",
        "per_finding": {"Mass": {"auroc": {"value": 0.9, "ci": [0.8, 1.0]}, "p_value": math.nan}},
        "mean": {"auroc": {"value": np.float64(0.9), "ci": None}},
        "settings": {"level": 0.95},
        "curves": {"roc": {}},
    }
    assert report.to_jsonable(result)["per_finding"]["Mass"]["p_value"] is None
    assert report.scalars(result) == {
        "eval/classification/per_finding/Mass/auroc": 0.9,
        "eval/classification/mean/auroc": 0.9,
    }


def make_inputs(tmp_path, record):
    rng = np.random.default_rng(0)
    records, cls_rows, cls_rows_b, det_rows, scr_rows = [], [], [], [], []
    for i in range(40):
        y = {"Mass": int(rng.random() < 0.4), "Effusion": int(rng.random() < 0.4)}
        boxes = [Box(finding="Mass", x1=10, y1=10, x2=40, y2=40, reader="R1")] if y["Mass"] else []
        view = ("AP", "PA", "unknown")[i % 3]
        split = "test" if i < 36 else "train"
        records.append(
            record(f"{i:03d}", labels=y, view=view, boxes=boxes, split=split, patient=f"p{i // 2}")
        )
        for f, v in y.items():
            cls_rows.append((f"{i:03d}", f, v + rng.normal()))
            cls_rows_b.append((f"{i:03d}", f, 2 * v + rng.normal()))
        if y["Mass"] and rng.random() < 0.8:
            det_rows.append((f"{i:03d}", "Mass", rng.random(), 12, 11, 41, 39))
        if rng.random() < 0.3:
            det_rows.append((f"{i:03d}", "Mass", rng.random() / 2, 60, 60, 90, 90))
        scr_rows.append((f"{i:03d}", 0.5 * (y["Mass"] | y["Effusion"]) + 0.6 * rng.random()))
    write_manifest(records, tmp_path / "manifest.parquet")
    pd.DataFrame(cls_rows, columns=["image_id", "finding", "score"]).to_csv(
        tmp_path / "cls.csv", index=False
    )
    pd.DataFrame(cls_rows_b, columns=["image_id", "finding", "score"]).to_parquet(
        tmp_path / "cls_b.parquet", index=False
    )
    pd.DataFrame(det_rows, columns=["image_id", "finding", "score", "x1", "y1", "x2", "y2"]).to_csv(
        tmp_path / "det.csv", index=False
    )
    pd.DataFrame(scr_rows, columns=["image_id", "score"]).to_csv(tmp_path / "scr.csv", index=False)
    return tmp_path


def run(argv):
    parser = argparse.ArgumentParser(prog="cxrkit")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_classification_cli_writes_every_output(tmp_path, record, capsys):
    d = make_inputs(tmp_path, record)
    out = d / "report"
    code = run(
        [
            "eval",
            "classification",
            "--predictions",
            str(d / "cls.csv"),
            "--predictions-b",
            str(d / "cls_b.parquet"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--split",
            "test",
            "--out",
            str(out),
            "--n-bootstrap",
            "50",
            "--target-sensitivity",
            "0.9",
        ]
    )
    assert code == 0
    assert "mean AUROC" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert data["counts"]["n_images"] == 36
    # predictions for the 4 train images (in each of the 2 files) are set aside and reported
    assert data["issues"]["predictions_for_other_splits_ignored"]["count"] == 8
    assert data["view_gaps"]["counts"]["unknown"] == 12
    assert set(data["comparison"]["per_finding"]) == {"Effusion", "Mass"}
    assert "curves" not in data and "roc" in json.loads((out / "curves.json").read_text())
    text = (out / "report.md").read_text()
    assert "## View gaps" in text and "Model 2 gap" in text and "unknown view 12" in text
    assert "## Model comparison" in text and "target sensitivity 0.9" in text
    for name in ("roc_curves.png", "view_gaps.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_detection_and_screening_cli(tmp_path, record):
    d = make_inputs(tmp_path, record)
    code = run(
        [
            "eval",
            "detection",
            "--predictions",
            str(d / "det.csv"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--split",
            "test",
            "--out",
            str(d / "det"),
            "--gt-reader",
            "R1",
            "--n-bootstrap",
            "20",
        ]
    )
    assert code == 0
    data = json.loads((d / "det" / "report.json").read_text())
    assert data["settings"]["gt_reader"] == "R1" and 0 < data["mean"]["map50"]["value"] <= 1
    assert (d / "det" / "pr_curves.png").exists() and (d / "det" / "froc.png").exists()
    assert "VOC AP@0.4" in (d / "det" / "report.md").read_text()

    groups = d / "groups.yaml"
    groups.write_text("critical: [Mass]\nurgent: [Effusion]\n")
    code = run(
        [
            "eval",
            "screening",
            "--predictions",
            str(d / "scr.csv"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--split",
            "test",
            "--out",
            str(d / "scr"),
            "--risk-groups",
            str(groups),
            "--threshold",
            "0.5",
            "--n-bootstrap",
            "20",
        ]
    )
    assert code == 0
    data = json.loads((d / "scr" / "report.json").read_text())
    assert set(data["operating_points"]) == {"at_threshold", "at_target_sensitivity"}
    assert "reference abnormal" in (d / "scr" / "report.md").read_text()


def test_views_file_and_tensorboard(tmp_path, record):
    d = make_inputs(tmp_path, record)
    (d / "views.csv").write_text("image_id,view\n" + "".join(f"{i:03d},AP\n" for i in range(40)))
    code = run(
        [
            "eval",
            "classification",
            "--predictions",
            str(d / "cls.csv"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--split",
            "test",
            "--out",
            str(d / "r"),
            "--views",
            str(d / "views.csv"),
            "--n-bootstrap",
            "0",
            "--run-dir",
            str(d / "tb"),
        ]
    )
    assert code == 0
    data = json.loads((d / "r" / "report.json").read_text())
    assert data["view_gaps"]["counts"]["AP"] == 36
    assert list((d / "tb").glob("events.out.tfevents.*"))


def test_errors_are_one_line_through_cxrkit_main(tmp_path, record, capsys):
    d = make_inputs(tmp_path, record)
    # the first two images lose their predictions
    pd.read_csv(d / "cls.csv", dtype={"image_id": str}).iloc[4:].to_csv(d / "part.csv", index=False)
    code = cxrkit_cli.main(
        [
            "eval",
            "classification",
            "--predictions",
            str(d / "part.csv"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--out",
            str(d / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "cxrkit eval: error:" in err and "manifest images have no prediction" in err
    assert "Traceback" not in err
    code = cxrkit_cli.main(
        [
            "eval",
            "classification",
            "--predictions",
            str(d / "part.csv"),
            "--manifest",
            str(d / "manifest.parquet"),
            "--out",
            str(d / "x"),
            "--allow-missing",
            "--n-bootstrap",
            "0",
        ]
    )
    assert code == 0
    text = (d / "x" / "report.md").read_text()
    assert "manifest ids without prediction: 2" in text


def test_help_shows_a_worked_example(capsys):
    with pytest.raises(SystemExit):
        run(["eval", "--help"])
    assert "cxrkit eval classification --predictions" in capsys.readouterr().out
