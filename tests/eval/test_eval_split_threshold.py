"""`cxrkit eval` traps: predictions for the wrong split, and where a screening threshold comes from.

Before issue 14, detection predictions of the validation split scored against ``--split test``
exited 0 with mAP 0, and ``eval screening`` without ``--threshold`` chose its operating point on
the test split without saying so.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrkit import cli
from cxrkit.data.records import Box, write_manifest
from cxrkit.eval import predictions, screening

DET_COLUMNS = ["image_id", "finding", "score", "x1", "y1", "x2", "y2"]


def _manifest(tmp_path, record, *, n_test=20, n_val=10):
    """A manifest with ``n_test`` test and ``n_val`` val images; every other image has a Mass box
    and every image a label, so detection and screening both have references."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(n_test + n_val):
        split = "test" if i < n_test else "val"
        mass = int(i % 2 == 0)
        boxes = [Box(finding="Mass", x1=10, y1=10, x2=40, y2=40)] if mass else []
        effusion = int(rng.random() < 0.3)
        records.append(
            record(
                f"img{i:02d}",
                labels={"Mass": mass, "Effusion": effusion},
                boxes=boxes,
                split=split,
                patient=f"p{i}",
            )
        )
    return write_manifest(records, tmp_path / "m.parquet"), records


def _detections(records):
    rows = [(r.image_id, "Mass", 0.9, 11, 11, 41, 39) for r in records if r.boxes]
    return pd.DataFrame(rows, columns=DET_COLUMNS)


def _main(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_split_names_the_split_the_ids_belong_to():
    split_of = {f"v{i}": "val" for i in range(8)} | {f"t{i}": "test" for i in range(4)}
    ids = [f"v{i}" for i in range(8)] + ["t0", "t0", "stray"]  # t0 repeated counts once
    with pytest.raises(predictions.WrongSplitError) as info:
        predictions.check_split(ids, split_of, split="test", source="p.csv")
    message = str(info.value)
    assert "p.csv: 9 of 10 prediction ids are not in split 'test'" in message
    assert "'val' (8)" in message and "not in the manifest (1)" in message
    assert message.endswith("pass --split val")
    # a majority in the split passes, and says where each id lies
    assert predictions.check_split(["t0", "t1", "v0"], split_of, split="test") == {
        "test": 2,
        "val": 1,
    }
    with pytest.raises(predictions.WrongSplitError, match="wrong manifest or predictions"):
        predictions.check_split(["x", "y"], split_of, split="test")


@pytest.mark.parametrize("kind", ["detection", "classification", "screening"])
def test_predictions_of_another_split_exit_2_naming_it(tmp_path, record, capsys, kind):
    manifest, records = _manifest(tmp_path, record)
    val = [r for r in records if r.split == "val"]
    path = tmp_path / "val_predictions.csv"
    if kind == "detection":
        _detections(val).to_csv(path, index=False)
    elif kind == "classification":
        rows = [(r.image_id, f, 0.5) for r in val for f in ("Mass", "Effusion")]
        pd.DataFrame(rows, columns=["image_id", "finding", "score"]).to_csv(path, index=False)
    else:
        pd.DataFrame({"image_id": [r.image_id for r in val], "score": 0.5}).to_csv(
            path, index=False
        )
    argv = ["eval", kind, "--predictions", str(path), "--manifest", str(manifest)]
    argv += ["--split", "test", "--out", str(tmp_path / "r"), "--n-bootstrap", "0"]
    code, _, err = _main(argv, capsys)
    assert code == 2
    n = 5 if kind == "detection" else 10  # detection: rows for the 5 val images with a box
    assert f"{n} of {n} prediction ids are not in split 'test'" in err
    assert f"they are in split 'val' ({n})" in err and "pass --split val" in err
    assert "Traceback" not in err and not (tmp_path / "r" / "report.json").exists()


def test_detection_covering_part_of_the_split_warns_in_the_report(tmp_path, record, capsys):
    manifest, records = _manifest(tmp_path, record)
    test = [r for r in records if r.split == "test"]
    # predictions for the first 12 test images (6 with a box) and 2 val images: scored, with
    # the 14 test images without any row counted as images without detections
    part = _detections(test[:12] + [r for r in records if r.split == "val"][:4])
    part.to_csv(tmp_path / "part.csv", index=False)
    argv = ["eval", "detection", "--predictions", str(tmp_path / "part.csv")]
    argv += ["--manifest", str(manifest), "--split", "test", "--out", str(tmp_path / "r")]
    code, out, _ = _main([*argv, "--n-bootstrap", "0"], capsys)
    assert code == 0
    issues = json.loads((tmp_path / "r" / "report.json").read_text())["issues"]
    assert issues["images_without_prediction_rows_scored_as_no_detections"]["count"] == 14
    assert issues["predictions_for_other_splits_ignored"]["count"] == 2
    text = (tmp_path / "r" / "report.md").read_text()
    assert "images without prediction rows scored as no detections: 14" in text
    assert "images_without_prediction_rows_scored_as_no_detections" in out


def test_without_split_predictions_of_one_split_are_flagged(tmp_path, record, capsys):
    manifest, records = _manifest(tmp_path, record)
    _detections([r for r in records if r.split == "test"]).to_csv(tmp_path / "t.csv", index=False)
    argv = ["eval", "detection", "--predictions", str(tmp_path / "t.csv")]
    argv += ["--manifest", str(manifest), "--out", str(tmp_path / "r"), "--n-bootstrap", "0"]
    assert _main(argv, capsys)[0] == 0
    issues = json.loads((tmp_path / "r" / "report.json").read_text())["issues"]
    (example,) = issues["predictions_cover_one_split_only"]["examples"]
    assert "split 'test': pass --split test" in example


# --------------------------------------------------------------------------------------------------
# screening thresholds


def _screening_inputs(tmp_path, record, *, calibration_split="val", threshold=0.45):
    manifest, records = _manifest(tmp_path, record)
    run = tmp_path / "ensemble"
    run.mkdir()
    test = [r for r in records if r.split == "test"]
    # abnormal images score 0.5 + i/100, normal ones 0.1 + i/100: separable at any t in (0.3, 0.5]
    scores = [
        (0.5 if screening.reference_abnormal(r) else 0.1) + i / 100 for i, r in enumerate(test)
    ]
    pd.DataFrame({"image_id": [r.image_id for r in test], "score": scores}).to_csv(
        run / "predictions_test.csv", index=False
    )
    doc = {  # the keys cxrkit.multitask.ensemble.Ensemble.save writes
        "version": 1,
        "threshold": threshold,
        "target_sensitivity": 0.99,
        "operating_point": "sensitivity",
        "calibration": {"split": calibration_split, "tp": 3, "fn": 0},
    }
    (run / "ensemble.json").write_text(json.dumps(doc))
    return manifest, run


def _screen(tmp_path, manifest, predictions_path, capsys, *extra):
    argv = ["eval", "screening", "--predictions", str(predictions_path)]
    argv += ["--manifest", str(manifest), "--split", "test", "--out", str(tmp_path / "s")]
    code, out, err = _main([*argv, "--n-bootstrap", "0", *extra], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "s" / "report.json").read_text())
    return data, (tmp_path / "s" / "report.md").read_text(), out, err


