"""Golden outputs of ``build_cache``: the decoded pixels and geometry of every cache item, held to
digests recorded from the code before the speed work (commit ddc5948), so an optimisation that
changes a single pixel fails here.

The digests are of the decoded pixels (not the PNG bytes: the PNG compression level may change,
PNG is lossless) plus the index's geometry and the masks' pixels. Inputs are made with integer
arithmetic (no float formatting or platform maths), and their own digest is checked first, so a
changed input is told apart from a changed output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cxrkit.config import PreprocessConfig
from cxrkit.data import cache
from cxrkit.data.images import image_size
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record

FULL = PreprocessConfig(size=64)
RECIPES = {
    "full": FULL,
    "no_clip": dataclasses.replace(FULL, clip_percentiles=False),
    "no_clahe_no_pad": dataclasses.replace(FULL, clahe=False, pad_square=False, size=48),
    "no_voi_enlarge": dataclasses.replace(FULL, apply_voi_lut=False, size=160),
    "narrow_clip": dataclasses.replace(FULL, clip_low=2.0, clip_high=97.5, clahe_tile_grid=4),
}


def pattern(height: int, width: int, *, peak: int, seed: int) -> np.ndarray:
    """Gradient + ring + integer noise + a few saturated pixels, in 0..peak (int64)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    gradient = (x * 7 + y * 3) * peak // (7 * width + 3 * height)
    ring = ((x - width // 2) ** 2 + (y - height // 3) ** 2) * peak // (width**2 + height**2)
    noise = np.random.default_rng(seed).integers(0, peak // 16 + 1, size=(height, width))
    image = (gradient + ring) // 2 + noise
    image[0, :3] = peak  # a marker: the percentile clip must ignore it
    image[-1, -2:] = 0
    return np.clip(image, 0, peak)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str, **tags: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4." + str(int.from_bytes(path.stem.encode()[:12], "big"))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "P1"
    ds.set_pixel_data(pixels.astype(np.uint16), photometric, 16)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_inputs(folder: Path) -> tuple[list[Record], str]:
    """The synthetic inputs and the digest of their pixels."""
    inputs: dict[str, tuple[Path, np.ndarray]] = {}

    def png(name: str, pixels: np.ndarray) -> None:
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), pixels)
        inputs[name] = (path, pixels)

    png("png8", pattern(80, 96, peak=255, seed=1).astype(np.uint8))
    png("png16", pattern(100, 64, peak=65535, seed=2).astype(np.uint16))
    grey = pattern(72, 72, peak=255, seed=3).astype(np.uint8)
    png("png_rgb_equal", np.dstack([grey, grey, grey]))  # the NIH quirk: R = G = B
    colour = np.dstack([grey, pattern(72, 72, peak=255, seed=4).astype(np.uint8), grey // 2])
    png("png_bgra", np.dstack([colour, np.full_like(grey, 200)]))
    png("png_constant", np.full((40, 50), 77, np.uint8))

    def dicom(name: str, pixels: np.ndarray, photometric: str, **tags: object) -> None:
        path = write_dicom(folder / f"{name}.dcm", pixels, photometric=photometric, **tags)
        inputs[name] = (path, pixels)

    p16 = pattern(96, 120, peak=4095, seed=5)
    dicom("dcm_plain", p16, "MONOCHROME2")
    dicom("dcm_window", p16, "MONOCHROME2", WindowCenter=1500, WindowWidth=1800)
    dicom("dcm_mono1", p16, "MONOCHROME1")
    dicom("dcm_mono1_window", p16, "MONOCHROME1", WindowCenter=2000, WindowWidth=2500)
    dicom(
        "dcm_rescale_window",
        pattern(110, 90, peak=65535, seed=6),
        "MONOCHROME2",
        RescaleSlope=2,
        RescaleIntercept=-1024,
        RescaleType="US",
        WindowCenter=[30000, 10000],
        WindowWidth=[40000, 5000],
    )
    dicom("dcm_full16", pattern(128, 128, peak=65535, seed=7), "MONOCHROME2")

    digest = hashlib.sha256()
    records = []
    for name, (path, pixels) in inputs.items():
        digest.update(name.encode() + np.ascontiguousarray(pixels).tobytes())
        height, width = pixels.shape[:2]
        records.append(
            Record(
                image_id=name, source="golden", path=str(path), patient_id=name, width=width,
                height=height,
            )
        )  # fmt: skip
    # One record carries a mask, so the mask path is held too.
    mask = np.zeros((80, 96), np.uint8)
    mask[10:50, 20:70] = 1
    cv2.imwrite(str(folder / "mask.png"), mask)
    records[0].mask_paths = {"lung": str(folder / "mask.png")}
    return records, digest.hexdigest()


def cache_digests(root: Path, records: list[Record]) -> dict[str, str]:
    """sha256 of each item's decoded pixels, geometry and masks."""
    out = {}
    rows = {row["image_id"]: row for row in pq.read_table(root / cache.INDEX_FILE).to_pylist()}
    for record in records:
        info = rows[record.image_id]
        info = {**info, "geometry": json.loads(info["geometry"])}
        pixels = cv2.imread(str(root / info["file"]), cv2.IMREAD_UNCHANGED)
        digest = hashlib.sha256(f"{pixels.shape} {pixels.dtype}".encode())
        digest.update(pixels.tobytes())
        digest.update(json.dumps(info["geometry"], sort_keys=True).encode())
        for name in info["masks"]:
            mask = cv2.imread(str(cache.mask_path(root, record.image_id, name)), -1)
            digest.update(name.encode() + mask.tobytes())
        out[record.image_id] = digest.hexdigest()[:16]
    return out


def combined(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


INPUT_DIGEST = "00c96db6c693d1a531b32fc95e775c6cf5c0ba4deccf8257a7073c05310ff93c"
# recipe/image id -> digest, recorded on commit ddc5948
GOLDEN = {
    "full/png8": "ded41aa9d59b21b7",
    "full/png16": "5226f6b64999f42a",
    "full/png_rgb_equal": "05cdb44af6bc3667",
    "full/png_bgra": "4f418bc6729e9889",
    "full/png_constant": "f8654e3b0cb68395",
    "full/dcm_plain": "9db8afae322ca79e",
    "full/dcm_window": "e3f541ee78dc3365",
    "full/dcm_mono1": "e65bae8cbcd4157b",
    "full/dcm_mono1_window": "12f47d5dbece4b99",
    "full/dcm_rescale_window": "1a1add3bcb32451e",
    "full/dcm_full16": "8b68c8b39a86b719",
    "no_clip/png8": "5b2c5adcf43211ac",
    "no_clip/png16": "3c4dd4eaf78435ea",
    "no_clip/png_rgb_equal": "50252fb7635b3868",
    "no_clip/png_bgra": "d4471d3db86eceb8",
    "no_clip/png_constant": "f8654e3b0cb68395",
    "no_clip/dcm_plain": "c3f90a7a924c880a",
    "no_clip/dcm_window": "e3f541ee78dc3365",
    "no_clip/dcm_mono1": "1fce4834a113d98f",
    "no_clip/dcm_mono1_window": "dfd332271bc8bc5d",
    "no_clip/dcm_rescale_window": "b0c32c43d21bdcaf",
    "no_clip/dcm_full16": "25834759af73346e",
    "no_clahe_no_pad/png8": "5ffb4ae227921329",
    "no_clahe_no_pad/png16": "12dbd0a832b90770",
    "no_clahe_no_pad/png_rgb_equal": "cb5835280d736af3",
    "no_clahe_no_pad/png_bgra": "2cc014b4ef2a74a9",
    "no_clahe_no_pad/png_constant": "e64020546f8589c2",
    "no_clahe_no_pad/dcm_plain": "20b60695fbd34bad",
    "no_clahe_no_pad/dcm_window": "759fac6e00e535cb",
    "no_clahe_no_pad/dcm_mono1": "c0e2e5b1ddb213bc",
    "no_clahe_no_pad/dcm_mono1_window": "b053a6f4842cfd4d",
    "no_clahe_no_pad/dcm_rescale_window": "f8e3c197e91115e3",
    "no_clahe_no_pad/dcm_full16": "4a86775c6917d962",
    "no_voi_enlarge/png8": "e01a15dbe4febef6",
    "no_voi_enlarge/png16": "9dd9959c5f9baba6",
    "no_voi_enlarge/png_rgb_equal": "43005c9776ea2def",
    "no_voi_enlarge/png_bgra": "e4b3e0c9087f9c65",
    "no_voi_enlarge/png_constant": "f4e8add0d27d020f",
    "no_voi_enlarge/dcm_plain": "47bd15e240cc51fe",
    "no_voi_enlarge/dcm_window": "47bd15e240cc51fe",
    "no_voi_enlarge/dcm_mono1": "5af0f201ef751d68",
    "no_voi_enlarge/dcm_mono1_window": "5af0f201ef751d68",
    "no_voi_enlarge/dcm_rescale_window": "a17c26f7da8d49b3",
    "no_voi_enlarge/dcm_full16": "1b6fdf4e97c2bd20",
    "narrow_clip/png8": "fbe8ce524d8e4e84",
    "narrow_clip/png16": "16579280be394fbd",
    "narrow_clip/png_rgb_equal": "ab1c118f1fe76a96",
    "narrow_clip/png_bgra": "6dff347b834c1f52",
    "narrow_clip/png_constant": "1f258d4fb277cd45",
    "narrow_clip/dcm_plain": "bfae61cfb35c11bf",
    "narrow_clip/dcm_window": "0f15e531df8b1d7f",
    "narrow_clip/dcm_mono1": "0312bb812823fad7",
    "narrow_clip/dcm_mono1_window": "52cb819444aad9b4",
    "narrow_clip/dcm_rescale_window": "43da53e318e95542",
    "narrow_clip/dcm_full16": "c7c5204042dde3fd",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_synthetic_set_matches_golden(tmp_path: Path, workers: int) -> None:
    records, input_digest = make_inputs(tmp_path)
    assert input_digest == INPUT_DIGEST, "the inputs changed, not the recipe: re-record GOLDEN"
    got = {}
    for name, recipe in RECIPES.items():
        if workers == 2 and name != "full":
            continue  # the pool path once; the recipes are the same code in either path
        root = tmp_path / f"cache_{name}"
        build_cache(records=records, out_dir=root, recipe=recipe, workers=workers, progress=False)
        for image_id, digest in cache_digests(root, records).items():
            got[f"{name}/{image_id}"] = digest
    expected = {k: v for k, v in GOLDEN.items() if k in got}
    assert len(expected) == len(records) * (len(RECIPES) if workers == 1 else 1)
    assert {k: v for k, v in got.items() if v != expected[k]} == {}


REAL_DICOMS = (
    "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
    "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "Fake_MONOHR1.dcm",
)
NIH_GOLDEN = "3bb885481e736340"  # recorded on commit ddc5948
NIH_COUNT = 12  # the first 12 NIH images by name (1024 px 8-bit PNG)


def test_real_nih_and_dicom_match_golden(shared_data: Path, tmp_path: Path) -> None:
    paths = sorted((shared_data / "nih" / "images").glob("*.png"))[:NIH_COUNT]
    paths += [shared_data / "dicom" / name for name in REAL_DICOMS]
    records = []
    for path in paths:
        width, height = image_size(path)
        records.append(
            Record(
                image_id=path.stem, source="real", path=str(path), patient_id="p", width=width,
                height=height,
            )
        )  # fmt: skip
    root = tmp_path / "cache"
    build_cache(records=records, out_dir=root, recipe=PreprocessConfig(size=256), progress=False)
    assert combined(cache_digests(root, records)) == NIH_GOLDEN
