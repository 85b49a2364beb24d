"""The stage runner every reproduction driver uses: run once, skip when done, refuse drift."""

from __future__ import annotations

import csv
import json

import pytest

from cxrkit.errors import ConfigError
from cxrkit.reproduce.pipeline import Pipeline, StagePlan, markdown_table, write_table

STAGES = [
    StagePlan("prepare", "read the data", estimate_s=10, basis="guess"),
    StagePlan("train-seed0", "train", estimate_s=3600),
    StagePlan("train-seed1", "train"),
]


def _pipeline(tmp_path, lines, **kwargs):
    return Pipeline(tmp_path / "out", name="reproduce x", stages=STAGES, log=lines.append, **kwargs)


def test_a_finished_stage_is_skipped_and_returns_its_stored_result(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"path": tmp_path / "a.txt", "score": 0.5}

    lines = []
    first = _pipeline(tmp_path, lines).stage("prepare", work, settings={"n": 3})
    again = _pipeline(tmp_path, lines).stage("prepare", work, settings={"n": 3})
    assert calls == [1]
    assert first == again == {"path": str(tmp_path / "a.txt"), "score": 0.5}
    assert "done earlier, skipped" in lines[-1]
    record = json.loads((tmp_path / "out" / "stages" / "prepare.json").read_text())
    assert record["settings"] == {"n": 3}


def test_a_stage_that_raises_leaves_no_marker_and_reruns(tmp_path):
    lines = []
    pipe = _pipeline(tmp_path, lines)

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        pipe.stage("prepare", boom, settings={})
    assert not pipe.finished("prepare")
    assert pipe.stage("prepare", lambda: {"ok": True}, settings={}) == {"ok": True}


def test_changed_settings_are_refused_naming_the_key(tmp_path):
    lines = []
    _pipeline(tmp_path, lines).stage("prepare", lambda: {}, settings={"n": 3, "size": 224})
    with pytest.raises(ConfigError, match=r"'prepare'.*size changed"):
        _pipeline(tmp_path, lines).stage("prepare", lambda: {}, settings={"n": 3, "size": 640})


def test_only_selects_by_prefix_and_names_unknown_stages(tmp_path):
    lines = []
    pipe = _pipeline(tmp_path, lines, only=["train"])
    assert pipe.stage("prepare", lambda: {"x": 1}, settings={}) is None
    assert pipe.stage("train-seed1", lambda: {"x": 2}, settings={}) == {"x": 2}
    with pytest.raises(ConfigError, match="has not run yet"):
        pipe.result("prepare")
    with pytest.raises(ConfigError, match="matches no stage.*prepare, train-seed0"):
        _pipeline(tmp_path, lines, only=["nope"])


def test_plan_lists_every_stage_with_its_state_and_the_remaining_estimate(tmp_path):
    lines = []
    pipe = _pipeline(tmp_path, lines)
    pipe.stage("prepare", lambda: {}, settings={})
    text = pipe.plan_text()
    assert "prepare" in text and "done" in text
    assert "train-seed0" in text and "to run" in text
    # the finished stage's 10 s no longer count; 3600 s do, and one stage has no estimate
    assert "estimated time to run: 60 min (+1 stage(s) without an estimate)" in text


def test_write_table_writes_the_same_rows_as_markdown_and_csv(tmp_path):
    rows = [{"arm": "BT", "mAP50": 0.123456, "n": 3}, {"arm": "a|b", "mAP50": None, "n": 2}]
    md, csv_path = write_table(tmp_path / "table", rows, ["arm", "mAP50", "n"], title="T")
    assert md.name == "table.md" and csv_path.name == "table.csv"
    text = md.read_text()
    assert text.startswith("## T\n") and "| BT | 0.123 | 3 |" in text and "a\\|b" in text
    with csv_path.open() as f:
        back = list(csv.DictReader(f))
    assert back[0] == {"arm": "BT", "mAP50": "0.123456", "n": "3"}
    assert back[1]["mAP50"] == ""


def test_markdown_table_shows_nan_as_na():
    assert "| n/a |" in markdown_table([{"x": float("nan")}], ["x"])
