"""DICOM -> float32 display image + metadata.

The pixel pipeline follows the DICOM grayscale display chain (PS3.3 C.11 and C.7.6.3.1.2): stored
values -> Modality LUT (rescale slope/intercept or a LUT) -> VOI LUT or window -> presentation
(MONOCHROME1 inverted so that **higher = brighter = denser**, as a radiologist sees it). Percentile
clipping, CLAHE and resizing are *not* done here; they belong to :mod:`cxrkit.data.preprocess`.

Compressed transfer syntaxes (JPEG baseline/lossless, JPEG-LS, JPEG 2000, HTJ2K) are decoded by the
pylibjpeg plugins (or GDCM / Pillow where pydicom can use them); a missing plugin gives an error
that names the package to install. When every pydicom plugin fails, GDCM's own reader
(``gdcm.ImageReader``) is tried on the file: pydicom's GDCM plugin refuses 12-bit JPEG Extended by
its own check, and files such as pydicom's malformed ``JPEG-lossy.dcm`` decode with GDCM (as with
DCMTK) while libjpeg rejects them.

PALETTE COLOR images (ultrasound, secondary captures) are turned into RGB through their palette
(``pydicom.pixels.apply_color_lut``) and then into luminance with the ITU-R BT.601 weights of
OpenCV's ``cvtColor`` (0.299 R + 0.587 G + 0.114 B), as any other colour image. Multi-frame files
are refused by name: which frame is the radiograph cannot be told from the file, and taking the
first one silently would hide a cine, a tomosynthesis stack or a multi-view file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.pixels import apply_voi_lut as pydicom_apply_voi_lut
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrkit.data.limits import check_pixels
from cxrkit.data.vocab import normalize_view
from cxrkit.errors import DicomReadError

if TYPE_CHECKING:
    from cxrkit.data.images import GreyLevels

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntax UID prefix -> the pylibjpeg plugin that decodes it (what a user should install).
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg",  # JPEG baseline / extended (.50, .51)
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg",  # JPEG-LS (.80, .81)
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",  # JPEG 2000 (.90, .91)
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg",  # HTJ2K (.201, .202, .203)
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE lossless
}


def _codec_package(uid: str) -> str:
    for prefix in sorted(_CODEC_PACKAGES, key=len, reverse=True):
        if uid.startswith(prefix):
            return _CODEC_PACKAGES[prefix]
    return "pylibjpeg with its plugins, or python-gdcm"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DicomReadError(f"{path}: file not found")
    if not path.is_file():
        raise DicomReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DicomReadError(f"{path}: empty file")


def _read_dataset(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """dcmread, strict first; a preamble-less file is accepted only if it looks like an image."""
    _check_file(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        return _read_without_preamble(path, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on corrupt input; all mean the same here
        raise DicomReadError(f"{path}: corrupt DICOM file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line: pydicom lists each plugin's failure on a line of its own,
    and the CLI prints an error as one line."""
    return f"{type(exc).__name__}: " + "; ".join(
        line.strip() for line in str(exc).splitlines() if line.strip()
    )


def _read_without_preamble(path: Path, *, stop_before_pixels: bool) -> Dataset:
    # Some archives write raw datasets without the 128-byte preamble and "DICM" marker. force=True
    # parses anything, so only accept the result when it carries the image module's Rows/Columns.
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        looks_like_image = "Rows" in ds and "Columns" in ds and int(ds.Rows) > 0
    except Exception:  # random bytes fail in arbitrary ways; all mean "not DICOM"
        looks_like_image = False
    if not looks_like_image:
        raise DicomReadError(f"{path}: not a DICOM file") from None
    if not _transfer_syntax(ds):
        # Without file meta the decoder needs the encoding the parser detected.
        implicit, little = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    return ds


def _view(ds: Dataset) -> str:
    # ViewPosition (0018,5101) goes through the same table as every CSV's view column: both
    # laterals (LL, RL) are "LL"; decubitus, oblique and non-standard values are "unknown".
    return normalize_view(str(ds.get("ViewPosition", "") or ""))


