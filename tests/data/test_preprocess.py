"""The preprocessing recipe (golden geometry, each switch against a reference) and the cache writer
(layout, resume, skip/fail, CLI)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cxrkit
from cxrkit import cli
from cxrkit.config import PreprocessConfig
from cxrkit.data import cache, store
from cxrkit.data.cache import Cache, Geometry
from cxrkit.data.preprocess import apply_recipe, build_cache, percentiles, transform_mask
from cxrkit.data.records import Record, write_manifest
from cxrkit.errors import ConfigError, DataError, ImageReadError

PLAIN = PreprocessConfig(clip_percentiles=False, clahe=False, pad_square=True, size=64)


def recipe(**changes: object) -> PreprocessConfig:
    return dataclasses.replace(PLAIN, **changes)


def smooth_image(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A float32 image with structure everywhere (so CLAHE and resizing change it)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 1000, (max(2, height // 8), max(2, width // 8))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def bright_box_image(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((height, width), np.float32)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 1.0
    return image


def bbox_of(mask: np.ndarray) -> np.ndarray:
    """x1y1x2y2 (pixel edges) of the nonzero region."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# --- the recipe on one image ---------------------------------------------------------------------


def test_golden_geometry_100x50_at_64() -> None:
    out, geometry = apply_recipe(smooth_image(100, 50), recipe=recipe())
    assert out.shape == (64, 64) and out.dtype == np.uint8
    # side = 100, pad_top = (100 - 50) // 2 = 25, scale = 64 / 100
    assert geometry == Geometry(
        orig_width=100,
        orig_height=50,
        pad_left=0.0,
        pad_top=25.0,
        scale_x=0.64,
        scale_y=0.64,
        width=64,
        height=64,
    )
    # The padding (25 * 0.64 = 16 rows top and bottom) stays black without CLAHE.
    assert not out[:16].any() and not out[48:].any()
    assert out[17:47].all()
    np.testing.assert_allclose(
        geometry.boxes_to_cache(np.array([[0, 0, 100, 50]])), [[0, 16, 64, 48]], atol=1e-5
    )


def test_odd_padding_goes_right_and_bottom() -> None:
    _, geometry = apply_recipe(smooth_image(50, 101), recipe=recipe())
    assert (geometry.pad_left, geometry.pad_top) == (25.0, 0.0)  # (101 - 50) // 2


@pytest.mark.parametrize("pad", [True, False])
def test_boxes_round_trip_on_non_square_images(pad: bool) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        width, height = (int(v) for v in rng.integers(40, 400, 2))
        _, geometry = apply_recipe(
            np.zeros((height, width), np.float32), recipe=recipe(pad_square=pad)
        )
        x = np.sort(rng.uniform(0, width, (30, 2)), axis=1)
        y = np.sort(rng.uniform(0, height, (30, 2)), axis=1)
        boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
        back = geometry.boxes_to_original(geometry.boxes_to_cache(boxes))
        np.testing.assert_allclose(back, boxes, atol=1.0)
        if not pad and width != height:
            assert geometry.scale_x != geometry.scale_y


@pytest.mark.parametrize("pad", [True, False])
def test_geometry_matches_the_pixels(pad: bool) -> None:
    """A bright rectangle lands where Geometry.boxes_to_cache says, within a pixel."""
    for width, height, box in [(200, 120, (30, 20, 150, 90)), (90, 240, (10, 100, 70, 220))]:
        image = bright_box_image(width, height, box)
        out, geometry = apply_recipe(image, recipe=recipe(pad_square=pad))
        found = bbox_of(out > 127)
        expected = geometry.boxes_to_cache(np.array([box]))[0]
        np.testing.assert_allclose(found, expected, atol=1.0)
        mask = transform_mask(image > 0, geometry=geometry)
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_allclose(bbox_of(mask), expected, atol=1.0)


def test_no_clip_is_plain_min_max() -> None:
    image = smooth_image(64, 64)
    image[3, 4] = 1e6  # one hot pixel
    out, _ = apply_recipe(image, recipe=recipe())
    reference = np.rint((image - image.min()) / (image.max() - image.min()) * 255)
    np.testing.assert_array_equal(out, reference.astype(np.uint8))
    assert np.median(out) == 0  # the hot pixel crushed everything else


