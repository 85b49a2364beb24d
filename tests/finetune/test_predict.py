"""Detections come back in original pixels, and the Kaggle submission format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit.data.cache import Cache, Geometry
from cxrkit.errors import DataError
from cxrkit.eval.predictions import validate_predictions
from cxrkit.finetune.detections import detections_to_frame, kaggle_submission, predict
from cxrkit.finetune.model import build_detector

from .toy_vindr import HEIGHT, WIDTH, ToyData, lesion_box


class BrightestRegion(nn.Module):
    """A stand-in detector with a known answer: the box of the pixels brighter than 0.6, in the
    pixels of the image it is given (torchvision's output contract)."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.6, as_tuple=True)
            if len(xs) == 0:
                boxes = torch.zeros((0, 4))
            else:
                boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
            n = len(boxes)
            out.append(
                {
                    "boxes": boxes,
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": torch.full((n,), 0.9),
                }
            )
        return out


def test_a_known_box_survives_preprocess_predict_inverse_within_one_pixel(toy: ToyData) -> None:
    cache = Cache(toy.cache)
    frame = predict(
        BrightestRegion(),
        records=toy.records,
        cache=cache,
        classes=["Nodule/Mass"],
        batch_size=4,
        progress=False,
    )
    lesions = {r.image_id: i for i, r in enumerate(toy.records) if r.boxes}
    frame = frame[frame["image_id"].isin(lesions)]
    assert sorted(frame["image_id"]) == sorted(lesions)
    for row in frame.itertuples():
        truth = np.array(lesion_box(lesions[row.image_id]), dtype=float)
        found = np.array([row.x1, row.y1, row.x2, row.y2])
        assert np.abs(found - truth).max() <= 1.0, (row.image_id, found, truth)
        # the cache image was padded (256 x 192 -> 256 x 256) and halved: a box read straight from
        # cache pixels would be off by the 32-pixel pad and a factor 2
        assert found[3] <= HEIGHT and found[2] <= WIDTH


def test_real_detector_predictions_are_valid_rows_inside_the_original_image(toy: ToyData) -> None:
    torch.manual_seed(0)
    model = build_detector(
        num_classes=1,
        image_size=128,
        anchor_sizes=(8, 16, 32, 64, 128),
        rpn_proposals_test=50,
        score_thresh=0.0,
    )
    frame = predict(
        model,
        records=toy.records[:3],
        cache=Cache(toy.cache),
        classes=["Nodule/Mass"],
        batch_size=3,
        progress=False,
    )
    assert len(frame) > 0
    clean, _ = validate_predictions(frame, kind="detection")  # x1 < x2, y1 < y2, finite
    assert len(clean) == len(frame)
    assert frame[["x1", "x2"]].to_numpy().min() >= 0 and frame["x2"].max() <= WIDTH
    assert frame[["y1", "y2"]].to_numpy().min() >= 0 and frame["y2"].max() <= HEIGHT
    assert set(frame["finding"]) == {"Nodule/Mass"}


GEOMETRY = Geometry(
    orig_width=200,
    orig_height=100,
    pad_left=0.0,
    pad_top=50.0,
    scale_x=0.5,
    scale_y=0.5,
    width=100,
    height=100,
)


def test_boxes_in_the_padding_are_dropped_and_labels_are_checked() -> None:
    output = {
        "boxes": torch.tensor([[10.0, 30.0, 20.0, 40.0], [10.0, 2.0, 20.0, 20.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.8, 0.7]),
    }
    frame = detections_to_frame(
        [output], image_ids=["a"], geometries=[GEOMETRY], classes=["A", "B"]
    )
    # (10, 30, 20, 40) cache -> (20, 10, 40, 30) original; the second box lies in the top padding
    assert frame.to_dict("records") == [
        {
            "image_id": "a",
            "finding": "B",
            "score": pytest.approx(0.8),
            "x1": 20.0,
            "y1": 10.0,
            "x2": 40.0,
            "y2": 30.0,
        }
    ]
    with pytest.raises(DataError, match="label 3"):
        detections_to_frame(
            [{**output, "labels": torch.tensor([3, 1])}],
            image_ids=["a"],
            geometries=[GEOMETRY],
            classes=["A", "B"],
        )


def test_kaggle_submission_format_by_hand() -> None:
    classes = ["Aortic enlargement", "Atelectasis", "Nodule/Mass"]
    predictions = pd.DataFrame(
        {
            "image_id": ["img1", "img1", "img2"],
            "finding": ["Atelectasis", "Nodule/Mass", "Aortic enlargement"],
            "score": [0.25, 0.91234, 0.5],
            "x1": [10.4, 100.6, 1.0],
            "y1": [20.0, 200.0, 2.0],
            "x2": [30.0, 150.0, 3.0],
            "y2": [40.0, 250.49, 4.0],
        }
    )
    sub = kaggle_submission(predictions, image_ids=["img1", "img2", "img3"], classes=classes)
    assert sub.to_dict("list") == {
        "image_id": ["img1", "img2", "img3"],
        "PredictionString": [
            "2 0.9123 101 200 150 250 1 0.2500 10 20 30 40",  # by decreasing score
            "0 0.5000 1 2 3 4",
            "3 1 0 0 1 1",  # no finding: class id len(classes), as "14 1 0 0 1 1" for VinDr
        ],
    }
    with pytest.raises(DataError, match="Edema"):
        kaggle_submission(
            predictions.assign(finding="Edema"), image_ids=["img1", "img2"], classes=classes
        )