def _pixel_spacing(ds: Dataset) -> list[float] | None:
    """[row, col] spacing in mm; None when absent or meaningless (0 is written by some devices)."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is None:
            continue
        try:
            spacing = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(s > 0 for s in spacing):
            return spacing
    return None


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else ""


def _header(ds: Dataset, path: Path) -> dict[str, Any]:
    def text(tag: str) -> str:
        return str(ds.get(tag, "") or "").strip()

    def integer(tag: str) -> int | None:
        try:
            value = ds.get(tag)
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError) as exc:  # e.g. NumberOfFrames "1A"
            raise DicomReadError(f"{path}: header tag {tag} is not a number ({exc})") from None

    return {
        "view": _view(ds),
        "view_position": text("ViewPosition"),
        "pixel_spacing": _pixel_spacing(ds),
        "photometric": text("PhotometricInterpretation"),
        "bits_stored": integer("BitsStored"),
        "rows": integer("Rows"),
        "columns": integer("Columns"),
        "number_of_frames": integer("NumberOfFrames") or 1,
        "samples_per_pixel": integer("SamplesPerPixel") or 1,
        "patient_id": text("PatientID"),
        "sop_instance_uid": text("SOPInstanceUID"),
        "modality": text("Modality"),
        "transfer_syntax": _transfer_syntax(ds),
    }


def read_dicom_header(path: str | Path) -> dict[str, Any]:
    """Read a DICOM file's metadata without decoding its pixels (fast: stops before PixelData).

    Returns:
        ``view`` (``PA``/``AP``/``LL``/``unknown``), ``view_position`` (the raw tag),
        ``pixel_spacing`` ([row, col] mm or None), ``photometric``, ``bits_stored``, ``rows``,
        ``columns``, ``number_of_frames``, ``samples_per_pixel``, ``patient_id``,
        ``sop_instance_uid``, ``modality``, ``transfer_syntax`` (UID string).

    Raises:
        DicomReadError: missing, empty or non-DICOM file.
    """
    path = Path(path)
    return _header(_read_dataset(path, stop_before_pixels=True), path)


def check_single_frame(header: dict[str, Any], *, path: str | Path) -> None:
    """Refuse a multi-frame file (``NumberOfFrames`` > 1) from its :func:`read_dicom_header`.

    Raises:
        DicomReadError: naming the file and its number of frames.
    """
    frames = int(header.get("number_of_frames") or 1)
    if frames > 1:
        raise DicomReadError(
            f"{path}: multi-frame DICOM ({frames} frames, NumberOfFrames); cxrkit reads "
            "single-frame radiographs and does not guess which frame is the image: export the "
            "frame you want as its own file"
        )


_NATIVE_LITTLE_ENDIAN = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


def _native_first_frame(ds: Dataset) -> np.ndarray | None:
    """The first frame of uncompressed little-endian greyscale 8/16-bit data, read in place from
    the PixelData bytes (what pydicom's decoder returns for it, without its per-file set-up and
    copy), or None for anything else: pydicom decodes those.

    Unused high bits are masked off, as pydicom does; signed data with unused high bits (which
    need sign extension) are left to pydicom.
    """
    try:
        if _transfer_syntax(ds) not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
            return None
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation) == 1
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or allocated not in (8, 16):
            return None
        if not 0 < stored <= allocated or (signed and stored != allocated):
            return None
    except (AttributeError, TypeError, ValueError):  # a missing or odd tag: pydicom decides
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    data = ds.PixelData
    if rows <= 0 or columns <= 0 or len(data) < rows * columns * dtype.itemsize:
        return None
    frame = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if stored < allocated:
        frame = np.bitwise_and(frame, dtype.type((1 << stored) - 1))
    return frame


_PREFERRED_PLUGINS = ("pylibjpeg", "pillow")


def _plugin_order(available: Sequence[str]) -> list[str]:
    """pydicom's decoding plugins to try, in order: pylibjpeg, Pillow, then any other but GDCM."""
    rest = sorted(set(available) - set(_PREFERRED_PLUGINS) - {"gdcm"})
    return [name for name in _PREFERRED_PLUGINS if name in available] + rest


def _decode_first_frame(ds: Dataset, path: Path) -> np.ndarray:
    native = _native_first_frame(ds)
    if native is not None:
        return native
    uid = _transfer_syntax(ds)
    plugins: list[str] = []
    if uid:
        name = UID(uid).name
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DicomReadError(
                f"{path}: transfer syntax {name} ({uid}) is not supported by pydicom"
            ) from None
        if not decoder.is_available:
            package = _codec_package(uid)
            raise DicomReadError(
                f"{path}: transfer syntax {name} ({uid}) needs {package} (pip install {package})"
            )
        # pydicom tries its GDCM plugin first once python-gdcm is installed, and GDCM's JPEG
        # rounding differs from libjpeg's: the plugins go in pydicom's order without GDCM
        # (pylibjpeg, then Pillow: the pixels of an install without GDCM, which the golden digests
        # hold), and GDCM's own reader comes last.
        plugins = _plugin_order(decoder.available_plugins)
    failures: list[str] = []
    for plugin in plugins or [""]:
        try:
            # Multi-frame files are refused before this; index=0 keeps a header that lies about
            # NumberOfFrames from decoding more than one frame.
            return pixel_array(ds, index=0, decoding_plugin=plugin)
        except Exception as exc:  # decoders raise RuntimeError, ValueError, OSError... on bad data
            failures.append(f"{plugin or 'pydicom'}: {_one_line(exc)}")
    try:
        return _gdcm_first_frame(ds, path)
    except DicomReadError as fallback:
        raise DicomReadError(
            f"{path}: cannot decode pixel data ({'; '.join(failures)}; GDCM fallback: {fallback})"
        ) from None


