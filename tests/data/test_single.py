"""Files read with a model's recipe equal what the cache build writes for them, bit for bit."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.config import PreprocessConfig
from cxrkit.data import single
from cxrkit.data.cache import Cache
from cxrkit.data.datasets import UnlabeledDataset
from cxrkit.data.images import image_size
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError, ImageReadError

RECIPE = PreprocessConfig(size=64)  # clip, pad, CLAHE, resize: every step on


def _files(tmp_path: Path, cr_dicom) -> list[Path]:
    rng = np.random.default_rng(0)
    png8 = rng.normal(90, 20, (90, 120)).clip(0, 255).astype(np.uint8)
    png8[30:50, 40:70] = 240
    png16 = (rng.random((70, 50)) * 40000).astype(np.uint16)
    stored = (rng.random((80, 100)) * 3000).astype(np.uint16)
    paths = [tmp_path / "wide.png", tmp_path / "deep.png", tmp_path / "mono1.dcm"]
    cv2.imwrite(str(paths[0]), png8)
    cv2.imwrite(str(paths[1]), png16)
    # MONOCHROME1 (inverted on reading) with a VOI window: both steps of the DICOM display chain
    cr_dicom(
        paths[2],
        stored,
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=1200,
        WindowWidth=1600,
    )
    return paths


def _records(paths: list[Path]) -> list[Record]:
    records = []
    for path in paths:
        width, height = image_size(path)
        records.append(
            Record(
                image_id=path.stem,
                source="t",
                path=str(path),
                patient_id=path.stem,
                width=width,
                height=height,
            )
        )
    return records


def test_read_for_model_equals_the_cache_build_bit_for_bit(tmp_path: Path, cr_dicom) -> None:
    paths = _files(tmp_path, cr_dicom)
    records = _records(paths)
    build_cache(records=records, out_dir=tmp_path / "cache", recipe=RECIPE, progress=False)
    cache = Cache(tmp_path / "cache")
    for path in paths:
        item = single.read_for_model(path, recipe=RECIPE)
        assert item.image.dtype == np.uint8
        np.testing.assert_array_equal(item.image, cache.load(path.stem))
        assert item.geometry == cache.geometry(path.stem)
    # the DICOM's window and inversion were applied: without them the pixels differ
    no_voi = PreprocessConfig(size=64, apply_voi_lut=False)
    assert not np.array_equal(
        single.read_for_model(paths[2], recipe=no_voi).image, cache.load("mono1")
    )
    wide = single.read_for_model(paths[0], recipe=RECIPE).geometry
    assert (wide.orig_width, wide.orig_height, wide.pad_top) == (120, 90, 15.0)


def test_to_original_puts_the_image_back_on_the_file_grid(tmp_path: Path) -> None:
    image = np.zeros((60, 100), np.uint8)
    image[20:40, 30:60] = 255  # a bright block at known original pixels
    cv2.imwrite(str(tmp_path / "a.png"), image)
    recipe = PreprocessConfig(size=50, clip_percentiles=False, clahe=False)
    item = single.read_for_model(tmp_path / "a.png", recipe=recipe)
    back = single.to_original(item.image, geometry=item.geometry)
    assert back.shape == (60, 100)
    ys, xs = np.nonzero(back > 127)
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 39) <= 1
    assert abs(xs.min() - 30) <= 1 and abs(xs.max() - 59) <= 1


def test_ids_and_errors(tmp_path: Path) -> None:
    assert single.image_ids(["a/x.png", "b/x.dcm", "y.png"]) == ["a/x.png", "b/x.dcm", "y"]
    with pytest.raises(ConfigError, match="given more than once"):
        single.image_ids(["a.png", "a.png"])
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.arange(64 * 48, dtype=np.uint16).reshape(48, 64).astype(np.uint8))
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(ImageReadError, match="notes.png"):
        single.read_images([good, text], recipe=RECIPE)
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        single.read_images([tmp_path / "missing.png"], recipe=RECIPE)
    missing = tmp_path / "missing.png"
    images = single.read_images([text, good, missing], recipe=RECIPE, on_error="skip")
    assert [i.image_id for i in images.items] == ["good"]
    assert [f.path for f in images.failed] == [str(text), str(missing)]
    assert "notes.png" in images.failed[0].reason
    # the in-memory cache reads like a cache directory
    sample = UnlabeledDataset(records=images.records, cache=images.cache)[0]
    assert sample["image"].shape == (1, 64, 64) and sample["image_id"] == "good"
    assert images.cache.mask_names("good") == [] and images.cache.load_mask("good", "x") is None
    with pytest.raises(DataError, match="'other'"):
        images.cache.load("other")
    with pytest.raises(ConfigError, match="another preprocessing recipe"):
        single.ensure_read(images, recipe=PreprocessConfig(size=32))
    assert single.ensure_read(images, recipe=RECIPE) is images


def test_real_dicoms_and_png_equal_the_cache_build(shared_data: Path, tmp_path: Path) -> None:
    # RG1: a real Philips CR, MONOCHROME1, 15-bit JPEG 2000 with a window, 1841 x 1955 (not
    # square); Fake_MONOHR1: a JPEG-baseline MONOCHROME1 twin; and an 8-bit NIH PNG
    paths = [
        shared_data / "dicom" / "RG1_J2KI.dcm",
        shared_data / "dicom" / "Fake_MONOHR1.dcm",
        shared_data / "nih" / "images" / "00000032_037.png",
    ]
    recipe = PreprocessConfig(size=128)
    build_cache(records=_records(paths), out_dir=tmp_path / "c", recipe=recipe, progress=False)
    cache = Cache(tmp_path / "c")
    for path in paths:
        item = single.read_for_model(path, recipe=recipe)
        np.testing.assert_array_equal(item.image, cache.load(path.stem))
        assert item.geometry == cache.geometry(path.stem)
    rg1 = single.read_for_model(paths[0], recipe=recipe).geometry
    assert (rg1.orig_width, rg1.orig_height) == (1841, 1955) and rg1.pad_left == 57.0
