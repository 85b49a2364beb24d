"""DICOM reading: real files from ../shared/data/dicom plus tiny files written here with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from cxrkit.data import dicom
from cxrkit.data.dicom import read_dicom, read_dicom_header
from cxrkit.errors import DicomReadError

MONO2 = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
MONO1_TWIN = "Fake_MONOHR1.dcm"
RG1 = "RG1_J2KI.dcm"
NIH_DICOM = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    **tags: object,
) -> Path:
    """A minimal CR file; ``pixels`` (frames, rows, cols) or (rows, cols) uint16, or None."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "P1"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    else:
        ds.Rows, ds.Columns = 4, 4
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


# --- real files --------------------------------------------------------------------------------


def test_monochrome1_twin_is_inverted(shared_data: Path) -> None:
    original, meta2 = read_dicom(shared_data / "dicom" / MONO2)
    twin, meta1 = read_dicom(shared_data / "dicom" / MONO1_TWIN)
    assert (meta2["photometric"], meta2["inverted"]) == ("MONOCHROME2", False)
    assert (meta1["photometric"], meta1["inverted"]) == ("MONOCHROME1", True)
    assert original.dtype == twin.dtype == np.float32
    assert original.shape == twin.shape == (1024, 1024)
    # Same stored pixels, opposite polarity: x + x' = max + min everywhere.
    np.testing.assert_array_equal(original + twin, original.max() + original.min())
    assert np.corrcoef(original.ravel(), twin.ravel())[0, 1] < -0.999
    assert meta2["view"] == "PA" and meta2["pixel_spacing"] == [0.168, 0.168]
    assert meta2["transfer_syntax"] == "1.2.840.10008.1.2.4.50"  # JPEG baseline


def test_rg1_jpeg2000_monochrome1_matches_reference(shared_data: Path) -> None:
    path = shared_data / "dicom" / RG1
    header = read_dicom_header(path)
    image, meta = read_dicom(path)
    assert image.shape == (header["rows"], header["columns"]) == (1955, 1841)
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert meta["photometric"] == "MONOCHROME1" and meta["bits_stored"] == 15
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.91" and meta["voi_applied"]
    assert meta["view"] == "PA"
    assert meta["pixel_spacing"] is None  # the file says [0.000, 0.000]: no usable spacing

    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    # Reference 1: pydicom's own LUT functions, then the inversion.
    ref = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    np.testing.assert_allclose(image, ref.max() + ref.min() - ref, rtol=1e-5, atol=0.05)
    # Reference 2: the standard's linear window (PS3.3 C.11.2.1.2.1) written out by hand;
    # no rescale in this file, so the output range is the 15-bit stored range.
    c, w, y_max = 15000.0, 30000.0, 2.0**15 - 1
    windowed = np.clip(((stored - (c - 0.5)) / (w - 1) + 0.5) * y_max, 0, y_max)
    np.testing.assert_allclose(
        image, windowed.max() + windowed.min() - windowed, rtol=1e-5, atol=0.05
    )


def test_rg1_without_voi_is_inverted_stored_values(shared_data: Path) -> None:
    image, meta = read_dicom(shared_data / "dicom" / RG1, apply_voi_lut=False)
    stored = pixel_array(shared_data / "dicom" / RG1).astype(np.float32)
    assert not meta["voi_applied"]
    np.testing.assert_array_equal(image, stored.max() + stored.min() - stored)


def test_nih_dicom_without_view_position(shared_data: Path) -> None:
    image, meta = read_dicom(shared_data / "dicom" / NIH_DICOM)
    assert meta["view"] == "unknown" and meta["view_position"] == ""
    assert meta["modality"] == "DX" and meta["transfer_syntax"] == "1.2.840.10008.1.2"
    assert image.shape == (1024, 1024) and not meta["inverted"]


def test_nih_dicom_equals_nih_png(shared_data: Path) -> None:
    png = shared_data / "nih" / "images" / "00000002_000.png"
    if not png.is_file():
        pytest.skip("00000002_000.png is not part of this data sample")
    from cxrkit.data.images import read_image

    image, _ = read_dicom(shared_data / "dicom" / NIH_DICOM)
    np.testing.assert_array_equal(image, read_image(png)[0])


