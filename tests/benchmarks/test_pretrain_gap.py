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


@pytest.mark.parametrize("loader", ["ours", "ours, synchronous checkpoint"])
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
