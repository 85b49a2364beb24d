"""Read any supported image file (PNG, JPEG, TIFF, DICOM) as one float32 single-channel array.

Raster files are decoded by OpenCV with ``IMREAD_UNCHANGED`` so 16-bit PNG/TIFF keep their depth;
DICOM goes through :mod:`cxrkit.data.dicom` (Modality LUT, VOI LUT, MONOCHROME1 inversion). A file
is DICOM if its name ends in ``.dcm``/``.dicom`` or it carries the ``DICM`` marker at byte 128
(hospital exports often have no extension at all).

:func:`read_levels` returns the same image as :func:`read_image` without expanding it: an integer
image (8/16-bit files, integer DICOM) comes back as its grey levels plus the display value of each
level (:class:`GreyLevels`), so that the preprocessing recipe can work on at most 65,536 values
instead of every pixel.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrkit.data.dicom import read_dicom_header, read_dicom_levels
from cxrkit.data.limits import check_min_size, check_pixels
from cxrkit.errors import DicomReadError, ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


# Images with more pixels than this count their levels with np.bincount: OpenCV's histogram counts
# in float32, exact only below 2**24.
_CALCHIST_MAX_PIXELS = 1 << 24


@dataclass(eq=False)
class GreyLevels:
    """A display image as integer grey levels and the value of each level.

    The display image is ``values[levels]`` (what :func:`read_image` returns), float32 (H, W).

    Attributes:
        levels: uint8 or uint16 (H, W), every entry ``< len(values)``.
        values: float32 (L,), the display value of each level (higher = brighter), L <= 65,536.
    """

    levels: np.ndarray
    values: np.ndarray
    _counts: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.levels.ndim != 2 or self.levels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"levels must be uint8/uint16 (H, W), got {self.levels.dtype}")
        if self.values.ndim != 1 or self.values.dtype != np.float32 or not len(self.values):
            raise ValueError(f"values must be non-empty float32 (L,), got {self.values.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels.shape

    def counts(self) -> np.ndarray:
        """int64 (L,): how many pixels have each level (computed once)."""
        if self._counts is None:
            n = len(self.values)
            if self.levels.size < _CALCHIST_MAX_PIXELS:
                # OpenCV's histogram is one pass over the image; np.bincount first widens every
                # pixel to intp (8x the image's memory).
                hist = cv2.calcHist([self.levels], [0], None, [n], [0, n])
                self._counts = hist.ravel().astype(np.int64)
            else:
                self._counts = np.bincount(self.levels.ravel(), minlength=n).astype(np.int64)
            if self._counts.sum() != self.levels.size:
                raise ValueError(f"levels reach past the {n} values")
        return self._counts

    def to_image(self) -> np.ndarray:
        """float32 (H, W): the display image."""
        return np.ascontiguousarray(self.values[self.levels])


_IDENTITY = {
    np.dtype(np.uint8): np.arange(1 << 8, dtype=np.float32),
    np.dtype(np.uint16): np.arange(1 << 16, dtype=np.float32),
}


def is_dicom(path: str | Path) -> bool:
    """True if ``path`` is named like a DICOM file or has the ``DICM`` marker at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file")


def _to_single_channel(image: np.ndarray, path: Path) -> np.ndarray:
    """OpenCV's BGR/BGRA -> luminance (ITU-R BT.601), alpha dropped; grayscale passes through."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # Converting in the native integer dtype keeps R=G=B images exact (the NIH RGBA quirk):
        # OpenCV's fixed-point weights sum to exactly one.
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        if image.dtype in (np.uint8, np.uint16, np.float32):
            return cv2.cvtColor(image, code)
        weights = np.array([0.114, 0.587, 0.299], dtype=np.float64)  # B, G, R
        return image[:, :, :3].astype(np.float64) @ weights
    raise ImageReadError(f"{path}: unsupported pixel layout {image.shape}")


def read_image(
    path: str | Path, *, apply_voi_lut: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file as float32 (H, W), higher = brighter, in the file's own value range.

    Args:
        path: PNG, JPEG, TIFF (anything OpenCV decodes) or DICOM.
        apply_voi_lut: for DICOM, apply the header's VOI LUT / window (ignored for other formats).

    Returns:
        ``image``: float32 (height, width); 8-bit files give 0..255, 16-bit 0..65535, DICOM its
        modality/VOI units. Colour is reduced to luminance and alpha dropped.
        ``meta``: ``format`` (``"dicom"`` or the file suffix), ``dtype`` and ``channels`` of the
        decoded file, plus every :func:`cxrkit.data.dicom.read_dicom` field for DICOM.

    Raises:
        ImageReadError: missing, empty, truncated or undecodable file (DicomReadError for DICOM).
    """
    image, meta = _read_levels(path, apply_voi_lut=apply_voi_lut)
    if isinstance(image, GreyLevels):
        image = image.to_image()
    return image, meta