def _gdcm_first_frame(ds: Dataset, path: Path) -> np.ndarray:
    """The first frame as GDCM's own reader decodes it, in the dtype and shape pydicom returns for
    single-channel data (``(rows, columns)``, ``uint``/``int`` of BitsAllocated bits).

    Raises:
        DicomReadError: GDCM is not installed, cannot read the file, or the data is not one
            channel of 8/16/32 bits (colour is left to pydicom).
    """
    try:
        import gdcm
    except ImportError:
        raise DicomReadError("python-gdcm is not installed (pip install python-gdcm)") from None
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise DicomReadError("gdcm.ImageReader cannot read the file")
    image = reader.GetImage()
    pixel_format = image.GetPixelFormat()
    samples, allocated = pixel_format.GetSamplesPerPixel(), pixel_format.GetBitsAllocated()
    if samples != 1 or allocated not in (8, 16, 32):
        raise DicomReadError(f"GDCM gives {samples} samples of {allocated} bits; not used")
    columns, rows = (int(d) for d in image.GetDimensions()[:2])
    dtype = np.dtype(f"={'i' if pixel_format.GetPixelRepresentation() else 'u'}{allocated // 8}")
    buffer = image.GetBuffer()
    if buffer is None:  # what GDCM returns when its codec failed after the header parsed
        raise DicomReadError("GDCM could not decode the pixel data")
    # GDCM hands char* over as str; surrogateescape gets the bytes back (as pydicom's plugin does).
    data = buffer.encode("utf-8", "surrogateescape")
    if (
        rows != int(ds.Rows)
        or columns != int(ds.Columns)
        or len(data) < rows * columns * dtype.itemsize
    ):
        raise DicomReadError(f"GDCM decoded {len(data)} bytes for {columns}x{rows} pixels")
    return np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns).copy()


