"""COCO / detectron2 results in cache pixels -> cxrkit detection predictions in original pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrkit.errors import CheckpointError, DataError
from cxrkit.eval import coco_results

# one 200 x 100 original, zero-padded 50 rows top and bottom to 200 x 200, then resized to 100
COCO = {
    "images": [
        {
            "id": 7,
            "file_name": "items/a.png",
            "width": 100,
            "height": 100,
            "cxrkit_image_id": "00012",
            "orig_width": 200,
            "orig_height": 100,
            "pad_left": 0.0,
            "pad_top": 50.0,
            "scale_x": 0.5,
            "scale_y": 0.5,
        }
    ],
    "categories": [{"id": 2, "name": "Nodule/Mass"}, {"id": 1, "name": "Aortic enlargement"}],
}


def test_golden_box_and_contiguous_ids():
    results = [
        # x, y, w, h in cache pixels: x 10..30, y 30..40 -> original x 20..60, y 10..30
        {"image_id": 7, "category_id": 1, "bbox": [10, 30, 20, 10], "score": 0.8},
        # in the bottom padding (cache y > 75): empty once clipped, dropped and counted
        {"image_id": 7, "category_id": 0, "bbox": [10, 80, 20, 10], "score": 0.5},
    ]
    converted = coco_results.to_predictions(results, coco=COCO, contiguous=True)
    assert converted.dropped == 1
    row = converted.predictions.iloc[0]
    # contiguous id 1 is the second of the sorted COCO ids (1, 2): "Nodule/Mass"
    assert (row["image_id"], row["finding"], row["score"]) == ("00012", "Nodule/Mass", 0.8)
    np.testing.assert_allclose(row[["x1", "y1", "x2", "y2"]].astype(float), [20, 10, 60, 30])


def test_coco_ids_and_errors_naming_the_result():
    ok = {"image_id": 7, "category_id": 1, "bbox": [10, 30, 20, 10], "score": 0.8}
    table = coco_results.to_predictions([ok], coco=COCO, contiguous=False).predictions
    assert table["finding"].tolist() == ["Aortic enlargement"]
    with pytest.raises(DataError, match="result 0: image id 3 is not in the COCO file"):
        coco_results.to_predictions([{**ok, "image_id": 3}], coco=COCO, contiguous=False)
    with pytest.raises(DataError, match=r"COCO category id 0 is not one of \[1, 2\]"):
        coco_results.to_predictions([{**ok, "category_id": 0}], coco=COCO, contiguous=False)
    with pytest.raises(DataError, match="result 0 is malformed"):
        coco_results.to_predictions([{"image_id": 7}], coco=COCO, contiguous=True)
    empty = coco_results.to_predictions([], coco=COCO, contiguous=True)
    assert empty.predictions.empty and list(empty.predictions.columns)[:3] == [
        "image_id",
        "finding",
        "score",
    ]


def test_reads_both_formats(tmp_path):
    result = {"image_id": 7, "category_id": 0, "bbox": [1, 30, 2, 2], "score": 0.1}
    torch.save([{"image_id": 7, "instances": [result]}, {"image_id": 8}], tmp_path / "p.pth")
    assert coco_results.read_results(tmp_path / "p.pth") == ([result], "detectron2")
    (tmp_path / "r.json").write_text(json.dumps([result]))
    assert coco_results.read_results(tmp_path / "r.json") == ([result], "coco")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="JSON list"):
        coco_results.read_results(tmp_path / "bad.json")
    with pytest.raises(CheckpointError):
        coco_results.read_results(tmp_path / "r.json", format="detectron2")