def read_levels(
    path: str | Path, *, apply_voi_lut: bool = True
) -> tuple[GreyLevels | np.ndarray, dict[str, Any]]:
    """:func:`read_image`, with integer images left as :class:`GreyLevels` (not expanded): the
    reader of a record's image (``cxrkit preprocess``), so it also refuses what cannot be one.

    Returns:
        ``image``: :class:`GreyLevels` for 8/16-bit raster files and integer single-channel DICOM
        spanning at most 65,536 stored values; otherwise the float32 (H, W) array of
        :func:`read_image`. ``meta``: as :func:`read_image`.

    Raises:
        ImageReadError: as :func:`read_image`; also an image under
            :data:`cxrkit.data.limits.MIN_SIDE` pixels a side, and a DICOM whose every pixel
            has the same value (a blank export: no acquisition to show). A constant PNG/JPEG
            stays readable (the preprocessing recipe makes it black).
    """
    image, meta = _read_levels(path, apply_voi_lut=apply_voi_lut)
    height, width = image.shape
    check_min_size(width, height, path=path)
    if meta["format"] == "dicom" and _is_constant(image):
        raise DicomReadError(
            f"{path}: blank DICOM (every pixel has the same stored value); nothing to read"
        )
    return image, meta


def _is_constant(image: GreyLevels | np.ndarray) -> bool:
    if isinstance(image, GreyLevels):
        return int(np.count_nonzero(image.counts())) <= 1
    return bool(image.size) and float(image.min()) == float(image.max())


def _read_levels(
    path: str | Path, *, apply_voi_lut: bool
) -> tuple[GreyLevels | np.ndarray, dict[str, Any]]:
    path = Path(path)
    _check_file(path)
    if is_dicom(path):
        image, meta = read_dicom_levels(path, apply_voi_lut=apply_voi_lut)
        return image, {"format": "dicom", "dtype": "float32", "channels": 1, **meta}
    grey, meta = _read_raster(path)
    identity = _IDENTITY.get(grey.dtype)
    if identity is not None:
        return GreyLevels(levels=np.ascontiguousarray(grey), values=identity), meta
    return np.ascontiguousarray(grey, dtype=np.float32), meta


def _read_raster(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a non-DICOM file to one channel in its own dtype, with :func:`read_image`'s meta."""
    raw = path.read_bytes()  # read once: the size check and the decoder share these bytes
    stated = _stated_size(raw)
    if stated is not None:  # checked before decoding: the header can claim any size
        check_pixels(*stated, path=path)
    data = np.frombuffer(raw, dtype=np.uint8)  # imdecode from memory handles non-ASCII paths
    if data[:2].tobytes() == _JPEG_SOI and _JPEG_EOI not in data[-1024:].tobytes():
        # OpenCV decodes a truncated JPEG into a half-grey image with only a warning.
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(f"{path}: cannot decode image (truncated, corrupt or unsupported)")
    channels = 1 if decoded.ndim == 2 else int(decoded.shape[2])
    meta = {
        "format": path.suffix.lower().lstrip(".") or "unknown",
        "dtype": str(decoded.dtype),
        "channels": channels,
    }
    return _to_single_channel(decoded, path), meta


# Guards the toggle of Pillow's global limit below: adapters read headers from many threads
# (sources.common.read_many), and unguarded save/restore pairs can interleave and leave Pillow's
# own bomb check switched off for the whole process.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_header(source: Path | io.BytesIO) -> tuple[int, int]:
    """(width, height) from the header of a file or its bytes (Pillow parses only the header).

    Pillow's own bomb check is off for this call: its DecompressionBombError is no OSError and its
    limit is not ours; :func:`cxrkit.data.limits.check_pixels` decides instead.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(source) as im:
                return int(im.size[0]), int(im.size[1])
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stated_size(raw: bytes) -> tuple[int, int] | None:
    """The header's size, or None when Pillow does not know the format (OpenCV may).

    A PNG's size is read straight from its IHDR chunk (bytes 16..24), which must come first: the
    same numbers Pillow reads, without opening the file with Pillow for every cached image.
    """
    if raw[:8] == _PNG_SIGNATURE and raw[12:16] == b"IHDR" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return int(width), int(height)
    try:
        return _open_header(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels.

    Raises:
        ImageReadError: missing, empty or unrecognised file, or a size over the pixel limit
            (:mod:`cxrkit.data.limits`); DicomReadError for DICOM.
    """
    path = Path(path)
    _check_file(path)
    if is_dicom(path):
        header = read_dicom_header(path)
        if not header["rows"] or not header["columns"]:
            raise ImageReadError(f"{path}: DICOM header has no Rows/Columns")
        width, height = int(header["columns"]), int(header["rows"])
        check_pixels(width, height, path=path, error=DicomReadError)
        return width, height
    try:
        size = _open_header(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    check_pixels(*size, path=path)
    return size
