"""CAM localisation scores: hand-made maps and boxes with values a person can check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrkit.errors import DataError
from cxrkit.eval import cam_scores
from cxrkit.eval.cam_scores import box_mask, energy_share, pointing_hit, score_cam


def test_box_mask_takes_the_pixels_whose_centre_is_inside() -> None:
    mask = box_mask((4, 5), [(1, 0, 3, 2)])  # columns 1, 2 (centres 1.5, 2.5); rows 0, 1
    expected = np.zeros((4, 5), bool)
    expected[0:2, 1:3] = True
    assert (mask == expected).all()
    # edges included: a box from 0.5 to 0.5 still holds the centre of pixel (0, 0)
    assert box_mask((2, 2), [(0.5, 0.5, 0.5, 0.5)]).sum() == 1
    assert box_mask((3, 3), np.zeros((0, 4))).sum() == 0  # no box, no pixel
    union = box_mask((4, 4), [(0, 0, 1, 1), (3, 3, 4, 4)])
    assert union.sum() == 2 and union[0, 0] and union[3, 3]


def test_energy_share_and_pointing_game_golden_values() -> None:
    cam = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.5, 0.0],
            [0.0, 0.5, 0.0, 0.0],
            [0.0, 0.0, 0.0, 2.0],
        ]
    )  # total 4.0
    inner = box_mask(cam.shape, [(1, 1, 3, 3)])  # the 2x2 block at rows/cols 1-2: 2.0 of 4.0
    assert energy_share(cam, inner) == pytest.approx(0.5)
    assert pointing_hit(cam, inner) == 0.0  # the maximum (2.0) is in the corner
    corner = box_mask(cam.shape, [(3, 3, 4, 4)])
    assert energy_share(cam, corner) == pytest.approx(0.5) and pointing_hit(cam, corner) == 1.0
    # flat map: the box's share of the pixels; every pixel is a maximum, so any box hits
    flat = np.ones((4, 4))
    assert energy_share(flat, inner) == pytest.approx(4 / 16) and pointing_hit(flat, inner) == 1.0
    # a tie between two maxima: a hit when either is inside
    tie = np.zeros((4, 4))
    tie[0, 0] = tie[3, 3] = 1.0
    assert pointing_hit(tie, corner) == 1.0
    zero = np.zeros((4, 4))
    assert math.isnan(energy_share(zero, inner)) and math.isnan(pointing_hit(zero, inner))
    with pytest.raises(ValueError, match="non-negative"):
        energy_share(-cam, inner)
    with pytest.raises(ValueError, match="cam must be"):
        pointing_hit(cam[:3], inner)


def test_score_cam_against_the_box_and_the_ground_truth() -> None:
    cam = np.zeros((8, 8))
    cam[2:4, 2:4] = 1.0  # energy 4, all in the 2x2 block
    scores = score_cam(cam, box=(0, 0, 4, 4), gt_boxes=[(3, 3, 8, 8)])
    assert scores["energy_in_box"] == pytest.approx(1.0) and scores["pointing_hit"] == 1.0
    # the ground truth holds pixel (3, 3) only: a quarter of the energy, and a maximum
    assert scores["energy_in_gt"] == pytest.approx(0.25) and scores["pointing_hit_gt"] == 1.0
    none = score_cam(cam, box=(4, 4, 8, 8))
    assert none["energy_in_box"] == 0.0 and none["pointing_hit"] == 0.0
    assert math.isnan(none["energy_in_gt"]) and math.isnan(none["pointing_hit_gt"])


def _index(values: dict[str, list[float]], images: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"image_id": images})
    for column in cam_scores.SCORE_COLUMNS:
        frame[column] = values.get(column, [math.nan] * len(images))
    return frame


def test_summarise_means_skip_undefined_and_weighted_resamples_match_a_reference() -> None:
    index = _index(
        {
            "energy_in_box": [0.2, 0.4, 0.9],
            "pointing_hit": [0.0, 1.0, 1.0],
            "energy_in_gt": [0.5, math.nan, 0.1],
            "pointing_hit_gt": [1.0, math.nan, 0.0],
        },
        ["a", "a", "b"],
    )
    s = cam_scores.summarise(index, n_bootstrap=300, seed=3)
    assert s["n_cams"] == 3 and s["n_images"] == 2
    assert s["energy_in_box"]["value"] == pytest.approx(0.5)
    assert s["pointing_hit"]["value"] == pytest.approx(2 / 3)
    assert s["energy_in_gt"]["value"] == pytest.approx(0.3) and s["energy_in_gt"]["n"] == 2
    low, high = s["energy_in_box"]["ci"]
    assert 0.2 <= low <= 0.5 <= high <= 0.9
    # reference: resample images with the same weights, average the CAMs the resample holds
    from cxrkit.eval import bootstrap

    weights = np.vstack(
        list(bootstrap.iter_patient_weights(groups=["a", "b"], n_bootstrap=300, seed=3))
    )
    means = [np.mean([0.2] * int(w[0]) + [0.4] * int(w[0]) + [0.9] * int(w[1])) for w in weights]
    assert [low, high] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
    assert cam_scores.summarise(index, n_bootstrap=0)["energy_in_box"]["ci"] is None
    empty = cam_scores.summarise(index.iloc[:0], n_bootstrap=10)
    assert empty["n_cams"] == 0 and math.isnan(empty["pointing_hit"]["value"])
    with pytest.raises(DataError, match="pointing_hit"):
        cam_scores.summarise(index.drop(columns="pointing_hit"))


def test_compare_is_paired_on_the_same_images_and_unpaired_otherwise() -> None:
    images = [f"i{k}" for k in range(12)]
    a = _index({"energy_in_box": [0.1 + 0.05 * k for k in range(12)]}, images)
    b = _index({"energy_in_box": [0.2 + 0.05 * k for k in range(12)]}, images)  # a + 0.1 each
    paired = cam_scores.compare(a, b, n_bootstrap=200, seed=0)
    assert paired["pairing"] == "paired by image"
    diff = paired["energy_in_box"]
    # paired by image, every image's difference is 0.1: every resample gives exactly 0.1
    assert diff["value"] == pytest.approx(0.1) and diff["ci"] == pytest.approx([0.1, 0.1])
    assert diff["p_value"] == pytest.approx(diff["p_floor"])
    other = _index({"energy_in_box": list(b["energy_in_box"])}, [f"j{k}" for k in range(12)])
    unpaired = cam_scores.compare(a, other, n_bootstrap=200, seed=0)
    assert unpaired["pairing"] == "unpaired"
    assert unpaired["energy_in_box"]["value"] == pytest.approx(0.1)
    low, high = unpaired["energy_in_box"]["ci"]
    assert low < 0.1 < high and high - low > 0.05  # independent resamples: a real spread
    assert math.isnan(paired["pointing_hit"]["value"])  # no score there, no number
