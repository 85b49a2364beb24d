"""The epoch-gap run of benchmarks/pretrain_throughput.py end to end at a tiny size (no timing
assertion): both checkpoint writers produce the same checkpoints, and the timings are recorded
once per checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import loader_throughput, pretrain_throughput
from cxrkit.config import PreprocessConfig
from cxrkit.data import datasets
from cxrkit.data.cache import Cache
from cxrkit.data.preprocess import build_cache
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.transforms import build_view_transform


@pytest.mark.parametrize(
    "loader", ["ours", "ours, synchronous checkpoint", "Lightning's AsyncCheckpointIO (clones)"]
)
def test_epoch_gap_run_times_each_checkpoint(tmp_path: Path, loader: str) -> None:
    records = loader_throughput.make_originals(tmp_path / "originals", n=4, side=64)
    build_cache(
        records=records, out_dir=tmp_path / "cache", recipe=PreprocessConfig(size=32),
        progress=False,
    )  # fmt: skip
    dataset = datasets.UnlabeledDataset(
        records=records,
        cache=Cache(tmp_path / "cache"),
        transform=build_view_transform(views=ViewsConfig(size=32)),
    )
    out = tmp_path / "run"
    gaps, timings = pretrain_throughput.epoch_gap_run(
        dataset, loader=loader, batch=2, workers=0, epochs=3, projector=16, out=out
    )
    assert len(gaps) == 2  # three epochs, two boundaries
    # a checkpoint at every epoch's last step: 3, each built once and handed to the writer once
    assert len(timings["dump_s"]) == len(timings["save_call_s"]) == 3
    assert len(timings["size_gb"]) == 1 and timings["size_gb"][0] > 0


def test_engine_snapshot_writer_saves_each_point_in_time(tmp_path: Path) -> None:
    import torch

    from cxrkit.engine import SnapshotCheckpointIO

    writer = SnapshotCheckpointIO(pretrain_throughput._SyncAtomicCheckpointIO())
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"state_dict": {"w": weight}, "optimizer_states": [{"m": weight * 2}], "epoch": 1}
    writer.save_checkpoint(state, tmp_path / "a.ckpt")
    weight += 100  # training goes on while the thread writes
    writer.save_checkpoint(
        {**state, "optimizer_states": [{"m": weight * 2}], "epoch": 2}, tmp_path / "b.ckpt"
    )
    writer.teardown()
    a = torch.load(tmp_path / "a.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b.ckpt", weights_only=True)
    torch.testing.assert_close(a["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    torch.testing.assert_close(a["optimizer_states"][0]["m"], 2 * torch.arange(6.0).reshape(2, 3))
    torch.testing.assert_close(b["state_dict"]["w"], torch.arange(6.0).reshape(2, 3) + 100)
    assert (a["epoch"], b["epoch"]) == (1, 2)
    assert len(writer._buffers) == 2  # one buffer per tensor, reused by the second checkpoint