def test_header_matches_full_read(shared_data: Path) -> None:
    path = shared_data / "dicom" / MONO2
    header = read_dicom_header(path)
    _, meta = read_dicom(path)
    assert header == {k: meta[k] for k in header}
    assert header["rows"] == 1024 and header["columns"] == 1024


# --- synthetic files: LUT order, frames, view mapping -------------------------------------------


def test_modality_lut_applied_before_window(tmp_path: Path) -> None:
    stored = np.array([[0, 512, 1024], [1280, 2048, 4095]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "ct_like.dcm",
        stored,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,  # stored -> [-1024, -512, 0, 256, 1024, 3071]
        WindowCenter=0,
        WindowWidth=1024,  # window on the *rescaled* values: [-512, 512]
    )
    image, meta = read_dicom(path)
    assert meta["voi_applied"]
    low, high = image.min(), image.max()
    assert image[0, 0] == image[0, 1] == low  # at or below the window
    assert image[1, 1] == image[1, 2] == high  # above the window
    assert low < image[0, 2] < image[1, 0] < high
    # Linear window (PS3.3 C.11.2.1.2.1): y = ((x - (c - 0.5)) / (w - 1) + 0.5) * range + low
    for value, (r, c) in ((0, (0, 2)), (256, (1, 0))):
        fraction = (value + 0.5) / 1023 + 0.5
        assert image[r, c] == pytest.approx(low + fraction * (high - low), rel=1e-4)
    # Without the VOI the modality LUT alone gives Hounsfield-like values.
    raw, _ = read_dicom(path, apply_voi_lut=False)
    np.testing.assert_array_equal(raw, stored.astype(np.float32) - 1024)


def test_multiframe_is_refused_by_name(tmp_path: Path) -> None:
    # Taking frame 0 silently would hide a cine or a multi-view file (issue 9): refused, and the
    # header read by the adapters says so before any pixel is decoded.
    frames = np.arange(3 * 5 * 6, dtype=np.uint16).reshape(3, 5, 6)
    path = write_dicom(tmp_path / "cine.dcm", frames, bits_stored=12)
    with pytest.raises(DicomReadError, match=r"cine\.dcm: multi-frame DICOM \(3 frames"):
        read_dicom(path)
    header = read_dicom_header(path)
    assert header["number_of_frames"] == 3
    with pytest.raises(DicomReadError, match="multi-frame"):
        dicom.check_single_frame(header, path=path)


@pytest.mark.parametrize(
    ("raw", "view"), [("PA", "PA"), ("AP", "AP"), ("LL", "LL"), ("RL", "LL"), ("LLD", "unknown")]
)
def test_view_position_mapping(tmp_path: Path, raw: str, view: str) -> None:
    path = write_dicom(tmp_path / "v.dcm", np.zeros((4, 4), np.uint16), ViewPosition=raw)
    assert read_dicom_header(path)["view"] == view


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    ds = Dataset()
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    del ds.file_meta  # a raw dataset: no preamble, no "DICM", no transfer syntax
    path = tmp_path / "raw.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    image, _ = read_dicom(path)
    np.testing.assert_array_equal(image, pixels)


# --- bad input: each names the file and the problem ---------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"")
    with pytest.raises(DicomReadError, match=r"x\.dcm: empty file"):
        read_dicom(path)


def test_random_bytes_are_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DicomReadError, match=r"x\.dcm: not a DICOM file"):
        read_dicom(path)
    with pytest.raises(DicomReadError, match=r"x\.dcm: not a DICOM file"):
        read_dicom_header(path)


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", None)
    assert read_dicom_header(path)["rows"] == 4  # the header alone is fine
    with pytest.raises(DicomReadError, match=r"x\.dcm: no pixel data"):
        read_dicom(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match=r"x\.dcm: file not found"):
        read_dicom(tmp_path / "x.dcm")


def test_missing_codec_names_the_package(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(DicomReadError) as info:
        read_dicom(shared_data / "dicom" / RG1)
    message = str(info.value)
    assert message.startswith(str(shared_data / "dicom" / RG1))
    assert "JPEG 2000" in message and "1.2.840.10008.1.2.4.91" in message
    assert "pip install pylibjpeg-openjpeg" in message
