"""torchvision -> detectron2 ResNet names: exhaustive, invertible, and equal to detectron2's own
converter (tools/convert-torchvision-to-d2.py, inlined below as the reference)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from cxrkit.errors import DataError
from cxrkit.models import detectron2_export as d2

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "detectron2"


def detectron2_converter_name(k: str) -> str:
    """The renaming loop of detectron2's tools/convert-torchvision-to-d2.py."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in [1, 2, 3]:
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


@pytest.fixture(scope="module")
def torchvision_keys() -> list[str]:
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return [k for k in model.state_dict() if not k.startswith("fc.")]


def test_every_key_maps_to_one_name_and_back(torchvision_keys):
    names = [d2.to_detectron2_name(k) for k in torchvision_keys]
    assert len(set(names)) == len(torchvision_keys) == 318  # 53 convolutions, 53 BatchNorms x 5
    for key, name in zip(torchvision_keys, names, strict=True):
        assert name == detectron2_converter_name(key), key
        assert d2.from_detectron2_name(name) == key


def test_golden_names():
    assert d2.to_detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert d2.to_detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert d2.to_detectron2_name("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert d2.to_detectron2_name("layer1.0.downsample.1.bias") == "res2.0.shortcut.norm.bias"
    assert d2.to_detectron2_name("layer4.2.bn3.running_var") == "res5.2.conv3.norm.running_var"
    assert d2.to_detectron2_name("layer3.5.conv2.weight") == "res4.5.conv2.weight"
    with pytest.raises(DataError, match="'fc.weight' is not a torchvision ResNet"):
        d2.to_detectron2_name("fc.weight")
    with pytest.raises(DataError, match="'res2.0.conv1.bias' is not a detectron2"):
        d2.from_detectron2_name("res2.0.conv1.bias")


def test_checkpoint_file_format(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    path = d2.write_detectron2_checkpoint(state, tmp_path / "backbone_d2.pkl", author="test")
    with path.open("rb") as f:
        payload = pickle.load(f)
    assert set(payload) == {"model", "__author__", "matching_heuristics"}
    assert payload["__author__"] == "test" and payload["matching_heuristics"] is True
    weights = payload["model"]
    # the 53 BatchNorm step counters are dropped: detectron2's FrozenBatchNorm2d has none
    assert len(weights) == 318 - 53
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in weights.values())
    np.testing.assert_array_equal(weights["res3.1.conv2.weight"], state["layer2.1.conv2.weight"])
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_config_matches_the_export():
    config = yaml.safe_load((CONFIG / "faster_rcnn_R_50_FPN_barlow_twins.yaml").read_text())
    assert config["INPUT"]["FORMAT"] == "RGB"
    assert tuple(config["MODEL"]["PIXEL_MEAN"]) == d2.PIXEL_MEAN == (123.675, 116.28, 103.53)
    assert tuple(config["MODEL"]["PIXEL_STD"]) == d2.PIXEL_STD == (58.395, 57.12, 57.375)
    assert config["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert config["MODEL"]["RESNETS"]["DEPTH"] == 50
    assert config["MODEL"]["WEIGHTS"].endswith("backbone_d2.pkl")
