"""Reconstruction targets (dilation golden cases), location regions and screening labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cxrkit.data.records import Record
from cxrkit.multitask import targets
from cxrkit.multitask.targets import DISEASE, IGNORE, NORMAL, OTHER


def test_dilate_golden_3x3() -> None:
    mask = torch.zeros(5, 5)
    mask[2, 2] = 1
    mask[0, 4] = 1  # a corner pixel grows only inwards
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 1],
            [0, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(targets.dilate(mask, kernel=3), expected)
    assert torch.equal(targets.dilate(mask, kernel=1), mask)


def test_dilate_matches_cv2_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    masks = (rng.random((2, 3, 17, 23)) > 0.93).astype(np.uint8)
    for k in (3, 5, 7):
        ours = targets.dilate(torch.from_numpy(masks).float(), kernel=k).numpy()
        for b in range(2):
            for m in range(3):
                ref = cv2.dilate(masks[b, m], np.ones((k, k), np.uint8))
                np.testing.assert_array_equal(ours[b, m], ref)


def test_dilate_rejects_even_kernel() -> None:
    with pytest.raises(ValueError, match="odd"):
        targets.dilate(torch.zeros(4, 4), kernel=4)


def test_lesion_target_is_image_times_dilated_mask() -> None:
    image = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5) / 25
    masks = torch.zeros(1, 2, 5, 5)
    masks[0, 1, 1, 1] = 1  # lesion in channel 1; channel 0 (an organ) must not count
    masks[0, 0] = 1
    known = torch.tensor([[1.0, 1.0]])
    lesion, lesion_known = targets.lesion_mask(masks, known, channels=[1])
    target, weight = targets.reconstruction_target(
        image, mode="lesion", lesion=lesion, lesion_known=lesion_known, dilation=3
    )
    by_hand = torch.zeros(5, 5)
    by_hand[0:3, 0:3] = 1  # the 3x3 square around (1, 1)
    assert torch.equal(target[0, 0], image[0, 0] * by_hand)
    assert weight.tolist() == [1.0]


def test_unknown_masks_give_zero_weight_and_union() -> None:
    masks = torch.ones(2, 2, 4, 4)
    known = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    lesion, lesion_known = targets.lesion_mask(masks, known, channels=[0, 1])
    assert lesion_known.tolist() == [0.0, 1.0]
    assert lesion[0].sum() == 0 and lesion[1].sum() == 16  # an unknown mask contributes nothing
    image = torch.rand(2, 1, 4, 4)
    target, weight = targets.reconstruction_target(image, mode="image")
    assert torch.equal(target, image) and weight.tolist() == [1.0, 1.0]


def test_location_regions_by_hand() -> None:
    # 60 x 60 image, no lung mask: columns split at x=30, rows at y=20 and y=40.
    upper_left_of_image = torch.tensor([[2.0, 2.0, 12.0, 12.0]])
    regions = targets.location_labels(upper_left_of_image, width=60, height=60)
    assert regions.tolist() == [1, 0, 0, 0, 0, 0]  # image left = patient's right, upper
    # a tall box on the image's right from y=25 to y=58: middle (15/33 of it) and lower (18/33)
    tall = torch.tensor([[40.0, 25.0, 50.0, 58.0]])
    regions = targets.location_labels(tall, width=60, height=60)
    assert regions.tolist() == [0, 0, 0, 0, 1, 1]
    # with min_overlap 0.5 only the centre's cell (y centre 41.5 -> lower) remains
    regions = targets.location_labels(tall, width=60, height=60, min_overlap=0.5)
    assert regions.tolist() == [0, 0, 0, 0, 0, 1]
    assert targets.location_labels(torch.zeros(0, 4), width=60, height=60).sum() == 0


def test_location_grid_follows_lung_mask() -> None:
    lung = torch.zeros(60, 60)
    lung[30:60, 0:60] = 1  # lungs in the lower half: thirds at y=40 and y=50
    box = torch.tensor([[5.0, 31.0, 10.0, 36.0]])
    assert targets.location_labels(box, width=60, height=60, lung=lung).tolist() == [
        1,
        0,
        0,
        0,
        0,
        0,
    ]
    assert targets.location_labels(box, width=60, height=60).tolist() == [0, 1, 0, 0, 0, 0]


def _record(labels: dict[str, int]) -> Record:
    return Record(
        image_id="x", source="s", path="p", patient_id="1", width=4, height=4, labels=labels
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"Nodule": 1, "Mass": 0, "Effusion": 1}, DISEASE),
        ({"Nodule": 0, "Mass": 1}, DISEASE),
        ({"Nodule": 0, "Mass": 0, "Effusion": 1}, OTHER),
        ({"Nodule": 0, "Mass": 0, "Effusion": 0}, NORMAL),
        ({"No Finding": 1}, NORMAL),
        ({"Effusion": 1}, IGNORE),  # abnormal, nodule/mass unknown
        ({}, IGNORE),
    ],
)
def test_three_class_label(labels: dict[str, int], expected: int) -> None:
    assert targets.three_class_label(_record(labels), members=["Nodule", "Mass"]) == expected


def test_is_abnormal_matches_eval_reference() -> None:
    assert targets.is_abnormal(_record({"No Finding": 1, "Mass": 0})) == 0
    assert targets.is_abnormal(_record({"Mass": 1})) == 1
    assert targets.is_abnormal(_record({})) is None
