"""Decompression bombs and corrupt headers: the claimed size is checked before any decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit import cli
from cxrkit.data import images, limits
from cxrkit.data.dicom import read_dicom
from cxrkit.errors import ConfigError, DicomReadError, ImageReadError


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose IHDR is rewritten to claim ``width x height`` (CRC fixed)."""
    ok, buffer = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    assert ok
    data = bytearray(buffer.tobytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))  # type + 13 data bytes
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = png_claiming(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 200  # tiny on disk, 400 Mpx claimed
    message = r"bomb\.png: header claims 20000x20000 pixels \(400 Mpx\), over the limit of 144 Mpx"
    with pytest.raises(ImageReadError, match=message):
        images.image_size(bomb)
    with pytest.raises(ImageReadError, match=message):
        images.read_image(bomb)


def test_the_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((30, 40), np.uint8))
    assert images.image_size(image) == (40, 30)
    monkeypatch.setenv(limits.MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageReadError, match="40x30 pixels .* CXRKIT_MAX_IMAGE_PIXELS=N"):
        images.read_image(image)
    monkeypatch.setenv(limits.MAX_PIXELS_ENV, "0")  # off
    assert images.read_image(image)[0].shape == (30, 40)
    monkeypatch.setenv(limits.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="not a whole number"):
        images.image_size(image)


def test_dicom_claiming_huge_rows_and_columns_is_refused_before_decoding(
    tmp_path: Path, cr_dicom
) -> None:
    path = cr_dicom(tmp_path / "big.dcm", np.zeros((4, 4)), Rows=30000, Columns=30000)
    with pytest.raises(DicomReadError, match=r"big\.dcm: header claims 30000x30000 pixels"):
        read_dicom(path)
    with pytest.raises(DicomReadError, match="over the limit"):
        images.image_size(path)


def test_prepare_skips_a_bomb_and_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        cv2.imwrite(str(root / f"ok{i}.png"), np.full((16, 16), 50 * i, np.uint8))
    png_claiming(root / "bomb.png", 20000, 20000)
    out = tmp_path / "m.parquet"
    code = cli.main(
        [
            "prepare",
            "csv",
            "--root",
            str(root),
            "--out",
            str(out),
            "--on-error",
            "skip",
            "--no-patient-ids",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    errors = next(tmp_path.glob("m*errors*.csv")).read_text()
    assert "bomb.png" in errors and "20000x20000" in errors
    from cxrkit.data.records import read_manifest

    assert sorted(r.image_id for r in read_manifest(out)) == ["ok0", "ok1", "ok2"]


def test_threaded_header_reads_leave_pillows_own_limit_alone(tmp_path: Path) -> None:
    # Adapters read headers from many threads (sources.common.read_many); the temporary switch-off
    # of Pillow's limit must never stick. Unguarded, this left it None in 20 of 20 runs.
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    paths = []
    for i in range(32):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((8, 8), np.uint8))
    before, interval = Image.MAX_IMAGE_PIXELS, sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(5):
            with ThreadPoolExecutor(16) as pool:
                assert set(pool.map(images.image_size, paths * 4)) == {(8, 8)}
    finally:
        sys.setswitchinterval(interval)
    assert before == Image.MAX_IMAGE_PIXELS
