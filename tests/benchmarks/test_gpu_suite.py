"""The GPU suite runs every part at --tiny on a CPU (no timing assertion); CUDA behind `gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite
from benchmarks._interleave import turns

PARTS = {"B2": "bare torchvision loop", "B3": "minimal lightly loop"}
DETECTION = {"B8": "torchvision references loop", "B9": "torchvision reference"}


def check_report(out: Path, *, pairs: int) -> dict:
    report = json.loads((out / "suite.json").read_text())
    assert report["B0"]["gemm"]["tflops"] > 0
    for row in report["rows"]:
        assert len(row["seconds"]) == pairs and all(s > 0 for s in row["seconds"])
        assert row["per_s"] > 0 and row["ratio_vs_peer"] > 0
    md = (out / "suite.md").read_text()
    assert md.count("| ours |") == len(report["rows"]) // 2
    return report


def test_tiny_suite_runs_every_part_on_cpu(tmp_path: Path) -> None:
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cpu", "--tiny"]) == 0
    report = check_report(tmp_path, pairs=gpu_suite.TINY.pairs)
    peers = {
        r["part"].split()[0]: r["contender"] for r in report["rows"] if r["contender"] != "ours"
    }
    assert peers == PARTS | DETECTION
    modes = {r["setting"].rsplit(", ", 1)[1] for r in report["rows"] if r["part"].startswith("B3")}
    assert modes == set(gpu_suite.TINY.bt_modes)
    split = report["B4"]["share"]
    assert set(split) == {"data", "forward", "backward", "lars"}
    assert sum(split.values()) == pytest.approx(1.0)
    b5 = report["B5"]
    assert 0 <= b5["gpu_idle_share"] < 1 and b5["pairs_per_s_loader_alone"] > 0


def test_interleave_inside_fit_alternates_and_stops(tmp_path: Path) -> None:
    # the callback runs the peer between ours' segments, exactly `pairs` rounds, then stops
    scale = gpu_suite.TINY
    calls: list[str] = []

    class Probe(gpu_suite.L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, i):
            calls.append("ours")
            return (self.w * batch["x"]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def peer():
        return lambda: calls.append("peer")

    data = gpu_suite.DataLoader(gpu_suite._Repeat({"x": torch.ones(2)}, 100), batch_size=None)
    probe = gpu_suite.fit_interleaved(
        Probe(), data, peer=peer, scale=scale, device=torch.device("cpu")
    )
    assert len(probe.ours) == len(probe.peer) == scale.pairs
    timed = calls[2 * scale.warmup :]  # ours' warm-up steps, then the peer's
    assert timed[: 2 * scale.k] == ["ours"] * scale.k + ["peer"] * scale.k


def test_turns_needs_five_rounds_and_alternates() -> None:
    order: list[str] = []
    t = turns({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0)
    assert order == ["a", "b"] * 5 and len(t.wall["a"]) == 5
    with pytest.raises(ValueError, match=">= 5"):
        turns({"a": list, "b": list}, pairs=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_suite_runs_on_cuda(tmp_path: Path) -> None:
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cuda", "--tiny"]) == 0
    report = check_report(tmp_path, pairs=gpu_suite.TINY.pairs)
    assert report["B0"]["gpu"] and report["peak_flops"]
    assert all(r["peak_gib"] is not None for r in report["rows"] if r["part"].startswith("B3"))
