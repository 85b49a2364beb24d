"""The packed store: same pixels as the PNGs, verified, resumable, and optional."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from cxrkit.config import PreprocessConfig
from cxrkit.data import cache, store
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record
from cxrkit.errors import ImageReadError

RECIPE = PreprocessConfig(clip_percentiles=False, clahe=False, pad_square=False, size=64)


def make_records(folder: Path, n: int, *, seed: int = 0) -> list[Record]:
    """Noise images of different shapes (noise: every pixel matters in the comparison)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        h, w = 40 + 3 * i, 50 + 5 * i
        path = folder / f"im{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w), dtype=np.uint8))
        records.append(
            Record(
                image_id=f"1.2.{i}",
                source="t",
                path=str(path),
                patient_id=str(i),
                width=w,
                height=h,
            )
        )
    return records


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[Record]]:
    records = make_records(tmp_path / "src", 6)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=RECIPE, progress=False)
    return out, records


def png_pixels(root: Path, image_id: str) -> np.ndarray:
    return cv2.imread(str(cache.image_path(root, image_id)), cv2.IMREAD_UNCHANGED)


def test_preprocess_packs_a_store_with_the_png_pixels(built, monkeypatch) -> None:
    out, records = built
    assert store.Store.exists(out)
    c = cache.Cache(out)
    assert c.store is not None and len(c.store) == len(records)

    # the loader reads the store, never the PNG
    def no_png(*args, **kwargs):
        raise AssertionError("PNG read although the store holds the image")

    monkeypatch.setattr(cache, "read_png", no_png)
    for r in records:
        image = c.load(r.image_id)
        assert image.dtype == np.uint8 and image.flags.writeable
        np.testing.assert_array_equal(image, png_pixels(out, r.image_id))
        g = c.geometry(r.image_id)
        assert image.shape == (g.height, g.width)


def test_large_sizes_keep_pngs_only(tmp_path: Path) -> None:
    records = make_records(tmp_path / "src", 2)
    recipe = PreprocessConfig(clip_percentiles=False, clahe=False, size=store.MAX_SIDE + 1)
    build_cache(records=records, out_dir=tmp_path / "c", recipe=recipe, progress=False)
    assert not store.Store.exists(tmp_path / "c")
    assert cache.Cache(tmp_path / "c").load("1.2.0").shape == (513, 513)


def test_cache_without_store_reads_pngs(built) -> None:
    out, records = built
    shutil.rmtree(out / store.STORE_DIR)  # a cache from before the store
    c = cache.Cache(out)
    assert c.store is None
    np.testing.assert_array_equal(c.load("1.2.3"), png_pixels(out, "1.2.3"))


def test_damaged_shard_is_refused_on_first_read(built) -> None:
    out, records = built
    c = cache.Cache(out)
    (shard,) = (out / store.STORE_DIR).glob("shard-*.u8")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="crc32"):
        for r in records:
            cache.Cache(out).load(r.image_id)
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(ImageReadError, match="shorter"):
        c.load(records[-1].image_id)


def test_replaced_png_is_read_and_refused_not_served_from_store(built) -> None:
    out, _ = built
    first, second = cache.image_path(out, "1.2.0"), cache.image_path(out, "1.2.1")
    first.write_bytes(second.read_bytes())
    with pytest.raises(ImageReadError, match="sha256"):
        cache.Cache(out).load("1.2.0")


def test_pack_resumes_keeping_unchanged_shards(tmp_path: Path, monkeypatch) -> None:
    # about two images per shard
    monkeypatch.setattr(store, "SHARD_BYTES", 2 * 64 * 64)
    records = make_records(tmp_path / "src", 6)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=RECIPE, progress=False)
    shards = sorted(p.name for p in (out / store.STORE_DIR).glob("shard-*.u8"))
    assert len(shards) == 3
    rows = pq.read_table(out / cache.INDEX_FILE).to_pylist()

    again = store.pack(out, rows=rows)
    assert (again.shards_written, again.shards_kept, again.images) == (0, 3, 6)

    # one image redone: its shard is rewritten under a new name, the old one removed
    redone = make_records(tmp_path / "src2", 6, seed=1)[5]
    redone = dataclasses.replace(redone, image_id="1.2.5")
    cache.image_path(out, "1.2.5").unlink()  # the item's PNG gone: preprocess redoes it
    build_cache(records=[*records[:5], redone], out_dir=out, recipe=RECIPE, progress=False)
    now = sorted(p.name for p in (out / store.STORE_DIR).glob("shard-*.u8"))
    assert len(now) == 3 and len(set(now) & set(shards)) == 2
    c = cache.Cache(out)
    for r in records:
        np.testing.assert_array_equal(c.load(r.image_id), png_pixels(out, r.image_id))


def test_cache_with_store_pickles_for_workers(built) -> None:
    out, records = built
    c = cache.Cache(out)
    c.load("1.2.2")  # maps a shard in this process
    clone = pickle.loads(pickle.dumps(c))
    assert clone.store is not None and clone.store._maps == {}
    np.testing.assert_array_equal(clone.load("1.2.4"), c.load("1.2.4"))
