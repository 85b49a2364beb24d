"""Progress in a job's log (issue 14): count, rate and ETA lines where a tqdm bar printed nothing.

A fake clock drives the interval, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit import progress
from cxrkit.config import PreprocessConfig
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.reproduce.pipeline import Pipeline, StagePlan


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_every_interval_with_rate_and_eta(capsys):
    clock = Clock()
    bar = progress.Progress(total=1000, desc="preprocess", unit="img", every_s=30, clock=clock)
    for _ in range(10):  # 10 images in 20 s: no line yet
        clock.now += 2
        bar.update()
    clock.now += 10
    bar.update(10)  # 30 s in, 20 images: 1.5 s an image, 980 left -> 1470 s
    clock.now += 30
    bar.update(80)  # 60 s in, 100 images: 1.7 img/s, 900 left -> 540 s
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "preprocess: 0/1000 img",
        "preprocess: 20/1000 img (2.0 %), 1.5 s/img, ETA 24 min",
        "preprocess: 100/1000 img (10.0 %), 1.7 img/s, ETA 9 min",
        "preprocess: 100/1000 img done in 60 s (1.7 img/s)",
    ]


def test_unknown_total_disabled_and_terminal_forms(capsys):
    clock = Clock()
    with progress.Progress(None, desc="scan", unit="file", every_s=5, clock=clock) as bar:
        clock.now += 5
        bar.update(50)
    assert capsys.readouterr().err.splitlines() == [
        "scan: 0 file",
        "scan: 50 file, 10.0 file/s",
        "scan: 50 file done in 5 s (10.0 file/s)",
    ]
    with progress.Progress(10, desc="quiet", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
    stream = io.StringIO()
    with progress.Progress(10, desc="bar", unit="img", stream=stream, tty=True) as bar:
        bar.update(10)
    text = stream.getvalue()
    assert "bar: 100%" in text and "10/10" in text and "ETA" not in text  # tqdm's own bar


def test_track_counts_an_iterable_and_the_interval_comes_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv(progress.EVERY_ENV, "45")
    assert progress.line_interval_s() == 45.0
    assert list(progress.track(range(3), desc="predict", unit="batch")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert err.startswith("predict: 0/3 batch\n") and "predict: 3/3 batch done in" in err
    monkeypatch.setenv(progress.EVERY_ENV, "soon")
    with pytest.raises(ConfigError, match="CXRKIT_PROGRESS_S='soon'"):
        progress.line_interval_s()
    assert progress.format_duration(59) == "59 s"
    assert progress.format_duration(600) == "10 min"
    assert progress.format_duration(9000) == "2.5 h"


def _records(root: Path, n: int) -> list[Record]:
    records = []
    for i in range(n):
        path = root / f"{i}.png"
        cv2.imwrite(str(path), np.full((20, 30), 10 * i, dtype=np.uint8))
        records.append(
            Record(
                image_id=f"i{i}", source="t", path=str(path), patient_id="p", width=30, height=20
            )
        )
    return records


def test_building_a_cache_logs_progress_when_stdout_is_not_a_terminal(
    tmp_path, capsys, monkeypatch
):
    # before issue 14, tqdm (disable=None) printed nothing at all off a terminal
    monkeypatch.setenv(progress.EVERY_ENV, "1e-9")  # a line at every image
    records = _records(tmp_path, 3)
    recipe = PreprocessConfig(size=32, clahe=False)
    build_cache(records=records, out_dir=tmp_path / "cache", recipe=recipe, workers=1)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "preprocess: 0/3 img"
    assert err[-2].startswith("preprocess: 3/3 img (100.0 %), ") and "ETA 0 s" in err[-2]
    assert "img/s" in err[-2] or "s/img" in err[-2]
    assert err[-1].startswith("preprocess: 3/3 img done in ")


def test_the_pipeline_prints_the_plan_then_an_eta_and_each_stage_time(tmp_path):
    lines: list[str] = []
    stages = [
        StagePlan("prepare", "read", estimate_s=600, basis="guess"),
        StagePlan("train", "train", estimate_s=3600),
    ]
    pipe = Pipeline(tmp_path / "out", name="reproduce x", stages=stages, log=lines.append)
    pipe.print_plan()
    assert "estimated time to run: 70 min" in lines[0]
    pipe.stage("prepare", lambda: {}, settings={})
    assert lines[1].startswith("[1/2] prepare: read (t=") and "about 70 min left" in lines[1]
    assert lines[2].startswith("[1/2] prepare: finished in ") and "estimated 10 min" in lines[2]
    pipe.stage("train", lambda: {}, settings={})
    # the ETA of the second stage scales its estimate by how the first one ran against its own
    assert "left (estimates x" in lines[3] and "as the stages so far ran" in lines[3]


def test_the_demo_prints_its_plan_then_an_eta_at_each_step(capsys):
    from cxrkit.demo import _Progress

    steps = _Progress(8)
    steps.step("synth: phantoms")
    steps.step("prepare: manifests")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "demo plan: 8 steps (synth, prepare, preprocess, pretrain, finetune, predict, eval, cam)"
    )
    assert out[1].startswith("[1/8] synth: phantoms (t=") and "ETA" not in out[1]
    assert out[2].startswith("[2/8] prepare: manifests (t=") and ", ETA " in out[2]
