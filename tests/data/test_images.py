"""read_image / image_size on real NIH PNGs, real DICOM and small files written here."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrkit.data.images import image_size, is_dicom, read_image
from cxrkit.errors import DicomReadError, ImageReadError

NIH_DICOM = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"


def nih_files_with_mode(shared_data: Path, mode: str) -> list[Path]:
    with (shared_data / "nih" / "MANIFEST.csv").open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["pil_mode"] == mode]
    return [shared_data / "nih" / "images" / row["file"] for row in rows]


def test_rgba_nih_png_gives_its_r_channel(shared_data: Path) -> None:
    path = nih_files_with_mode(shared_data, "RGBA")[0]
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        red = np.asarray(im)[:, :, 0]
    image, meta = read_image(path)
    assert image.dtype == np.float32 and image.shape == (1024, 1024)
    assert meta["channels"] == 4 and meta["dtype"] == "uint8"
    np.testing.assert_array_equal(image, red)


def test_grayscale_nih_png_is_unchanged(shared_data: Path) -> None:
    path = nih_files_with_mode(shared_data, "L")[0]
    image, meta = read_image(path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(image, np.asarray(im))
    assert meta == {"format": "png", "dtype": "uint8", "channels": 1}


def test_16bit_png_round_trips(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, (64, 80), dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), pixels)
    image, meta = read_image(path)
    assert meta["dtype"] == "uint16"
    np.testing.assert_array_equal(image, pixels.astype(np.float32))
    assert image_size(path) == (80, 64)


def test_16bit_tiff_round_trips(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 65536, (48, 40), dtype=np.uint16)
    path = tmp_path / "deep.tif"
    assert cv2.imwrite(str(path), pixels)
    image, _ = read_image(path)
    np.testing.assert_array_equal(image, pixels.astype(np.float32))
    assert image_size(path) == (40, 48)


def test_colour_png_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    image, meta = read_image(path)
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
    assert meta["channels"] == 3
    np.testing.assert_allclose(image, expected, atol=1.0)


def test_truncated_png_names_the_file(shared_data: Path, tmp_path: Path) -> None:
    source = nih_files_with_mode(shared_data, "L")[0]
    data = source.read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"half\.png: cannot decode image"):
        read_image(path)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", pixels)
    assert ok
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.tobytes()[: buffer.size // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG"):
        read_image(path)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(buffer.tobytes())
    assert read_image(whole)[0].shape == (64, 64)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file"):
        read_image(empty)
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file"):
        image_size(empty)


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "text.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageReadError, match=r"text\.png: cannot decode image"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"text\.png: not a readable image"):
        image_size(path)


def test_dicom_detected_by_magic_without_extension(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "IM0001"  # hospital exports often have no extension
    shutil.copyfile(shared_data / "dicom" / NIH_DICOM, path)
    assert is_dicom(path)
    image, meta = read_image(path)
    assert meta["format"] == "dicom" and meta["view"] == "unknown"
    assert image.shape == (1024, 1024)
    assert image_size(path) == (1024, 1024)


def test_dicom_by_extension_errors_are_dicom_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(DicomReadError, match=r"x\.dcm: not a DICOM file"):
        read_image(path)


def test_image_size_reads_headers(shared_data: Path) -> None:
    assert image_size(nih_files_with_mode(shared_data, "RGBA")[0]) == (1024, 1024)
    # RG1 is 1955 rows x 1841 columns: (width, height) = (1841, 1955)
    assert image_size(shared_data / "dicom" / "RG1_J2KI.dcm") == (1841, 1955)
