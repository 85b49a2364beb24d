"""The PNG size read from IHDR before decoding equals Pillow's header parse."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxrkit.data.images import _stated_size


def assert_sizes_equal_pillows(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as im:
            assert _stated_size(path.read_bytes()) == im.size


def test_real_nih_png_sizes(shared_data: Path) -> None:
    assert_sizes_equal_pillows(sorted((shared_data / "nih" / "images").glob("*.png"))[:5])


def test_png_ihdr_size_equals_pillows(tmp_path: Path) -> None:
    paths = []
    for i, (w, h) in enumerate([(7, 5), (300, 17), (1, 1)]):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))
        paths.append(path)
    assert_sizes_equal_pillows(paths)


def test_non_png_falls_back_to_pillow_or_none(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), np.zeros((9, 13), np.uint8))
    assert _stated_size(path.read_bytes()) == (13, 9)
    assert _stated_size(b"\x89PNG\r\n\x1a\n" + b"\0" * 4) is None  # truncated: not a size