def test_screening_defaults_to_the_saved_validation_threshold(tmp_path, record, capsys):
    manifest, run = _screening_inputs(tmp_path, record)
    data, text, out, _ = _screen(tmp_path, manifest, run / "predictions_test.csv", capsys)
    point = data["operating_points"]["at_threshold"]
    assert point["threshold"] == 0.45 and point["optimistic"] is False
    assert point["chosen_on"] == (
        f"chosen on the val split at sensitivity 0.99, from {run / 'ensemble.json'}"
    )
    assert data["settings"]["threshold_source"] == point["chosen_on"]
    assert "threshold 0.4500 (chosen on the val split at sensitivity 0.99, from " in text
    # the test-chosen point is still reported, and labelled for what it is
    target = data["operating_points"]["at_target_sensitivity"]
    assert target["optimistic"] is True
    assert "optimistic: threshold chosen on the test split" in text
    assert "threshold 0.4500 (chosen on the val split" in out


def test_screening_test_optimal_or_no_saved_threshold_is_labelled_optimistic(
    tmp_path, record, capsys
):
    manifest, run = _screening_inputs(tmp_path, record)
    data, text, _, _ = _screen(
        tmp_path, manifest, run / "predictions_test.csv", capsys, "--threshold", "test-optimal"
    )
    assert set(data["operating_points"]) == {"at_target_sensitivity"}
    assert "optimistic: threshold chosen on the test split" in text
    # predictions elsewhere, no --ensemble: nothing saved to use, said on stderr and in the report
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_bytes((run / "predictions_test.csv").read_bytes())
    data, text, _, err = _screen(tmp_path, manifest, elsewhere, capsys)
    assert set(data["operating_points"]) == {"at_target_sensitivity"}
    assert "no ensemble.json with a saved threshold" in err
    assert "optimistic: threshold chosen on the test split" in text
    # --ensemble finds it from anywhere; a given number wins over it
    data, _, _, _ = _screen(tmp_path, manifest, elsewhere, capsys, "--ensemble", str(run))
    assert data["operating_points"]["at_threshold"]["threshold"] == 0.45
    data, _, _, _ = _screen(tmp_path, manifest, elsewhere, capsys, "--threshold", "0.3")
    assert data["operating_points"]["at_threshold"]["chosen_on"] == "given with --threshold"


def test_a_threshold_saved_from_the_test_split_is_optimistic_too(tmp_path, record, capsys):
    manifest, run = _screening_inputs(tmp_path, record, calibration_split="test")
    data, text, _, _ = _screen(tmp_path, manifest, run / "predictions_test.csv", capsys)
    point = data["operating_points"]["at_threshold"]
    assert point["optimistic"] is True
    assert point["chosen_on"].startswith("optimistic: threshold chosen on the test split (")


def test_saved_threshold_reads_the_file_the_ensemble_writes(tmp_path):
    from cxrkit.multitask import ensemble

    assert screening.ENSEMBLE_FILE == ensemble.ENSEMBLE_FILE
    assert screening.saved_threshold(tmp_path) is None
    (tmp_path / "ensemble.json").write_text(
        json.dumps({"threshold": 0.0, "operating_point": "svm", "calibration": {"split": "val"}})
    )
    saved = screening.saved_threshold(tmp_path)
    assert saved is not None and saved.threshold == 0.0 and saved.split == "val"
    assert saved.label().startswith("the SVM's own decision, fitted on the val split, from ")
    (tmp_path / "ensemble.json").write_text('{"threshold": 1.5}')  # no split, no target
    assert screening.saved_threshold(tmp_path).label() == (
        f"chosen on its calibration split, from {tmp_path / 'ensemble.json'}"
    )
    (tmp_path / "ensemble.json").write_text('{"members": []}')
    with pytest.raises(screening.DataError, match="no readable 'threshold'"):
        screening.saved_threshold(tmp_path)
