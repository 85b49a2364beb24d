"""Synthetic phantoms through the real data layer (synth -> NIH adapter -> manifest -> 64 px
cache), and single-threaded torch: on a shared 2-core CPU, two spinning intra-op threads per
process make ResNet-50 steps several times slower than one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cxrkit import synth
from cxrkit.config import DataConfig, PreprocessConfig
from cxrkit.data import loading
from cxrkit.data.records import Record, write_manifest
from cxrkit.data.sources.nih import load_nih

N_IMAGES = 32
SPLITS = ["train"] * 20 + ["val"] * 4 + ["test"] * 8


@dataclass
class Phantoms:
    manifest: Path
    cache: Path
    records: list[Record]
    data: DataConfig  # manifest + 64 px cache, batch 8, no workers


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Phantoms:
    root = tmp_path_factory.mktemp("phantoms")
    synth.generate(out_dir=root, n=N_IMAGES, size=96, seed=0, datasets=("nih",), progress=False)
    records = sorted(load_nih(root=root / "nih"), key=lambda r: r.image_id)
    records = [dataclasses.replace(r, split=s) for r, s in zip(records, SPLITS, strict=True)]
    manifest = write_manifest(records, root / "manifest.parquet")
    data = DataConfig(
        manifest=str(manifest),
        cache=str(root / "cache"),
        batch_size=8,
        num_workers=0,
        preprocess=PreprocessConfig(size=64),
    )
    loading.open_cache(data, progress=False)
    return Phantoms(manifest=manifest, cache=root / "cache", records=records, data=data)