def test_percentile_clip_ignores_outliers() -> None:
    image = smooth_image(64, 64)
    image[3, 4] = 1e6
    out, _ = apply_recipe(image, recipe=recipe(clip_percentiles=True, clip_low=1, clip_high=99))
    low, high = np.percentile(image, [1, 99])
    clipped = np.clip(image, low, high)
    reference = np.rint((clipped - low) / (high - low) * 255).astype(np.uint8)
    np.testing.assert_allclose(out, reference, atol=1)
    assert out.min() == 0 and out.max() == 255 and np.median(out) > 50


@pytest.mark.parametrize(
    "kind", ["uint8", "signed", "sparse levels", "wide range", "float", "constant"]
)
def test_percentiles_equal_numpy(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    makers = {
        "uint8": lambda n: rng.integers(0, 256, n),
        "signed": lambda n: rng.integers(-3000, 3000, n),
        "sparse levels": lambda n: rng.integers(0, 3, n) * 1000,
        "wide range": lambda n: rng.integers(0, 3, n) * 10_000_000,  # falls back to numpy
        "float": lambda n: rng.normal(0, 100, n),
        "constant": lambda n: np.full(n, 42),
    }
    for n in (1, 2, 7, 1000, 4099):
        x = makers[kind](n).astype(np.float32)
        q = [0, 0.5, 12.3, 50, 99.5, 100]
        np.testing.assert_allclose(percentiles(x, q), np.percentile(x, q), rtol=1e-9, atol=1e-6)


def test_clahe_is_opencv_clahe_on_the_normalised_image() -> None:
    image = smooth_image(64, 64)
    plain, _ = apply_recipe(image, recipe=recipe())
    out, _ = apply_recipe(image, recipe=recipe(clahe=True, clahe_clip_limit=3.0, clahe_tile_grid=4))
    reference = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(plain)
    np.testing.assert_array_equal(out, reference)
    assert not np.array_equal(out, plain)


def test_no_pad_resizes_straight_with_area_interpolation() -> None:
    image = smooth_image(160, 96)
    out, geometry = apply_recipe(image, recipe=recipe(pad_square=False))
    normalised, _ = apply_recipe(image, recipe=recipe(pad_square=False, size=96))  # no-op side
    assert (geometry.pad_left, geometry.pad_top) == (0.0, 0.0)
    assert (geometry.scale_x, geometry.scale_y) == (64 / 160, 64 / 96)
    # size=96 on a 160x96 image still resizes; rebuild the min-max image by hand instead.
    minmax = np.rint((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, cv2.resize(minmax, (64, 64), interpolation=cv2.INTER_AREA))
    assert normalised.shape == (96, 96)


def test_enlarging_uses_bilinear() -> None:
    image = smooth_image(32, 32)
    out, geometry = apply_recipe(image, recipe=recipe())
    minmax = np.rint((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, cv2.resize(minmax, (64, 64), interpolation=cv2.INTER_LINEAR))
    assert geometry.scale_x == 2.0


def test_constant_image_is_black_and_nan_is_refused() -> None:
    flat = np.full((20, 30), 7.0, np.float32)
    out, _ = apply_recipe(flat, recipe=recipe())
    assert out.shape == (64, 64) and not out.any()
    out, _ = apply_recipe(flat, recipe=recipe(clahe=True))  # CLAHE lifts a flat tile evenly
    assert len(np.unique(out)) == 1
    bad = smooth_image(16, 16)
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        apply_recipe(bad, recipe=recipe())


def test_transform_mask_rejects_wrong_shape() -> None:
    _, geometry = apply_recipe(smooth_image(100, 50), recipe=recipe())
    with pytest.raises(DataError, match="100x50"):
        transform_mask(np.zeros((100, 50), np.uint8), geometry=geometry)


# --- the cache writer ----------------------------------------------------------------------------


def nih_records(shared_data: Path, n: int) -> list[Record]:
    paths = sorted((shared_data / "nih" / "images").glob("*.png"))[:n]
    return [
        Record(
            image_id=p.stem,
            source="nih",
            path=str(p),
            patient_id=p.stem[:8],
            width=1024,
            height=1024,
        )
        for p in paths
    ]


def png_records(folder: Path, n: int, *, width: int = 80, height: int = 60) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"img{i}.png"
        pixels = smooth_image(width, height, seed=i)
        cv2.imwrite(str(path), (pixels / pixels.max() * 255).astype(np.uint8))
        records.append(
            Record(
                image_id=f"img{i}",
                source="test",
                path=str(path),
                patient_id=f"p{i}",
                width=width,
                height=height,
            )
        )
    return records


def assert_cache_valid(root: Path, ids: list[str]) -> None:
    """Every listed item is in the index, its PNG matches the sha256 and loads through Cache."""
    table = pq.read_table(root / cache.INDEX_FILE)
    assert table.schema.field("masks").type == pa.list_(pa.string())
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(ids)
    reader = Cache(root)
    for image_id in ids:
        row = rows[image_id]
        png = root / row["file"]
        assert png == cache.image_path(root, image_id)
        data = png.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["size"]
        assert row["file"] == cache.image_file(image_id)
        geometry = cache.Geometry.from_dict(json.loads(row["geometry"]))
        assert reader.geometry(image_id) == geometry
        image = reader.load(image_id)
        assert image.dtype == np.uint8 and image.shape == (reader.recipe["size"],) * 2
        assert (geometry.width, geometry.height) == image.shape[::-1]
    assert not (root / cache.JOURNAL_DIR).is_dir() or not list((root / cache.JOURNAL_DIR).iterdir())


def test_cache_from_real_nih_images_with_two_workers(shared_data: Path, tmp_path: Path) -> None:
    records = nih_records(shared_data, 6)
    mask = np.zeros((1024, 1024), np.uint8)
    mask[200:600, 100:400] = 1  # any nonzero value is inside
    cv2.imwrite(str(tmp_path / "lung.png"), mask)
    records[0].mask_paths = {"left lung": str(tmp_path / "lung.png")}
    out = tmp_path / "cache"
    summary = build_cache(
        records=records,
        out_dir=out,
        recipe=recipe(clahe=True, clip_percentiles=True),
        workers=2,
        progress=False,
    )
    assert (summary.done, summary.skipped_existing, summary.failed) == (6, 0, 0)
    assert summary.images_per_second > 0 and summary.errors_file is None
    # the workers' CPU is counted (six decodes at 1024 px), and the parent's on top of it
    assert summary.cpu_seconds > summary.worker_cpu_seconds > 6 * 0.005
    assert_cache_valid(out, [r.image_id for r in records])
    assert json.loads((out / cache.RECIPE_FILE).read_text()) == {
        **dataclasses.asdict(recipe(clahe=True, clip_percentiles=True)),
        cache.LAYOUT_KEY: cache.LAYOUT_VERSION,
    }
    reader = Cache(out)
    geometry = reader.geometry(records[0].image_id)
    assert geometry.scale_x == 64 / 1024 and geometry.pad_left == 0
    cached_mask = reader.load_mask(records[0].image_id, "left lung")
    assert cached_mask is not None and set(np.unique(cached_mask)) == {0, 255}
    np.testing.assert_allclose(
        bbox_of(cached_mask), geometry.boxes_to_cache(np.array([[100, 200, 400, 600]]))[0], atol=1
    )
    assert reader.mask_names(records[1].image_id) == []


def cache_contents(root: Path) -> dict[str, object]:
    """Every file's bytes, except the store index's PNG mtimes (a redone PNG is a new file)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    store_index = f"{store.STORE_DIR}/{store.INDEX_FILE}"
    if store_index in out:
        table = pq.read_table(root / store_index).drop_columns(["png_mtime_ns"])
        out[store_index] = table.to_pylist()
    return out


def journal_as_a_killed_run_left_it(out: Path, rows: list[dict], *, torn: bool = True) -> Path:
    """What a run killed before its end leaves: no index, a journal line per finished item (the
    last one torn mid-write)."""
    (out / cache.INDEX_FILE).unlink()
    journal = out / cache.JOURNAL_DIR / "20260101T000000-deadbeef-12345.jsonl"
    journal.parent.mkdir(exist_ok=True)
    lines = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    journal.write_bytes(lines + (b'{"image_id": "img5", "fi' if torn else b""))
    return journal


def test_resume_redoes_only_damaged_items(tmp_path: Path) -> None:
    records = png_records(tmp_path / "src", 6)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    ids = [r.image_id for r in records]
    first = cache_contents(out)
    rows = pq.read_table(out / cache.INDEX_FILE).to_pylist()
    cache.image_path(out, ids[0]).unlink()  # deleted PNG
    cache.image_path(out, ids[1]).write_bytes(b"\x89PNG garbage")  # corrupt PNG
    # killed after item 2's PNG, before its journal line; item 5's line torn
    journal = journal_as_a_killed_run_left_it(out, [r for r in rows if r["image_id"] != ids[2]])
    untouched = cache.image_path(out, ids[3]).stat().st_mtime_ns

    summary = build_cache(records=records, out_dir=out, recipe=PLAIN, workers=2, progress=False)
    assert (summary.done, summary.skipped_existing, summary.failed) == (3, 3, 0)
    assert cache.image_path(out, ids[3]).stat().st_mtime_ns == untouched
    assert_cache_valid(out, ids)
    assert not list(out.rglob("*.tmp*"))  # no temporary files left behind
    assert not journal.exists()  # merged into the index, its writer gone: removed
    # byte for byte what the uninterrupted run wrote
    assert cache_contents(out) == first


def test_resume_checks_the_recorded_size_and_hash_not_the_pixels(tmp_path: Path) -> None:
    records = png_records(tmp_path / "src", 3)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    png = cache.image_path(out, "img1")
    other = cache.image_path(out, "img2").read_bytes()
    png.write_bytes(other)  # a valid PNG of the wrong image: same kind of file, other hash
    again = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert (again.done, again.skipped_existing) == (1, 2)
    assert png.read_bytes() != other
    # an entry naming another image's file is not taken for this one
    rows = pq.read_table(out / cache.INDEX_FILE).to_pylist()
    rows[0] = {**rows[1], "image_id": rows[0]["image_id"]}
    journal_as_a_killed_run_left_it(out, rows, torn=False)
    again = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert (again.done, again.skipped_existing) == (1, 2)
    assert_cache_valid(out, [r.image_id for r in records])


def test_journal_of_a_live_run_is_kept(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    records = png_records(tmp_path / "src", 2)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    rows = pq.read_table(out / cache.INDEX_FILE).to_pylist()
    journal = journal_as_a_killed_run_left_it(out, rows, torn=False)
    with journal.open("ab") as live:  # another run, still going, holds its journal's lock
        fcntl.flock(live.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        summary = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
        assert summary.skipped_existing == 2 and journal.exists()
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert not journal.exists()


def uid_records(folder: Path, ids: list[str]) -> list[Record]:
    """One PNG per id; image i has a bright bar i + 1 pixels wide (its mean identifies it, even
    after min-max normalisation)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, image_id in enumerate(ids):
        path = folder / f"f{i}.png"
        pixels = np.zeros((20, 20), np.uint8)
        pixels[2:18, 2 : 3 + i] = 200
        cv2.imwrite(str(path), pixels)
        records.append(
            Record(
                image_id=image_id,
                source="t",
                path=str(path),
                patient_id=f"p{i}",
                width=20,
                height=20,
            )
        )
    return records


def test_uid_named_images_never_share_a_cache_file(tmp_path: Path) -> None:
    # DICOM UIDs: the old scheme cut each key at its last dot, so these all named one file.
    series = "1.2.826.0.1.3680043.8.498.10025629581362719770713346223592"
    ids = [f"{series}.{n}" for n in range(1, 6)] + [f"{series}.1.1", f"{series}.11", series]
    records = uid_records(tmp_path / "src", ids)
    out = tmp_path / "cache"
    summary = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert (summary.done, summary.skipped_existing) == (len(ids), 0)
    assert len({cache.image_path(out, i) for i in ids}) == len(ids)
    reader = Cache(out)
    # Each id loads its own pixels: the mean grows with the bar's width, in the order written.
    means = [float(reader.load(i).mean()) for i in ids]
    assert all(a < b for a, b in zip(means, means[1:], strict=False))
    again = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert (again.done, again.skipped_existing) == (0, len(ids))


def test_swapped_cache_file_is_refused_on_load(tmp_path: Path) -> None:
    records = uid_records(tmp_path / "src", ["a.1", "a.2"])
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    first, second = cache.image_path(out, "a.1"), cache.image_path(out, "a.2")
    first.write_bytes(second.read_bytes())  # a valid PNG, but another image's
    with pytest.raises(ImageReadError, match=r"does not match the sha256 in index\.parquet"):
        Cache(out).load("a.1")
    # preprocess notices the damage too, and redoes that item only
    summary = build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    assert (summary.done, summary.skipped_existing) == (1, 1)
    assert Cache(out).load("a.1").mean() < Cache(out).load("a.2").mean()


def test_cache_from_the_old_colliding_layout_is_refused(tmp_path: Path) -> None:
    records = png_records(tmp_path / "src", 1)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    recipe_file = out / cache.RECIPE_FILE
    old = json.loads(recipe_file.read_text())
    del old[cache.LAYOUT_KEY]  # what caches written before layout 2 hold
    recipe_file.write_text(json.dumps(old))
    message = r"item-naming layout 1.*rebuild it \(delete .*cache, or preprocess into a new --out\)"
    with pytest.raises(ConfigError, match=message):
        build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    with pytest.raises(ConfigError, match=message):
        Cache(out)


def test_recipe_change_is_refused(tmp_path: Path) -> None:
    records = png_records(tmp_path / "src", 1)
    out = tmp_path / "cache"
    build_cache(records=records, out_dir=out, recipe=PLAIN, progress=False)
    with pytest.raises(ConfigError, match=r"size: 64 -> 32.*pick another --out or delete"):
        build_cache(records=records, out_dir=out, recipe=recipe(size=32), progress=False)


def test_skip_records_bad_items_and_finishes(tmp_path: Path) -> None:
    records = png_records(tmp_path / "src", 3)
    empty = tmp_path / "src" / "empty.png"
    empty.write_bytes(b"")
    records.append(
        Record(image_id="empty", source="t", path=str(empty), patient_id="e", width=80, height=60)
    )
    records.append(
        Record(
            image_id="gone",
            source="t",
            path=str(tmp_path / "gone.png"),
            patient_id="g",
            width=80,
            height=60,
        )
    )
    out = tmp_path / "cache"
    summary = build_cache(
        records=records, out_dir=out, recipe=PLAIN, on_error="skip", progress=False
    )
    assert (summary.done, summary.failed) == (3, 2)
    assert summary.errors_file == out / cache.ERRORS_FILE
    with summary.errors_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image_id"], r["path"], r["reason"]) for r in rows] == [
        ("empty", str(empty), "empty file"),
        ("gone", str(tmp_path / "gone.png"), "file not found"),
    ]
    assert_cache_valid(out, ["img0", "img1", "img2"])
    # Fixing the inputs and rerunning clears errors.csv.
    summary = build_cache(
        records=records[:3], out_dir=out, recipe=PLAIN, on_error="skip", progress=False
    )
    assert summary.skipped_existing == 3 and not (out / cache.ERRORS_FILE).exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_fail_raises_naming_image_and_file(tmp_path: Path, workers: int) -> None:
    records = png_records(tmp_path / "src", 2)
    truncated = tmp_path / "src" / "cut.png"
    truncated.write_bytes(Path(records[0].path).read_bytes()[:100])
    records.append(
        Record(image_id="cut", source="t", path=str(truncated), patient_id="c", width=80, height=60)
    )
    with pytest.raises(ImageReadError, match=r"image 'cut' \(.*cut\.png\): cannot decode image"):
        build_cache(
            records=records,
            out_dir=tmp_path / "cache",
            recipe=PLAIN,
            workers=workers,
            progress=False,
        )


def test_size_mismatch_with_manifest_is_an_error(tmp_path: Path) -> None:
    (record,) = png_records(tmp_path / "src", 1)
    record.width = 100  # the file is 80 wide
    with pytest.raises(DataError, match=r"80x60 pixels but the manifest says 100x60"):
        build_cache(records=[record], out_dir=tmp_path / "cache", recipe=PLAIN, progress=False)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    (record,) = png_records(tmp_path / "src", 1)
    with pytest.raises(DataError, match="duplicate image_id 'img0'"):
        build_cache(
            records=[record, record], out_dir=tmp_path / "cache", recipe=PLAIN, progress=False
        )


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def preprocess_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other subcommands are written in parallel; the dispatch itself is what is under test here.
    monkeypatch.setattr(cli, "COMMANDS", {"preprocess": "cxrkit.cli.preprocess"})


def test_cli_builds_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preprocess_only: None
) -> None:
    manifest = write_manifest(png_records(tmp_path / "src", 3), tmp_path / "m.parquet")
    args = ["preprocess", "--manifest", str(manifest), "--out", str(tmp_path / "c"), "--size", "32"]
    assert cli.main([*args, "--workers", "1", "--no-progress"]) == 0
    assert "done 3, skipped 0 (already cached), failed 0" in capsys.readouterr().out
    assert cli.main([*args, "--workers", "2", "--no-progress"]) == 0
    assert "done 0, skipped 3 (already cached), failed 0" in capsys.readouterr().out
    assert Cache(tmp_path / "c").recipe["size"] == 32


def test_cli_switches_reach_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preprocess_only: None
) -> None:
    manifest = write_manifest(png_records(tmp_path / "src", 1), tmp_path / "m.parquet")
    flags = ["--no-clahe", "--no-clip", "--no-pad", "--no-voi-lut", "--no-progress"]
    assert (
        cli.main(
            [
                "preprocess",
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "c"),
                "--size",
                "32",
                *flags,
            ]
        )
        == 0
    )
    saved = Cache(tmp_path / "c").recipe
    assert not any(saved[k] for k in ("clahe", "clip_percentiles", "pad_square", "apply_voi_lut"))


