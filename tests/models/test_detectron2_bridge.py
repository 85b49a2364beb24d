"""The detectron2 bridge: configs consistent with cxrkit's outputs, registration, and (opt-in,
when detectron2 is importable) the exported backbone inside detectron2 equal to torchvision."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from cxrkit.models import detectron2_bridge as bridge
from cxrkit.models import detectron2_export as d2
from cxrkit.pretrain.handoff import DETECTRON2_FILE

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "detectron2" / "faster_rcnn_R_50_FPN_barlow_twins.yaml"
CONFIG_640 = CONFIG.with_name("faster_rcnn_R_50_FPN_barlow_twins_640.yaml")


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_config_follows_cxrkit_and_the_protocol():
    config = _yaml(CONFIG)
    pretrain = _yaml(ROOT / "configs" / "pretrain" / "barlow_twins_nih.yaml")
    # MODEL.WEIGHTS is the file `cxrkit pretrain` writes with configs/pretrain/barlow_twins_nih
    assert config["MODEL"]["WEIGHTS"] == f"{pretrain['output_dir']}/{DETECTRON2_FILE}"
    assert config["INPUT"]["RANDOM_FLIP"] == "horizontal"  # BarlowTwins-CXR: flip 0.5 only
    # 50 epochs x 3,075 training images (70 % of 4,394) / 32 images per iteration
    solver = config["SOLVER"]
    assert solver["IMS_PER_BATCH"] == 32
    assert solver["MAX_ITER"] == math.ceil(50 * int(4394 * 0.7) / 32) == 4805
    assert (solver["BASE_LR"], solver["WARMUP_ITERS"], solver["BASE_LR_END"]) == (0.005, 500, 1e-4)
    # the image size is the cache's: the 224-px detector cache of configs/finetune
    finetune = _yaml(ROOT / "configs" / "finetune" / "faster_rcnn_vindr.yaml")
    size = finetune["data"]["preprocess"]["size"]
    assert config["INPUT"]["MIN_SIZE_TRAIN"] == f"({size},)"
    assert config["INPUT"]["MAX_SIZE_TRAIN"] == config["INPUT"]["MIN_SIZE_TEST"] == size
    big = _yaml(CONFIG_640)
    assert big["_BASE_"] == CONFIG.name and big["INPUT"]["MAX_SIZE_TEST"] == 640
    assert config["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 14


def test_missing_detectron2_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(bridge.MissingDetectron2Error, match="--no-build-isolation"):
        bridge.register_coco("vindr_train", tmp_path / "train.json")


def test_register_coco_passes_classes_and_the_cache(monkeypatch, tmp_path):
    calls = []
    catalog = types.SimpleNamespace(list=lambda: ["old"], remove=lambda name: calls.append(name))
    data = types.ModuleType("detectron2.data")
    data.DatasetCatalog = catalog
    data.MetadataCatalog = catalog
    datasets = types.ModuleType("detectron2.data.datasets")
    datasets.register_coco_instances = lambda *args: calls.append(args)
    package = types.ModuleType("detectron2")
    package.data = data
    for name, module in [
        ("detectron2", package),
        ("detectron2.data", data),
        ("detectron2.data.datasets", datasets),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    coco = {
        "info": {"image_root": "/caches/vindr_224"},
        "images": [],
        "categories": [{"id": 2, "name": "B"}, {"id": 1, "name": "A"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    bridge.register_coco("vindr_train", tmp_path / "train.json")
    assert calls == [
        (
            "vindr_train",
            {"thing_classes": ["A", "B"]},
            str(tmp_path / "train.json"),
            "/caches/vindr_224",
        )
    ]
    calls.clear()
    bridge.register_coco("old", tmp_path / "train.json", image_root="/elsewhere")
    assert calls[:2] == ["old", "old"] and calls[2][3] == "/elsewhere"


def test_export_loads_into_detectron2_and_matches_torchvision(tmp_path):
    """Opt-in: needs a locally built detectron2 (skipped otherwise)."""
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    # non-trivial BatchNorm statistics, so a wrong stat/affine mapping shows
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    weights = d2.write_detectron2_checkpoint(state, tmp_path / DETECTRON2_FILE)

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(weights))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for i, layer in enumerate(
            (reference.layer1, reference.layer2, reference.layer3, reference.layer4), start=2
        ):
            h = layer(h)
            torch.testing.assert_close(ours[f"res{i}"], h, rtol=0, atol=1e-4, msg=f"res{i}")
