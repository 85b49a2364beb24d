import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxrkit.data import cache
from cxrkit.errors import DataError, ImageReadError, MissingFileError


def test_geometry_golden_case():
    # 100 wide x 50 high, padded to 100x100 (pad_top 25), resized to 64: scale 0.64.
    geo = cache.Geometry(
        orig_width=100,
        orig_height=50,
        pad_left=0,
        pad_top=25,
        scale_x=0.64,
        scale_y=0.64,
        width=64,
        height=64,
    )
    box = np.array([[10, 0, 50, 50]])
    np.testing.assert_allclose(geo.boxes_to_cache(box), [[6.4, 16.0, 32.0, 48.0]], atol=1e-5)
    np.testing.assert_allclose(geo.boxes_to_original(geo.boxes_to_cache(box)), box, atol=1e-4)


def test_geometry_round_trip_and_clipping():
    rng = np.random.default_rng(0)
    geo = cache.Geometry(
        orig_width=1955,
        orig_height=1841,
        pad_left=0,
        pad_top=57,
        scale_x=224 / 1955,
        scale_y=224 / 1955,
        width=224,
        height=224,
    )
    xy = rng.uniform(0, 1841, size=(50, 2, 2))
    boxes = np.concatenate([xy.min(1), xy.max(1) + 1], axis=1)
    back = geo.boxes_to_original(geo.boxes_to_cache(boxes))
    assert np.abs(back - boxes).max() < 1.0
    # a box predicted in the top padding is clipped to the image border
    clipped = geo.boxes_to_original(np.array([[0, 0, 10, 3]]))
    assert clipped[0, 1] == 0 and clipped[0, 3] == 0
    assert cache.Geometry.from_dict(geo.to_dict()) == geo


def test_item_keys_are_safe_and_distinct():
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    ids = [
        "a/b",
        "a_b",
        "x" * 300,
        "x" * 301,
        "ok-1.2",
        "ok-1.3",
        "ok-1",  # unsafe, long, dots
        f"{uid}.1",
        f"{uid}.2",
        f"{uid}.10",
        uid,  # DICOM UIDs: differ only after the last dot
        "Case",
        "case",
        "CASE",  # equal on a case-insensitive file system
        "caf\u00e9",
        "cafe\u0301",
        "caf_",
        "\u80ba",  # NFC vs NFD, unicode vs its replacement
    ]
    keys = [cache.item_key(i) for i in ids]
    assert len({k.casefold() for k in keys}) == len(ids)  # distinct even ignoring case
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}-[0-9a-f]{32}", k) for k in keys)
    assert cache.item_key("ok-1.2").startswith("ok-1_2-")  # still readable
    paths = [cache.image_path("root", i) for i in ids]
    assert len({str(p).casefold() for p in paths}) == len(ids)
    assert all(p.name == cache.item_key(i) + ".png" for p, i in zip(paths, ids, strict=True))
    masks = {cache.mask_path("root", uid, name) for name in ("Nodule/Mass", "Nodule_Mass", "a.b")}
    assert len(masks) == 3


def test_many_series_uids_map_to_distinct_files():
    # The reported case: 1,000 ids "<series UID>.<n>" mapped to 255 files with the old scheme.
    series = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    paths = {cache.image_path("root", f"{series}.{n}") for n in range(1000)}
    assert len(paths) == 1000


def _write_finished_cache(root, image):
    import cv2

    png = cache.image_path(root, "img1")
    png.parent.mkdir(parents=True)
    cv2.imwrite(str(png), image)
    geo = cache.Geometry(
        orig_width=8,
        orig_height=8,
        pad_left=0,
        pad_top=0,
        scale_x=1,
        scale_y=1,
        width=8,
        height=8,
    )
    (root / cache.RECIPE_FILE).write_text(json.dumps(cache.recipe_record({})))
    table = pa.Table.from_pylist(
        [
            {
                "image_id": "img1",
                "file": str(png.relative_to(root)),
                "geometry": json.dumps(geo.to_dict()),
                "masks": [],
                "sha256": hashlib.sha256(png.read_bytes()).hexdigest(),
            }
        ]
    )
    pq.write_table(table, root / cache.INDEX_FILE)
    return png


def test_cache_reader(tmp_path):
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    png = _write_finished_cache(tmp_path, image)
    c = cache.Cache(tmp_path)
    assert "img1" in c and len(c) == 1
    np.testing.assert_array_equal(c.load("img1"), image)
    assert c.geometry("img1").width == 8
    assert c.load_mask("img1", "lung") is None
    with pytest.raises(DataError, match="'nope' is not in the cache"):
        c.load("nope")
    png.write_bytes(b"")
    with pytest.raises(ImageReadError, match="does not match the sha256"):
        c.load("img1")
    png.unlink()
    with pytest.raises(ImageReadError, match="cache file missing"):
        c.load("img1")


def test_unfinished_cache_says_how_to_build(tmp_path):
    with pytest.raises(MissingFileError, match="cxrkit preprocess"):
        cache.Cache(tmp_path)
