"""Each benchmark of the data pipeline runs end to end at a tiny size (no timing assertion): its
peers produce what they should, and the lean peer's pixels equal ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import data_pipeline, manifest_read
from cxrkit.data.records import read_manifest


def test_data_pipeline_runs_and_the_lean_peer_matches_ours(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_pipeline, "SHARED_DATA", tmp_path / "absent")  # no NIH set: fast
    out = tmp_path / "figures.json"
    argv = ["--n", "4", "--png-side", "96", "--dicom-side", "128", "--size", "32", "--workers",
            "1", "--pairs", "5", "--json", str(out)]  # fmt: skip
    assert data_pipeline.main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report) == 3  # PNG, windowed DICOM, plain DICOM
    for figures in report.values():
        assert figures["differ"] == 0
        names = list(figures["contenders"])
        assert names == ["ours, 1 worker", "lean OpenCV/numpy (same recipe)",
                         "naive PIL loop (less work)"]  # fmt: skip
        assert all(len(c["seconds"]) == 5 for c in figures["contenders"].values())
        assert list(figures["cpu"]) == names
        for cpu in figures["cpu"].values():
            assert len(cpu["cpu_s"]) == 5 and cpu["cpu_ms_per_image"] > 0
            assert 0 <= cpu["serial_share"] < 1
        # ours' bookkeeping is counted as serial; a plain loop's CPU is all item work
        assert figures["cpu"][names[0]]["serial_share"] > 0
        assert figures["cpu"][names[2]]["serial_share"] == 0


def test_cpu_clock_counts_the_pool_workers(tmp_path: Path, monkeypatch) -> None:
    """Ours' pool processes are not children of this process: their CPU comes from the summary,
    and the serial part is what the main process spent beside items."""
    import resource

    own_cpu = data_pipeline._cpu
    # ours has no child process to reap, but the test process may reap another test's (a
    # DataLoader worker collected meanwhile): that CPU is not this run's
    monkeypatch.setattr(
        data_pipeline, "_cpu", lambda who: 0.0 if who == resource.RUSAGE_CHILDREN else own_cpu(who)
    )
    records = data_pipeline.make_pngs(tmp_path / "in", 8, side=256)
    recipe = data_pipeline.PreprocessConfig(size=32)
    clock = data_pipeline.CpuClock()
    summaries = {}
    for workers in (1, 2):
        run = clock.wrap(
            f"w{workers}",
            lambda w=workers: data_pipeline.ours(
                records, out_dir=tmp_path / f"ours{w}", recipe=recipe, workers=w
            ),
        )
        summaries[workers] = run()
        assert summaries[workers].done == 8
    assert summaries[1].pool_cpu_seconds == 0  # one worker: everything ran here
    assert summaries[2].pool_cpu_seconds > 0  # the pool process's own CPU, added:
    for workers in (1, 2):
        (total,), (serial,) = clock.timed(f"w{workers}", 1)
        assert 0 < serial < total
        # total - serial = the CPU on items, here and in the pool
        assert total - serial == pytest.approx(summaries[workers].worker_cpu_seconds, abs=1e-6)


def test_lean_peer_differs_when_the_recipe_does(tmp_path: Path) -> None:
    """check_identical can fail: a lean image made with another clip is told apart."""
    import dataclasses

    records = data_pipeline.make_pngs(tmp_path / "in", 2, side=96)
    recipe = data_pipeline.PreprocessConfig(size=32)
    data_pipeline.ours(records, out_dir=tmp_path / "ours", recipe=recipe, workers=1)
    other = dataclasses.replace(recipe, clip_low=20.0)
    data_pipeline.lean_loop(records, out_dir=tmp_path / "lean", recipe=other)
    assert data_pipeline.check_identical(records, ours_dir=tmp_path / "ours",
                                         lean_dir=tmp_path / "lean") == 2  # fmt: skip


def test_manifest_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert manifest_read.main(["--records", "300", "--pairs", "5", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["memory"]) == {"ours", "pandas"}
    assert all(m["n"] == 300 for m in figures["memory"].values())
    assert "time ours / pandas" in capsys.readouterr().out


def test_synthetic_manifest_is_nih_shaped(tmp_path: Path) -> None:
    records = read_manifest(manifest_read.make_manifest(tmp_path / "m.parquet", n=900))
    assert len(records) == 900 and len({r.patient_id for r in records}) == 225
    assert all(len(r.labels) == 15 for r in records)
    assert sum(bool(r.boxes) for r in records) == manifest_read.NIH_BOXED
    assert set(records[0].meta) >= {"age", "sex", "follow_up", "original_pixel_spacing"}
