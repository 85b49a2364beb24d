"""DICOM as grey levels: the display chain run once per stored value gives the same float32 image
as pydicom's functions applied to every pixel (the reference), for unsigned and signed data,
rescale, windows, a VOI LUT sequence and MONOCHROME1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from cxrkit.data.dicom import read_dicom, read_dicom_levels
from cxrkit.data.images import GreyLevels, read_image, read_levels


def write(path: Path, pixels: np.ndarray, *, photometric: str, **tags: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "P1"
    bits = 8 * pixels.dtype.itemsize
    ds.set_pixel_data(pixels, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def reference(path: Path, *, apply_voi: bool) -> np.ndarray:
    """The chain on every pixel, as cxrkit did before the grey-level path."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    if apply_voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    image = np.asarray(values, dtype=np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = np.float32(image.max()) + np.float32(image.min()) - image
    return image


def voi_sequence() -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]  # 256 entries from stored value 0, 16-bit output
    table = (np.arange(256, dtype=np.uint32) * 37 * 251 % 65536).astype(np.uint16)  # not monotone
    item.LUTData = table.tobytes()
    return Sequence([item])


rng = np.random.default_rng(3)
CASES = {
    "uint16 plain": (rng.integers(300, 4000, (20, 30)).astype(np.uint16), "MONOCHROME2", {}),
    "uint16 window": (
        rng.integers(0, 4096, (20, 30)).astype(np.uint16),
        "MONOCHROME2",
        {"WindowCenter": 1500, "WindowWidth": 1800},
    ),
    "uint16 mono1 window rescale": (
        rng.integers(0, 65536, (20, 30)).astype(np.uint16),
        "MONOCHROME1",
        {
            "RescaleSlope": 0.5,
            "RescaleIntercept": -100,
            "WindowCenter": [9000, 1],
            "WindowWidth": [20000, 3],
        },
    ),
    "int16 signed rescale window": (
        rng.integers(-2000, 3000, (20, 30)).astype(np.int16),
        "MONOCHROME2",
        {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 40, "WindowWidth": 400},
    ),
    "int16 signed mono1": (rng.integers(-500, 500, (9, 11)).astype(np.int16), "MONOCHROME1", {}),
    "uint8 sigmoid": (
        rng.integers(0, 256, (16, 16)).astype(np.uint8),
        "MONOCHROME2",
        {"WindowCenter": 128, "WindowWidth": 100, "VOILUTFunction": "SIGMOID"},
    ),
    "uint8 voi lut sequence": (
        rng.integers(0, 256, (16, 16)).astype(np.uint8),
        "MONOCHROME2",
        {"VOILUTSequence": voi_sequence()},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("apply_voi", [True, False])
def test_levels_expand_to_the_per_pixel_chain(tmp_path: Path, name: str, apply_voi: bool) -> None:
    pixels, photometric, tags = CASES[name]
    path = write(tmp_path / "x.dcm", pixels, photometric=photometric, **tags)
    expected = reference(path, apply_voi=apply_voi)
    levels, meta = read_dicom_levels(path, apply_voi_lut=apply_voi)
    assert isinstance(levels, GreyLevels)
    assert levels.levels.dtype in (np.uint8, np.uint16) and len(levels.values) <= 1 << 16
    np.testing.assert_array_equal(levels.to_image(), expected)
    image, meta_full = read_dicom(path, apply_voi_lut=apply_voi)
    np.testing.assert_array_equal(image, expected)
    assert meta == meta_full and meta["inverted"] == (photometric == "MONOCHROME1")


def test_32_bit_data_beyond_the_table_stay_per_pixel(tmp_path: Path) -> None:
    pixels = (np.arange(12, dtype=np.uint32).reshape(3, 4) * 100_000).astype(np.uint32)
    path = write(tmp_path / "wide.dcm", np.zeros((3, 4), np.uint16), photometric="MONOCHROME2")
    ds = pydicom.dcmread(path)  # set_pixel_data stops at 16 bits: write the 32-bit data by hand
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    image, _ = read_dicom_levels(path)
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    np.testing.assert_array_equal(image, pixels.astype(np.float32))


def test_raster_levels_are_the_decoded_pixels(tmp_path: Path) -> None:
    import cv2

    for dtype, top in ((np.uint8, 256), (np.uint16, 65536)):
        pixels = rng.integers(0, top, (20, 24)).astype(dtype)  # >= limits.MIN_SIDE
        cv2.imwrite(str(tmp_path / "x.png"), pixels)
        levels, meta = read_levels(tmp_path / "x.png")
        assert isinstance(levels, GreyLevels) and len(levels.values) == top
        np.testing.assert_array_equal(levels.levels, pixels)
        image, meta_full = read_image(tmp_path / "x.png")
        np.testing.assert_array_equal(image, pixels.astype(np.float32))
        assert meta == meta_full


NATIVE = {
    "uint16 16 bits": (rng.integers(0, 65536, (6, 7)).astype(np.uint16), 16, 0),
    "uint16 12 bits, garbage high bits": (rng.integers(0, 65536, (6, 7)).astype(np.uint16), 12, 0),
    "int16 16 bits": (rng.integers(-32768, 32768, (6, 7)).astype(np.int16), 16, 1),
    "int16 12 bits (pydicom sign-extends)": (rng.integers(-2048, 2048, (6, 7)).astype(np.int16),
                                              12, 1),
    "uint8": (rng.integers(0, 256, (5, 9)).astype(np.uint8), 8, 0),
    "uint8 7 bits": (rng.integers(0, 256, (5, 9)).astype(np.uint8), 7, 0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_pixels_equal_pydicoms_decoder(tmp_path: Path, name: str) -> None:
    from pydicom.pixels import pixel_array

    from cxrkit.data import dicom

    pixels, bits_stored, representation = NATIVE[name]
    path = write(
        tmp_path / "n.dcm", np.zeros(pixels.shape, pixels.dtype), photometric="MONOCHROME2"
    )
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, representation
    ds.PixelData = pixels.tobytes()  # raw bits, unused high bits included
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    expected = pixel_array(ds, index=0)
    got = dicom._decode_first_frame(ds, path)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    fast = dicom._native_first_frame(ds)
    assert (fast is None) == (representation == 1 and bits_stored < 8 * pixels.itemsize)


def test_multiframe_native_gives_the_first_frame(tmp_path: Path) -> None:
    from cxrkit.data import dicom

    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = write(tmp_path / "cine.dcm", frames, photometric="MONOCHROME2")
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(dicom._native_first_frame(ds), frames[0])
