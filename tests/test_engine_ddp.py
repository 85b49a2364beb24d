"""Two real DDP processes (gloo on CPU) through the engine: the training loader's
ResumableSampler is sharded over the ranks as DistributedSampler would, and a run stopped
mid-epoch and resumed trains each rank on the batches an uninterrupted run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DistributedSampler

import cxrkit

SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
ITEMS, BATCH, EPOCHS, WORLD = 22, 2, 2, 2  # as in the script


def fit(run_dir: Path, record: Path, *, max_steps: int = -1) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(cxrkit.__file__).resolve().parents[1])}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(name, None)  # a fresh launch, whatever launched pytest
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(run_dir), str(record), "--max-steps", str(max_steps)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        json.loads(record.with_name(f"{record.stem}.rank{r}.json").read_text())
        for r in range(WORLD)
    ]


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP as subprocesses")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """An uninterrupted two-epoch run: per rank, the batches it trained on and its weights."""
    tmp = tmp_path_factory.mktemp("ddp")
    return fit(tmp / "full", tmp / "full.json")


def test_ddp_shards_the_training_loader_as_distributed_sampler(full: list[dict]) -> None:
    per_rank = ITEMS // WORLD
    batches = -(-per_rank // BATCH)  # the last batch of a rank's epoch holds 1 item
    for rank, result in enumerate(full):
        assert len(result["seen"]) == EPOCHS * batches
        for epoch in range(EPOCHS):
            seen = sum(result["seen"][epoch * batches : (epoch + 1) * batches], [])
            reference = DistributedSampler(
                range(ITEMS), num_replicas=WORLD, rank=rank, shuffle=True, seed=0, drop_last=True
            )
            reference.set_epoch(epoch)
            assert seen == list(reference)  # this rank's share, in DistributedSampler's order
    epoch0 = [set(sum(r["seen"][:batches], [])) for r in full]
    assert epoch0[0].isdisjoint(epoch0[1]) and len(epoch0[0] | epoch0[1]) == ITEMS
    assert full[0]["weights"] == full[1]["weights"]  # DDP kept the replicas equal


@pytest.mark.slow
def test_ddp_run_stopped_mid_epoch_resumes_each_rank_exactly(
    full: list[dict], tmp_path: Path
) -> None:
    # stopped 4 batches into epoch 0 (its checkpoint at the end of training), then resumed
    stopped = fit(tmp_path / "split", tmp_path / "stop.json", max_steps=4)
    resumed = fit(tmp_path / "split", tmp_path / "resume.json")
    for rank in range(WORLD):
        assert stopped[rank]["seen"] + resumed[rank]["seen"] == full[rank]["seen"]
        assert resumed[rank]["weights"] == full[rank]["weights"]
