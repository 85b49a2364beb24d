"""DICOM edge cases on pydicom's public test files (the ``pydicom-data`` package, read offline) and
on files written here: PALETTE COLOR, the GDCM fallback, multi-frame, blank and tiny images, and a
survey of cxrkit's decoder against GDCM's on the files a CXR pipeline can meet."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from cxrkit.data import dicom, images, limits
from cxrkit.data.dicom import read_dicom
from cxrkit.errors import DicomReadError, ImageReadError

gdcm = pytest.importorskip("gdcm")


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in pydicom's installed test data")
    return Path(path)


def gdcm_stored(path: Path) -> np.ndarray | None:
    """Stored values of a single-channel file as GDCM's own reader gives them (the reference), or
    None when GDCM cannot decode it. Written out here, apart from cxrkit's fallback."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        return None
    image = reader.GetImage()
    fmt = image.GetPixelFormat()
    columns, rows = image.GetDimensions()[:2]
    buffer = image.GetBuffer()
    if buffer is None:
        return None
    kind = "i" if fmt.GetPixelRepresentation() else "u"
    dtype = np.dtype(f"={kind}{fmt.GetBitsAllocated() // 8}")
    data = buffer.encode("utf-8", "surrogateescape")
    return np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)


def cxrkit_stored(path: Path) -> np.ndarray:
    """Stored values as cxrkit decodes them (pydicom's plugins, then GDCM), before any LUT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the oddities these files carry
        ds = dicom._read_dataset(path, stop_before_pixels=False)
        return dicom._decode_first_frame(ds, path)


# ------------------------------------------------------------------------------------ PALETTE COLOR
@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", "gdcm-US-ALOKA-16.dcm"])
def test_palette_color_is_the_luminance_of_the_palette(name: str) -> None:
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    # reference: pydicom's palette, then OpenCV's BT.601 luminance in the palette's own dtype
    expected = cv2.cvtColor(apply_color_lut(ds.pixel_array, ds), cv2.COLOR_RGB2GRAY)
    image, meta = read_dicom(path)
    assert image.dtype == np.float32 and image.shape == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(image, expected.astype(np.float32))
    assert meta["palette_applied"] and meta["photometric"] == "PALETTE COLOR"
    # the indices themselves are not what comes back (the bug this replaces)
    assert not np.array_equal(image, ds.pixel_array.astype(np.float32))


def test_palette_levels_reader_agrees() -> None:
    path = pydicom_file("OBXXXX1A.dcm")
    levels, _ = images.read_levels(path)
    np.testing.assert_array_equal(np.asarray(levels), read_dicom(path)[0])


# ------------------------------------------------------------------------------------ GDCM fallback
def test_malformed_12_bit_jpeg_decodes_through_gdcm() -> None:
    path = pydicom_file("JPEG-lossy.dcm")
    ds = pydicom.dcmread(path)
    with pytest.raises(RuntimeError, match="all available plugins"):
        ds.pixel_array  # noqa: B018  (every pydicom plugin refuses it: the fallback is needed)
    stored = cxrkit_stored(path)
    # what pydicom would return for 16-bit allocated, unsigned data: uint16 (rows, columns)
    assert stored.dtype == np.uint16 and stored.shape == (1024, 256)
    np.testing.assert_array_equal(stored, gdcm_stored(path))
    assert int(stored.max()) < 1 << int(ds.BitsStored)  # 12-bit values
    image, meta = read_dicom(path)
    assert image.shape == (1024, 256) and meta["bits_stored"] == 12


def test_gdcm_failure_is_named_with_both_reasons() -> None:
    path = pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(DicomReadError, match="cannot decode pixel data .*GDCM fallback"):
        read_dicom(path)


# ------------------------------------------------------------------------------------ multi-frame
@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "OBXXXX1A_2frame.dcm"])
def test_pydicom_multiframe_files_are_refused(name: str) -> None:
    path = pydicom_file(name)
    with pytest.raises(DicomReadError, match=rf"{name}: multi-frame DICOM \(\d+ frames"):
        read_dicom(path)


def test_synthetic_multiframe_is_refused_at_prepare_time(tmp_path: Path, cr_dicom) -> None:
    from cxrkit.data.sources.common import probe_image

    frames = np.arange(2 * 40 * 40, dtype=np.uint16).reshape(2, 40, 40)
    path = cr_dicom(tmp_path / "two.dcm", frames)
    with pytest.raises(DicomReadError, match=r"two\.dcm: multi-frame DICOM \(2 frames"):
        probe_image(path)  # the adapters' header read: no pixel is decoded


# ------------------------------------------------------------------------------------ blank, tiny
def test_blank_dicom_is_refused_by_name(tmp_path: Path, cr_dicom) -> None:
    path = cr_dicom(tmp_path / "blank.dcm", np.full((40, 40), 512, np.uint16))
    with pytest.raises(DicomReadError, match=r"blank\.dcm: blank DICOM"):
        images.read_levels(path)
    pixels = np.full((40, 40), 512, np.uint16)
    pixels[3, 4] = 513  # one pixel differs: an image
    images.read_levels(cr_dicom(tmp_path / "almost.dcm", pixels))


@pytest.mark.parametrize("size", [(1, 1), (limits.MIN_SIDE - 1, 64), (64, limits.MIN_SIDE - 1)])
def test_tiny_images_are_refused(tmp_path: Path, cr_dicom, size: tuple[int, int]) -> None:
    from cxrkit.data.sources.common import probe_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size[::-1]).astype(np.uint16)
    dcm = cr_dicom(tmp_path / "tiny.dcm", pixels)
    png = tmp_path / "tiny.png"
    cv2.imwrite(str(png), pixels)
    for path in (dcm, png):
        with pytest.raises(ImageReadError, match=rf"tiny\.\w+: image is {size[0]}x{size[1]} pix"):
            images.read_levels(path)
        with pytest.raises(ImageReadError, match="smaller than"):
            probe_image(path)
    edge = rng.integers(0, 4096, (limits.MIN_SIDE, limits.MIN_SIDE)).astype(np.uint16)
    images.read_levels(cr_dicom(tmp_path / "edge.dcm", edge))  # the minimum itself is fine


# ------------------------------------------------------------------------------------ the survey
# pydicom-data files a CXR pipeline can meet: MONOCHROME1/2, uncompressed, RLE, JPEG lossless,
# JPEG Extended, JPEG-LS, JPEG 2000, 8/12/16-bit, signed, big endian, deflated.
AGREE = [
    "RG1_UNCR",
    "RG1_UNCI",
    "RG1_J2KR",
    "RG1_J2KI",
    "RG3_UNCR",
    "RG3_J2KR",
    "RG3_J2KI",
    "MR2_UNCR",
    "MR2_J2KR",
    "MR2_J2KI",
    "693_UNCR",
    "693_J2KR",
    "693_J2KI",
    "JPEG-LL",
    "JPEG2000",
    "JPEG2000_UNC",
    "JPEG-lossy",
    "JPGLosslessP14SV1_1s_1f_8b",
    "MR_small",
    "MR_small_RLE",
    "MR_small_jpeg_ls_lossless",
    "MR_small_jp2klossless",
    "MR_small_bigendian",
    "MR_small_implicit",
    "JPEGLSNearLossless_08",
    "JPEGLSNearLossless_16",
    "CT_small",
    "mlut_18",
    "vlut_04",
    "MR-SIEMENS-DICOM-WithOverlays",
    "examples_overlay",
    "image_dfl",
    "explicit_VR-UN",
    "bad_sequence",
    "MR_small_padded",
]
# Where the two decoders differ, and why (each asserted, so a change in either shows up):
# - JPGExtended: lossy 12-bit JPEG; libjpeg and GDCM's IJG round the inverse DCT differently
#   (at most 1 grey level, on about 1.4% of the pixels).
# - J2K_pixelrep_mismatch: the J2K codestream says unsigned, PixelRepresentation says signed;
#   pydicom follows PixelRepresentation (its documented correction), GDCM the codestream.
DISAGREE = {"JPGExtended": 1, "J2K_pixelrep_mismatch": 8192}
# Both refuse: a truncated file and a JPEG 2000 stream GDCM's OpenJPEG cannot parse either.
BOTH_REFUSE = ("MR_truncated", "JPEG2000-embedded-sequence-delimiter")


@pytest.mark.parametrize("name", AGREE)
def test_decode_matches_gdcm(name: str) -> None:
    path = pydicom_file(f"{name}.dcm")
    ours, reference = cxrkit_stored(path), gdcm_stored(path)
    assert reference is not None
    assert ours.shape == reference.shape
    np.testing.assert_array_equal(ours.astype(np.int64), reference.astype(np.int64))


@pytest.mark.parametrize(("name", "max_diff"), sorted(DISAGREE.items()))
def test_known_disagreements_with_gdcm(name: str, max_diff: int) -> None:
    path = pydicom_file(f"{name}.dcm")
    ours, reference = cxrkit_stored(path), gdcm_stored(path)
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(np.int64) - reference.astype(np.int64)).max() == max_diff


@pytest.mark.parametrize("name", BOTH_REFUSE)
def test_files_neither_decoder_reads(name: str) -> None:
    path = pydicom_file(f"{name}.dcm")
    assert gdcm_stored(path) is None
    with pytest.raises(DicomReadError, match=name):
        cxrkit_stored(path)


def test_real_sample_dicoms_match_gdcm(shared_data: Path) -> None:
    # Lossy JPEG Baseline: cxrkit decodes with libjpeg (pylibjpeg, before GDCM: the golden
    # digests hold libjpeg's pixels), whose inverse DCT rounds differently from GDCM's IJG on
    # about 3 % of the pixels, by one grey level. Everything else is exact.
    files = sorted((shared_data / "dicom").glob("*.dcm"))
    assert files
    for path in files:
        ours, reference = cxrkit_stored(path), gdcm_stored(path)
        assert ours.shape == reference.shape
        lossy = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        diff = np.abs(ours.astype(np.int64) - reference.astype(np.int64))
        if lossy == pydicom.uid.JPEGBaseline8Bit:
            assert diff.max() <= 1 and (diff > 0).mean() < 0.05, path.name
        else:
            assert diff.max() == 0, path.name


def test_header_number_that_is_not_one() -> None:
    path = pydicom_file("badVR.dcm")  # NumberOfFrames "1A"
    with pytest.raises(DicomReadError, match="header tag NumberOfFrames is not a number"):
        dicom.read_dicom_header(path)
