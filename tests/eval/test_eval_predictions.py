"""Predictions files: formats, validation messages, atomic writes, id matching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.errors import DataError, MissingFileError
from cxrkit.eval.predictions import (
    Issues,
    match_ids,
    read_predictions,
    validate_predictions,
    write_predictions,
)


def classification_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["00012", "00012", "00013"],
            "finding": ["Effusion", "Mass", "Effusion"],
            "score": [0.9, 0.1, 0.4],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_round_trip_keeps_ids_as_text(tmp_path, suffix):
    path = write_predictions(classification_df(), tmp_path / f"p{suffix}", kind="classification")
    df, issues = read_predictions(path, kind="classification")
    assert df["image_id"].tolist() == ["00012", "00012", "00013"]  # leading zeros survive CSV
    assert df["score"].tolist() == [0.9, 0.1, 0.4]
    assert list(df.columns) == ["image_id", "finding", "score"]
    assert not issues.counts
    assert [p.name for p in tmp_path.iterdir()] == [f"p{suffix}"]  # no temp file left


def test_detection_round_trip_and_column_order(tmp_path):
    df = pd.DataFrame(
        {
            "x2": [30.0],
            "y2": [40.0],
            "image_id": ["a"],
            "finding": ["Nodule"],
            "score": [0.5],
            "x1": [10.0],
            "y1": [20.0],
            "extra": ["ignored"],
        }
    )
    path = write_predictions(df, tmp_path / "boxes.csv", kind="detection")
    assert path.read_text().splitlines()[0] == "image_id,finding,score,x1,y1,x2,y2"
    back, _ = read_predictions(path, kind="detection")
    assert back.iloc[0][["x1", "y1", "x2", "y2"]].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_missing_column_names_the_file_and_columns(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"image_id": ["a"], "score": [1.0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"p\.csv.*missing \['finding'\]"):
        read_predictions(path, kind="classification")


def test_nan_scores_are_an_error_with_line_numbers_unless_allowed(tmp_path):
    path = tmp_path / "p.csv"
    df = classification_df()
    df.loc[1, "score"] = np.nan
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"1 rows have a NaN.*'line 3'.*--allow-missing"):
        read_predictions(path, kind="classification")
    clean, issues = read_predictions(path, kind="classification", allow_missing=True)
    assert len(clean) == 2
    assert issues.counts == {"nan_scores": 1}
    assert issues.examples["nan_scores"] == ["line 3"]


def test_non_numeric_score_is_reported():
    df = classification_df().astype({"score": object})
    df.loc[2, "score"] = "high"
    with pytest.raises(DataError, match="column 'score' is not numeric at 'row 2'"):
        validate_predictions(df, kind="classification")


def test_duplicated_pairs_are_an_error():
    df = pd.concat([classification_df(), classification_df().iloc[:1]])
    with pytest.raises(DataError, match="00012/Effusion"):
        validate_predictions(df, kind="classification")


def test_invalid_boxes_are_an_error_or_dropped():
    df = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "finding": ["N"] * 3,
            "score": [0.1, 0.2, 0.3],
            "x1": [0.0, 5.0, 0.0],
            "y1": [0.0, 0.0, 0.0],
            "x2": [1.0, 5.0, np.inf],
            "y2": [1.0, 1.0, 1.0],
        }
    )
    with pytest.raises(DataError, match="2 rows have a non-finite, empty or inverted box"):
        validate_predictions(df, kind="detection")
    clean, issues = validate_predictions(df, kind="detection", allow_missing=True)
    assert clean["score"].tolist() == [0.1]
    assert issues.counts == {"invalid_boxes": 2}


def test_a_row_is_dropped_under_its_first_problem_only():
    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "finding": ["N"] * 3,
            "score": [np.nan, 0.2, 0.3],
            "x1": [5.0, 5.0, 0.0],
            "y1": [0.0, 0.0, 0.0],
            "x2": [1.0, 1.0, 1.0],
            "y2": [1.0, 1.0, 1.0],
        }
    )
    clean, issues = validate_predictions(df, kind="detection", allow_missing=True)
    assert clean["image_id"].tolist() == ["c"]
    assert issues.counts == {"nan_scores": 1, "invalid_boxes": 1}
    assert issues.examples == {"nan_scores": ["row 0"], "invalid_boxes": ["row 1"]}


def test_screening_accepts_two_or_three_columns():
    two = pd.DataFrame({"image_id": ["a", "b"], "score": [0.2, 0.8]})
    three = two.assign(finding="abnormal")
    a, _ = validate_predictions(two, kind="screening")
    b, _ = validate_predictions(three, kind="screening")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(DataError, match="must be 'abnormal'"):
        validate_predictions(two.assign(finding="Mass"), kind="screening")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(MissingFileError):
        read_predictions(tmp_path / "nope.csv", kind="classification")
    bad = tmp_path / "p.txt"
    bad.write_text("image_id,finding,score\n")
    with pytest.raises(DataError, match="suffix '.txt'"):
        read_predictions(bad, kind="classification")


def test_match_ids_both_sides():
    issues = Issues()
    with pytest.raises(DataError, match="1 predicted image ids are not in the manifest.*'x'"):
        match_ids(["a", "x"], ["a", "b"], allow_missing=False, issues=issues)
    with pytest.raises(DataError, match="1 manifest images have no prediction.*'b'"):
        match_ids(["a"], ["a", "b"], allow_missing=False, issues=issues)
    kept = match_ids(["a", "x"], ["a", "b"], allow_missing=True, issues=issues)
    assert kept == {"a"}
    assert issues.counts == {"ids_not_in_manifest": 1, "manifest_ids_without_prediction": 1}
    # detection: an image without rows is an image without detections, not a problem
    issues = Issues()
    assert match_ids(["a"], ["a", "b"], allow_missing=False, issues=issues, require_all=False) == {
        "a",
        "b",
    }


def test_csv_text_columns_are_never_missing_values(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image_id,finding,score\nNA,None,0.5\n00007,Mass,NaN\n")
    with pytest.raises(DataError, match="'line 3'"):  # only the score is missing
        read_predictions(path, kind="classification")
    df, _ = read_predictions(path, kind="classification", allow_missing=True)
    assert df.iloc[0].tolist() == ["NA", "None", 0.5]
