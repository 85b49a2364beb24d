"""The loader benchmarks run end to end at a tiny size (no timing assertion)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import loader_throughput, pretrain_throughput


def test_loader_benchmark_runs_and_names_its_peers(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    argv = ["--images", "3", "--orig-size", "96", "--items", "3", "--load-sizes", "224",
            "--build-workers", "1", "--json", str(out)]  # fmt: skip
    assert loader_throughput.main(argv) == 0
    report = json.loads(out.read_text())
    load = report["load"]["224"]
    assert len(load["turns"]["wall_s"]["store"]) == len(load["turns"]["wall_s"]["png"]) == 5
    pairs, cls = report["pairs"], report["classification"]
    # what crosses the process boundary: two uint8 grey views vs two float32 RGB views
    assert pairs["ours_bytes_per_item"] == 2 * 224 * 224
    assert pairs["peer_bytes_per_item"] == 2 * 3 * 224 * 224 * 4
    assert cls["ours_bytes_per_item"] == cls["peer_bytes_per_item"] == 224 * 224 * 4
    assert all(v > 0 for v in (pairs["ours_per_core"], cls["peer_per_core"]))


def test_peers_produce_what_ours_does(tmp_path: Path) -> None:
    records = loader_throughput.make_originals(tmp_path / "o", n=2, side=64)
    paths = loader_throughput.pre_resized_folder(records, tmp_path / "f", size=40)
    views = loader_throughput.ByolFolder(paths, size=32)[0]["image"]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2
    image = loader_throughput.TvFolder(paths, size=32)[1]["image"]
    assert image.shape == (1, 32, 32) and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert np.ptp(image.numpy()) > 0


def test_epoch_gaps_are_measured_between_epochs_only() -> None:
    probe = pretrain_throughput._Boundaries()
    probe.steps = [(0, 0.0, 1.0), (0, 1.1, 2.0), (1, 2.5, 3.0), (1, 3.0, 4.0), (2, 4.75, 5.0)]
    assert probe.gaps() == [0.5, 0.75]
