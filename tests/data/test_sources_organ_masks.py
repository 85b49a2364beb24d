"""Organ-mask sets read from files written in their released formats: JSRT raw 12-bit big-endian
2048 x 2048 .IMG without a header, SCR GIF masks at 1024, Montgomery PNGs per lung, Shenzhen
``_mask.png``; and ``cxrkit prepare masks`` attaching masks by image id."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrkit import cli
from cxrkit.data import sources
from cxrkit.data.images import read_image
from cxrkit.data.records import Record, read_manifest, write_manifest
from cxrkit.data.sources import organ_masks
from cxrkit.errors import DataError, ImageReadError
from cxrkit.multitask.config import MultiTaskConfig

N = organ_masks.JSRT_SIZE


def write_jsrt(path, pixels: np.ndarray) -> None:
    """A JSRT .IMG as released: the raw pixels, big-endian 16-bit words, nothing else."""
    assert pixels.shape == (N, N) and pixels.max() < 4096
    pixels.astype(">u2").tofile(path)


def write_gif(path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("P").save(path, "GIF")


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def jsrt_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(N, N), dtype=np.uint16)


# ------------------------------------------------------------------------------------- JSRT
def test_read_jsrt_byte_order_sense_and_size(tmp_path):
    pixels = jsrt_pixels(0)
    pixels[0, :3] = [0x0102, 4095, 0]
    write_jsrt(tmp_path / "JPCLN001.IMG", pixels)
    raw = (tmp_path / "JPCLN001.IMG").read_bytes()
    assert len(raw) == N * N * 2 and raw[:2] == b"\x01\x02"  # no header, big-endian
    kept = organ_masks.read_jsrt(tmp_path / "JPCLN001.IMG", invert=False)
    assert kept.dtype == np.uint16 and kept.shape == (N, N)
    assert list(kept[0, :3]) == [258, 4095, 0] and np.array_equal(kept, pixels)
    flipped = organ_masks.read_jsrt(tmp_path / "JPCLN001.IMG")
    assert list(flipped[0, :3]) == [4095 - 258, 0, 4095]  # high stored value = dark film

    (tmp_path / "short.IMG").write_bytes(raw[:-2])
    with pytest.raises(ImageReadError, match="short.IMG: 8388606 bytes"):
        organ_masks.read_jsrt(tmp_path / "short.IMG")
    pixels.astype("<u2").tofile(tmp_path / "little.IMG")  # 4095 read big-endian is 0xFF0F
    with pytest.raises(ImageReadError, match="12 bits"):
        organ_masks.read_jsrt(tmp_path / "little.IMG")


@pytest.fixture
def jsrt_scr(tmp_path):
    """Two JSRT images and SCR masks in two folds; returns (jsrt root, scr root, masks)."""
    jsrt, scr = tmp_path / "JSRT", tmp_path / "SCR"
    jsrt.mkdir()
    write_jsrt(jsrt / "JPCLN001.IMG", jsrt_pixels(1))
    write_jsrt(jsrt / "JPCNN001.IMG", jsrt_pixels(2))
    half = N // 2
    drawn = {
        "left lung": box(half, half, 200, 800, 560, 900),
        "right lung": box(half, half, 200, 800, 100, 460),
        "heart": box(half, half, 500, 850, 380, 700),
        "left clavicle": box(half, half, 120, 160, 560, 900),
        "right clavicle": box(half, half, 120, 160, 100, 460),
    }
    for image_id, fold in (("JPCLN001", "fold1"), ("JPCNN001", "fold2")):
        for folder, mask in drawn.items():
            write_gif(scr / fold / "masks" / folder / f"{image_id}.gif", mask)
    return jsrt, scr, drawn


def test_prepare_jsrt_with_scr_masks(jsrt_scr, tmp_path, capsys):
    jsrt, scr, drawn = jsrt_scr
    out = tmp_path / "jsrt.parquet"
    assert (
        cli.main(["prepare", "jsrt", "--root", str(jsrt), "--scr", str(scr), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "masks: lung 2, heart 2, clavicle 2 of 2 images" in printed
    assert "each image is its own patient" in printed
    records = {r.image_id: r for r in read_manifest(out)}
    assert records["JPCLN001"].labels == {"Nodule": 1}
    assert records["JPCNN001"].labels == {"Nodule": 0}
    record = records["JPCLN001"]
    assert (record.view, record.source, record.width, record.height) == ("PA", "jsrt", N, N)
    assert record.meta["pixel_spacing"] == [0.175, 0.175]
    # the image: a 16-bit PNG of 4095 - stored value, read by cxrkit's own reader
    image, meta = read_image(record.path)
    assert meta["dtype"] == "uint16" and np.array_equal(image, 4095.0 - jsrt_pixels(1))
    # the masks: SCR's 1024 px GIFs, left and right united, scaled x2 by nearest neighbour
    up = np.ones((2, 2), dtype=bool)
    expected = {
        "lung": np.kron(drawn["left lung"] | drawn["right lung"], up),
        "heart": np.kron(drawn["heart"], up),
        "clavicle": np.kron(drawn["left clavicle"] | drawn["right clavicle"], up),
    }
    assert set(record.mask_paths) == set(expected)
    for organ, mask in expected.items():
        written = cv2.imread(record.mask_paths[organ], cv2.IMREAD_UNCHANGED)
        assert written.shape == (N, N) and set(np.unique(written)) == {0, 255}
        assert np.array_equal(written > 0, mask), organ
    # the names the segmentation head reads by default are among them
    assert set(MultiTaskConfig().segmentation.organs) <= set(record.mask_paths)


def test_jsrt_one_sided_organ_is_an_error(jsrt_scr, tmp_path):
    jsrt, scr, _ = jsrt_scr
    (scr / "fold2" / "masks" / "right lung" / "JPCNN001.gif").unlink()
    kwargs = {"root": jsrt, "scr": scr, "images_dir": tmp_path / "i", "masks_dir": tmp_path / "m"}
    with pytest.raises(DataError, match="JPCNN001 has no other side"):
        organ_masks.load_jsrt(**kwargs)
    issues = sources.Issues(on_error="skip")
    records = organ_masks.load_jsrt(**kwargs, issues=issues)
    assert [r.image_id for r in records] == ["JPCLN001"]
    assert [i.image_id for i in issues.items] == ["JPCNN001"]


# ------------------------------------------------------------------------ Montgomery, Shenzhen
def test_prepare_montgomery_unites_the_lungs(tmp_path, capsys):
    root = tmp_path / "MontgomerySet"
    h, w = 120, 100  # portrait, like the 4020 x 4892 originals
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (root / sub).mkdir(parents=True)
    left, right = box(h, w, 20, 100, 55, 90), box(h, w, 20, 100, 10, 45)
    for k, image_id in enumerate(["MCUCXR_0001_0", "MCUCXR_0104_1"]):
        cv2.imwrite(str(root / "CXR_png" / f"{image_id}.png"), np.full((h, w), 60 + k, np.uint16))
        cv2.imwrite(str(root / "ManualMask/leftMask" / f"{image_id}.png"), left * np.uint8(255))
        cv2.imwrite(str(root / "ManualMask/rightMask" / f"{image_id}.png"), right * np.uint8(1))
    out = tmp_path / "m.parquet"
    assert cli.main(["prepare", "montgomery", "--root", str(root), "--out", str(out)]) == 0
    assert "masks: lung 2 of 2 images" in capsys.readouterr().out
    records = {r.image_id: r for r in read_manifest(out)}
    assert records["MCUCXR_0001_0"].labels == {"Tuberculosis": 0}
    assert records["MCUCXR_0104_1"].labels == {"Tuberculosis": 1}
    for r in records.values():
        assert (r.view, r.width, r.height, set(r.mask_paths)) == ("PA", w, h, {"lung"})
        lung = cv2.imread(r.mask_paths["lung"], cv2.IMREAD_UNCHANGED)
        assert np.array_equal(lung > 0, left | right)  # a 0/1 mask counts as much as a 0/255 one

    (root / "ManualMask/rightMask/MCUCXR_0104_1.png").unlink()
    with pytest.raises(DataError, match="other lung's mask of MCUCXR_0104_1"):
        organ_masks.load_montgomery(root=root, masks_dir=tmp_path / "mm")


def test_prepare_shenzhen_uses_or_fits_its_masks(tmp_path, capsys):
    root = tmp_path / "ChinaSet_AllFiles"
    (root / "CXR_png").mkdir(parents=True)
    masks = tmp_path / "kaggle_masks"
    masks.mkdir()
    for image_id in ("CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_0"):
        cv2.imwrite(str(root / "CXR_png" / f"{image_id}.png"), np.full((80, 96), 90, np.uint8))
    lung = box(80, 96, 10, 70, 8, 88)
    cv2.imwrite(str(masks / "CHNCXR_0001_0_mask.png"), lung * np.uint8(255))
    half = cv2.resize(lung * np.uint8(255), (48, 40), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(masks / "CHNCXR_0002_1_mask.png"), half)
    out = tmp_path / "s.parquet"
    argv = ["prepare", "shenzhen", "--root", str(root), "--masks", str(masks), "--out", str(out)]
    assert cli.main(argv) == 0
    assert "masks: lung 2 of 3 images" in capsys.readouterr().out
    records = {r.image_id: r for r in read_manifest(out)}
    assert records["CHNCXR_0001_0"].mask_paths == {"lung": str(masks / "CHNCXR_0001_0_mask.png")}
    fitted = cv2.imread(records["CHNCXR_0002_1"].mask_paths["lung"], cv2.IMREAD_UNCHANGED)
    assert fitted.shape == (80, 96) and np.array_equal(fitted > 0, lung)
    assert records["CHNCXR_0003_0"].mask_paths == {}
    assert records["CHNCXR_0002_1"].labels == {"Tuberculosis": 1}


# --------------------------------------------------------------------- masks onto NIH records
def test_prepare_masks_attaches_by_image_id(tmp_path, capsys):
    records = []
    for k in range(3):
        path = tmp_path / f"0000000{k}_000.png"
        cv2.imwrite(str(path), np.full((64, 64), 100, np.uint8))
        records.append(
            Record(
                image_id=path.stem,
                source="nih",
                path=str(path),
                patient_id=str(k),
                width=64,
                height=64,
                view="AP",
                labels={"Effusion": 1},
            )
        )
    manifest = write_manifest(records, tmp_path / "nih.parquet")
    lungs, hearts = tmp_path / "lungs", tmp_path / "hearts"
    (lungs / "deep").mkdir(parents=True)
    hearts.mkdir()
    lung = box(64, 64, 8, 56, 4, 60)
    cv2.imwrite(str(lungs / "00000000_000_mask.png"), lung * np.uint8(255))
    cv2.imwrite(
        str(lungs / "deep" / "00000001_000.png"),
        cv2.resize(lung * np.uint8(255), (32, 32), interpolation=cv2.INTER_NEAREST),
    )
    cv2.imwrite(str(lungs / "99999999_000.png"), lung * np.uint8(255))  # no such image
    cv2.imwrite(str(hearts / "00000002_000.png"), np.zeros((64, 32), np.uint8))  # wrong aspect
    out = tmp_path / "nih_organs.parquet"
    argv = [
        "prepare",
        "masks",
        "--manifest",
        str(manifest),
        "--mask",
        f"lung={lungs}",
        "--mask",
        f"heart={hearts}",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 1
    assert "00000002_000.png: mask is 32x64 but its image is 64x64" in capsys.readouterr().err

    assert cli.main([*argv, "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "lung: 2 of 3 images; 1 mask files match no image (e.g. 99999999_000)" in printed
    assert "heart: 0 of 3 images" in printed
    got = {r.image_id: r for r in read_manifest(out)}
    assert set(got) == {"00000000_000", "00000001_000"}  # the bad heart mask left its image out
    assert got["00000000_000"].mask_paths == {"lung": str(lungs / "00000000_000_mask.png")}
    fitted_path = got["00000001_000"].mask_paths["lung"]
    assert fitted_path.startswith(str(tmp_path / "nih_organs_masks"))  # beside the new manifest
    assert np.array_equal(cv2.imread(fitted_path, cv2.IMREAD_UNCHANGED) > 0, lung)
    assert got["00000000_000"].view == "AP" and got["00000000_000"].labels == {"Effusion": 1}


def test_jsrt_records_go_through_the_cache_with_their_masks(jsrt_scr, tmp_path):
    """The segmentation head reads organ masks from the cache: the JSRT PNG and its SCR masks
    must pass the preprocess size checks and come out aligned at the cache's size."""
    from cxrkit.config import PreprocessConfig
    from cxrkit.data.cache import Cache
    from cxrkit.data.preprocess import build_cache

    jsrt, scr, drawn = jsrt_scr
    records = organ_masks.load_jsrt(
        root=jsrt, scr=scr, images_dir=tmp_path / "images", masks_dir=tmp_path / "masks"
    )
    recipe = PreprocessConfig(size=64, clahe=False)
    build_cache(records=records, out_dir=tmp_path / "cache", recipe=recipe, progress=False)
    cache = Cache(tmp_path / "cache")
    for record in records:
        assert cache.load(record.image_id).shape == (64, 64)
        lung = cache.load_mask(record.image_id, "lung")
        expected = cv2.resize(
            (drawn["left lung"] | drawn["right lung"]).astype(np.uint8),
            (64, 64),
            interpolation=cv2.INTER_AREA,
        )
        assert lung.shape == (64, 64) and np.mean((lung > 127) != (expected > 0)) < 0.03
        assert cache.load_mask(record.image_id, "heart") is not None