def read_dicom(
    path: str | Path, *, apply_voi_lut: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM image as it should be displayed, before any contrast processing.

    Steps: decode the (single) frame; Modality LUT (rescale slope/intercept or LUT); VOI LUT or the
    first window (only if the header has one and ``apply_voi_lut``); colour images (secondary
    captures) are reduced to luminance; MONOCHROME1 is inverted (``max + min - x``) *after*
    windowing, because the window is defined on the stored polarity.

    Args:
        path: the DICOM file.
        apply_voi_lut: apply the header's VOI LUT / window (the acquisition's intended display).

    Returns:
        ``image``: float32 (rows, columns), higher = brighter; values in modality/VOI units (not
        normalised). ``meta``: :func:`read_dicom_header` fields plus ``frame`` (always 0: the frame
        returned), ``voi_applied`` (bool), ``inverted`` (bool) and, for PALETTE COLOR,
        ``palette_applied`` (True).

    Raises:
        DicomReadError: missing/empty/non-DICOM file, no pixel data, multi-frame file, missing
            codec, corrupt data (after GDCM's reader also failed).
    """
    image, meta = read_dicom_levels(path, apply_voi_lut=apply_voi_lut)
    if not isinstance(image, np.ndarray):
        image = image.to_image()
    return image, meta


# Integer images spanning at most this many stored values go through the display chain once per
# value (a lookup table) instead of once per pixel.
_MAX_LEVELS = 1 << 16


def read_dicom_levels(
    path: str | Path, *, apply_voi_lut: bool = True
) -> tuple[GreyLevels | np.ndarray, dict[str, Any]]:
    """:func:`read_dicom`, with an integer image left as grey levels and their display values.

    The display chain (Modality LUT, VOI, MONOCHROME1 inversion) maps each stored value on its
    own, so it runs on the ``max - min + 1`` possible values and the image is a lookup into them:
    ``image = values[stored - min]``, the same float32 numbers as applying it to every pixel.

    Returns:
        ``image``: :class:`cxrkit.data.images.GreyLevels` for single-channel integer data spanning
        at most 65,536 values, else the float32 (rows, columns) image. ``meta``: as
        :func:`read_dicom`.

    Raises:
        DicomReadError: as :func:`read_dicom`.
    """
    from cxrkit.data.images import GreyLevels  # images imports this module

    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=False)
    meta = _header(ds, path)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomReadError(f"{path}: no pixel data (is this a structured report or a header?)")

    check_pixels(
        int(meta["columns"] or 0), int(meta["rows"] or 0), path=path, error=DicomReadError
    )  # before decoding: a header can claim any Rows x Columns
    check_single_frame(meta, path=path)
    stored = _decode_first_frame(ds, path)
    if meta["photometric"] == "PALETTE COLOR":
        meta.update(frame=0, voi_applied=False, inverted=False, palette_applied=True)
        return _palette_luminance(stored, ds, path), meta
    if stored.ndim == 3 and meta["samples_per_pixel"] == 3:
        # Colour secondary captures: pydicom converts YBR to RGB; LUTs do not apply to colour data.
        rgb = stored.astype(np.float32)
        image = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        meta.update(frame=0, voi_applied=False, inverted=False)
        return np.ascontiguousarray(image, dtype=np.float32), meta
    if stored.ndim != 2:
        raise DicomReadError(
            f"{path}: expected a single-channel image, got pixel array of shape {stored.shape}"
        )

    inverted = meta["photometric"] == "MONOCHROME1"
    meta.update(frame=0, inverted=inverted)
    table = _level_table(stored)
    if table is not None:
        levels, low, high = table
        domain = np.arange(low, high + 1, dtype=np.int64).astype(stored.dtype)
        values, meta["voi_applied"] = _display_values(domain, ds, path, apply_voi_lut)
        image = GreyLevels(levels=levels, values=values)
        present = image.counts() > 0
        finite = np.isfinite(values)
        if not finite[present].all():
            raise DicomReadError(f"{path}: pixel data contains NaN or infinite values")
        if not finite.all():  # a value no pixel has: keep the table finite for later steps
            values[~finite] = values[present][0]
        if inverted:
            shown = values[present]
            image.values = _invert(values, lowest=shown.min(), highest=shown.max())
        return image, meta

    image, meta["voi_applied"] = _display_values(stored, ds, path, apply_voi_lut)
    if not np.isfinite(image).all():
        raise DicomReadError(f"{path}: pixel data contains NaN or infinite values")
    if inverted:
        image = _invert(image, lowest=image.min(), highest=image.max())
    return np.ascontiguousarray(image), meta


def _palette_luminance(stored: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """PALETTE COLOR indices -> RGB through the file's palette -> float32 luminance (BT.601).

    The conversion is OpenCV's ``cvtColor(RGB2GRAY)`` in the palette's own dtype (uint8/uint16),
    the same numbers as :func:`cxrkit.data.images.read_image` gives a colour PNG.
    """
    try:
        rgb = apply_color_lut(stored, ds)
    except Exception as exc:  # a missing or malformed palette descriptor/table
        raise DicomReadError(
            f"{path}: PALETTE COLOR image with an unusable palette ({_one_line(exc)})"
        ) from exc
    if rgb.dtype not in (np.uint8, np.uint16):
        rgb = rgb.astype(np.float32)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(grey, dtype=np.float32)


def _level_table(stored: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """``(levels, low, high)`` with ``stored == levels + low`` and ``levels`` uint8/uint16, or
    None when the data is not integer or spans more than 65,536 values.

    Unsigned data are their own levels (the table starts at 0, no copy); signed 8/16-bit data are
    offset by half their range with one XOR on the same bits.
    """
    if stored.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(stored), 0, int(stored.max())
    if stored.dtype in (np.int8, np.int16):
        unsigned = np.dtype(f"uint{8 * stored.dtype.itemsize}")
        offset = 1 << (8 * stored.dtype.itemsize - 1)
        levels = np.bitwise_xor(np.ascontiguousarray(stored).view(unsigned), unsigned.type(offset))
        return levels, -offset, int(stored.max())
    if stored.dtype.kind in "iu":
        low, high = int(stored.min()), int(stored.max())
        if high - low < _MAX_LEVELS:
            return (stored.astype(np.int64) - low).astype(np.uint16), low, high
    return None


def _display_values(
    stored: np.ndarray, ds: Dataset, path: Path, apply_voi_lut: bool
) -> tuple[np.ndarray, bool]:
    """Modality LUT then VOI (when asked for and present), elementwise: float32, and whether the
    VOI step ran."""
    values = apply_modality_lut(stored, ds)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    voi_applied = bool(apply_voi_lut and has_voi)
    if voi_applied:
        # A VOI LUT Sequence wins over windowing (prefer_lut); index=0 takes the first of several
        # windows, the one the acquisition designated as default.
        try:
            values = pydicom_apply_voi_lut(values, ds, index=0, prefer_lut=True)
        except ValueError as exc:  # e.g. WindowWidth 0: pydicom refuses the window
            raise DicomReadError(
                f"{path}: invalid VOI LUT / window in the header ({exc}); preprocess with "
                "--no-voi-lut (data.preprocess.apply_voi_lut=false) to use the full range instead"
            ) from None
    return np.asarray(values, dtype=np.float32), voi_applied


def _invert(image: np.ndarray, *, lowest: np.float32, highest: np.float32) -> np.ndarray:
    # MONOCHROME1: minimum value = white. Flip within the image's own range (its lowest and
    # highest displayed values) so that display values stay in the same units and range.
    return np.float32(highest) + np.float32(lowest) - image