def test_cli_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preprocess_only: None
) -> None:
    records = png_records(tmp_path / "src", 2)
    records[1].path = str(tmp_path / "missing.png")
    manifest = write_manifest(records, tmp_path / "m.parquet")
    base = [
        "preprocess",
        "--manifest",
        str(manifest),
        "--size",
        "32",
        "--workers",
        "1",
        "--no-progress",
    ]

    # skip finished the run as asked: exit 0 (pipelines with && go on), the skip is reported
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "done 1, skipped 0 (already cached), failed 1" in captured.out
    assert f"errors: {tmp_path / 'a' / 'errors.csv'} (1 images skipped)" in captured.out

    assert cli.main([*base, "--out", str(tmp_path / "b"), "--on-error", "fail"]) == 1
    err = capsys.readouterr().err
    assert "cxrkit preprocess: error: image 'img1'" in err and "missing.png" in err
    assert "Traceback" not in err

    assert (
        cli.main(
            [
                "preprocess",
                "--manifest",
                str(tmp_path / "none.parquet"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "manifest not found" in err and "Traceback" not in err

    assert cli.main([*base, "--out", str(tmp_path / "a"), "--size", "8"]) == 1
    assert "size must be at least 16" in capsys.readouterr().err


def test_cli_help_has_a_worked_example(
    capsys: pytest.CaptureFixture[str], preprocess_only: None
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["preprocess", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "cxrkit preprocess --manifest" in out and "--on-error skip" in out


# --- preprocess as separate processes ----------------------------------------------------------

PROCESS_RECIPE = PreprocessConfig(size=64)


def same_image_records(folder: Path, n: int, *, side: int) -> list[Record]:
    """``n`` records of one smooth random ``side`` px PNG: slow enough to decode, cheap to make."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (side // 32, side // 32)).astype(np.float32)
    pixels = cv2.resize(low, (side, side), interpolation=cv2.INTER_CUBIC)
    pixels += rng.normal(0, 4, (side, side)).astype(np.float32)
    path = folder / "one.png"
    cv2.imwrite(str(path), np.clip(pixels, 0, 255).astype(np.uint8))
    return [
        Record(
            image_id=f"img{i:04d}", source="t", path=str(path), patient_id=f"p{i}", width=side,
            height=side,
        )
        for i in range(n)
    ]  # fmt: skip


def cli_process(manifest: Path, out: Path, *, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(cxrkit.__file__).resolve().parents[1])}
    args = ["--manifest", str(manifest), "--out", str(out), "--size", str(PROCESS_RECIPE.size)]
    return subprocess.Popen(
        [sys.executable, "-m", "cxrkit", "preprocess", *args, "--workers", str(workers)]
        + ["--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) "
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def descendants(pid: int) -> set[int]:
    table = processes()
    out, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier}
        out |= frontier
    return out


def alive(pids: set[int]) -> set[int]:
    table = processes()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}  # zombies are dead


def journal_lines(out: Path) -> int:
    folder = out / cache.JOURNAL_DIR
    if not folder.is_dir():
        return 0
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.slow
def test_killed_parent_takes_its_workers_and_the_rerun_is_byte_identical(tmp_path: Path) -> None:
    records = same_image_records(tmp_path / "src", 120, side=1024)
    manifest = write_manifest(records, tmp_path / "m.parquet")
    out = tmp_path / "cache"
    run = cli_process(manifest, out, workers=2)
    try:
        deadline = time.monotonic() + 120
        while journal_lines(out) < 8:  # the workers are writing items
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "no item finished in 120 s"
            time.sleep(0.05)
        children = descendants(run.pid)
        assert len(children) >= 2  # the forkserver and the pool's workers
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    assert len(records) > journal_lines(out)  # killed mid-run
    deadline = time.monotonic() + 10
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(children) == set(), "workers outlived their killed parent"

    summary = build_cache(
        records=records, out_dir=out, recipe=PROCESS_RECIPE, workers=2, progress=False
    )
    assert summary.skipped_existing >= 8 and summary.done + summary.skipped_existing == 120
    reference = tmp_path / "reference"
    build_cache(
        records=records, out_dir=reference, recipe=PROCESS_RECIPE, workers=2, progress=False
    )
    resumed = cache_contents(out)
    # a worker killed inside a write may leave its temporary file: named as one, never read
    temporary = {name for name in resumed if ".tmp" in name}
    assert all(Path(name).name.startswith(".") for name in temporary)
    assert {k: v for k, v in resumed.items() if k not in temporary} == cache_contents(reference)


def test_two_threads_into_one_cache_at_once_write_what_one_run_writes(tmp_path: Path) -> None:
    records = same_image_records(tmp_path / "src", 40, side=256)
    out = tmp_path / "cache"

    def one_run() -> object:
        return build_cache(records=records, out_dir=out, recipe=PROCESS_RECIPE, progress=False)

    with ThreadPoolExecutor(2) as pool:  # OpenCV releases the GIL: the two runs interleave
        summaries = [f.result() for f in [pool.submit(one_run) for _ in range(2)]]
    assert all(s.done + s.skipped_existing == 40 for s in summaries)
    reference = tmp_path / "reference"
    build_cache(records=records, out_dir=reference, recipe=PROCESS_RECIPE, progress=False)
    assert cache_contents(out) == cache_contents(reference)


@pytest.mark.slow
def test_two_runs_into_one_cache_at_once_write_what_one_run_writes(tmp_path: Path) -> None:
    records = same_image_records(tmp_path / "src", 64, side=512)
    manifest = write_manifest(records, tmp_path / "m.parquet")
    out = tmp_path / "cache"
    runs = [cli_process(manifest, out, workers=1) for _ in range(2)]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read().decode()
    reference = tmp_path / "reference"
    build_cache(records=records, out_dir=reference, recipe=PROCESS_RECIPE, progress=False)
    assert cache_contents(out) == cache_contents(reference)
