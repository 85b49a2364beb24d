"""COCO export of cache images: geometry in each image entry, errors naming the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrkit.config import PreprocessConfig
from cxrkit.data import coco
from cxrkit.data.cache import Cache
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Box, Record
from cxrkit.errors import DataError, MissingFileError


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    image = np.random.default_rng(0).integers(0, 255, (60, 120), dtype=np.uint8)
    cv2.imwrite(str(root / "a.png"), image)
    box = Box(finding="Nodule/Mass", x1=12, y1=6, x2=36, y2=30, reader="fused")
    record = Record(
        image_id="a.1", source="t", path=str(root / "a.png"), patient_id="p", width=120, height=60
    )
    record.boxes = [box]
    recipe = PreprocessConfig(size=64)
    build_cache(records=[record], out_dir=root / "cache", recipe=recipe, progress=False)
    return record, Cache(root / "cache")


def test_entry_geometry_maps_back_to_the_record(cached, tmp_path):
    record, cache = cached
    path = coco.write_coco([record], tmp_path / "c.json", cache=cache, classes=["A", "Nodule/Mass"])
    data = coco.read_coco(path)
    (entry,) = data["images"]
    # 120 x 60 padded by 30 rows on top (and bottom) to 120 x 120, then resized to 64
    assert (entry["pad_left"], entry["pad_top"]) == (0, 30)
    assert entry["scale_x"] == pytest.approx(64 / 120)
    (ann,) = data["annotations"]
    assert ann["category_id"] == 2 and ann["image_id"] == entry["id"]
    x, y, w, h = ann["bbox"]
    back = coco.geometry_of(entry).boxes_to_original(np.array([[x, y, x + w, y + h]]))
    np.testing.assert_allclose(back[0], record.boxes[0].xyxy, atol=1e-4)


def test_errors(cached, tmp_path):
    record, cache = cached
    with pytest.raises(DataError, match=r"image 'a.1': box findings \['Nodule/Mass'\]"):
        coco.to_coco([record], cache=cache, classes=["A"])
    stranger = Record(image_id="b", source="t", path="b.png", patient_id="p", width=9, height=9)
    with pytest.raises(DataError, match="'b' is not in the cache"):
        coco.to_coco([stranger], cache=cache, classes=["A"])
    with pytest.raises(MissingFileError, match="cxrkit export coco"):
        coco.read_coco(tmp_path / "none.json")
    (tmp_path / "plain.json").write_text('{"images": [{"id": 1}], "categories": []}')
    with pytest.raises(DataError, match="only files written by `cxrkit export coco`"):
        coco.read_coco(tmp_path / "plain.json")
