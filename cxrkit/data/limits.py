"""The largest image cxrkit will decode: a guard against decompression bombs and corrupt headers.

A 389 KB PNG can claim 20000 x 20000 pixels and a DICOM header any Rows x Columns; decoding such a
file takes gigabytes before anything can complain. Readers check the size the header states against
:func:`max_pixels` *before* decoding. The default, 144 megapixels (12000 x 12000), is cxrkit's own
choice: several times the largest chest radiographs (about 4,300 x 3,500) and full-field
mammograms, and far below what a worker process can survive. Set ``CXRKIT_MAX_IMAGE_PIXELS`` to
change it (``0`` turns the check off).

The smallest image is :data:`MIN_SIDE` pixels a side (cxrkit's own choice, no paper sets one): a
1x1 or icon-sized file is a thumbnail or a placeholder, not a radiograph, and resizing it to the
working resolution would train on a blur. It is kept low so that small test images stay readable.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrkit.errors import ConfigError, ImageReadError

MAX_PIXELS_ENV = "CXRKIT_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 12000 * 12000
MIN_SIDE = 16


def max_pixels() -> int:
    """The pixel limit in force (``CXRKIT_MAX_IMAGE_PIXELS``, else the default); 0 = no limit."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels") from None
    if value < 0:
        raise ConfigError(f"{MAX_PIXELS_ENV}={value} must be >= 0 (0 turns the check off)")
    return value


def check_pixels(
    width: int, height: int, *, path: str | Path, error: type[ImageReadError] = ImageReadError
) -> None:
    """Raise ``error`` (an :class:`ImageReadError`) when ``width x height`` exceeds the limit."""
    limit = max_pixels()
    if limit and width * height > limit:
        raise error(
            f"{path}: header claims {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), over "
            f"the limit of {limit / 1e6:.0f} Mpx (a decompression bomb or a corrupt header?); if "
            f"the image is real, raise the limit with {MAX_PIXELS_ENV}=N"
        )


def check_min_size(
    width: int, height: int, *, path: str | Path, error: type[ImageReadError] = ImageReadError
) -> None:
    """Raise ``error`` when a side of the image is under :data:`MIN_SIDE` pixels."""
    if min(width, height) < MIN_SIDE:
        raise error(
            f"{path}: image is {width}x{height} pixels, smaller than {MIN_SIDE} px a side (a "
            "thumbnail or a placeholder, not a radiograph)"
        )
