"""The BarlowTwins-CXR protocol folder, loaded through the real schemas, against the protocol.

The table below is the protocol as read from the authors' code (haooyuee/BarlowTwins-CXR) and the
issue; an edit of configs/barlowtwins_cxr/ that drifts from it fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cxrkit
from cxrkit import finetune, pretrain
from cxrkit.finetune.cam import CamConfig
from cxrkit.finetune.config import VINDR_CLASSES

FOLDER = Path(__file__).resolve().parents[2] / "configs" / "barlowtwins_cxr"

PRETRAIN = {
    "data.preprocess.clip_percentiles": False,
    "data.preprocess.clahe": False,
    "data.preprocess.size": 224,
    "data.train_split": "all",
    "data.batch_size": 768,
    "trainer.devices": "1",
    "trainer.accumulate_grad_batches": 1,
    "trainer.max_epochs": 800,
    "model.init": "imagenet",
    "model.weights": "weights/resnet50-11ad3fa6.pth",  # ImageNet V2
    "model.projector_hidden_dim": 8192,
    "model.projector_output_dim": 8192,
    "model.lambda_param": 0.0051,
    "views.size": 224,
    "optim.lr_weights": 0.2,
    "optim.lr_biases": 0.0048,
    "optim.weight_decay": 1e-6,
    "optim.warmup_epochs": 10.0,
}

DETECTOR = {
    "classes": list(VINDR_CLASSES),
    "negatives_fraction": 0.0,
    "fusion.method": "wbf",
    "augment.enabled": True,
    "augment.transforms": ["hflip"],
    "optim.lr": 0.005,
    "optim.momentum": 0.9,
    "optim.weight_decay": 1e-4,
    "optim.warmup_steps": 500,
    "optim.warmup_factor": 0.001,
    "optim.min_lr": 1e-4,
    "model.init": "checkpoint",
    "model.trainable_layers": 3,
    "model.frozen_bn": True,
    "model.rpn_pre_nms_train": 2000,
    "model.rpn_proposals_train": 1000,
    "model.rpn_proposals_test": 1000,
    "model.roi_batch_size": 512,
    "data.preprocess.size": 224,
    "data.batch_size": 32,
    "trainer.max_epochs": 50,
}

CAM = {"method": "ablation", "score_thresh": 0.3, "top_k": 10, "ablation_ratio": 0.5}


def value(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def check(config: Any, table: dict[str, Any]) -> None:
    wrong = {k: value(config, k) for k, v in table.items() if value(config, k) != v}
    assert not wrong, f"protocol drift: {wrong}"


def test_pretrain_protocol() -> None:
    check(cxrkit.load_config(pretrain.Config, [FOLDER / "pretrain.yaml"]), PRETRAIN)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], {}),
        (["detector_640.yaml"], {"data.preprocess.size": 640}),
        (
            ["imagenet_v1.yaml"],
            {"model.init": "imagenet", "model.weights": "weights/resnet50-0676ba61.pth"},
        ),
        (
            ["random.yaml"],
            {"model.init": "random", "model.trainable_layers": 5, "model.frozen_bn": False},
        ),
        (
            ["imagenet_v1.yaml", "detector_640.yaml"],
            {"model.init": "imagenet", "data.preprocess.size": 640},
        ),
    ],
)
def test_detector_protocol(extra: list[str], expected: dict[str, Any]) -> None:
    files = [FOLDER / "detector.yaml", *(FOLDER / f for f in extra)]
    check(cxrkit.load_config(finetune.Config, files), {**DETECTOR, **expected})


def test_the_imagenet_arm_is_v1_and_pretraining_starts_from_v2() -> None:
    detector = cxrkit.load_config(
        finetune.Config, [FOLDER / "detector.yaml", FOLDER / "imagenet_v1.yaml"]
    )
    pre = cxrkit.load_config(pretrain.Config, [FOLDER / "pretrain.yaml"])
    assert Path(detector.model.weights).name == "resnet50-0676ba61.pth"
    assert Path(pre.model.weights).name == "resnet50-11ad3fa6.pth"


def test_linear_eval_and_cam_protocol() -> None:
    linear = cxrkit.load_config(pretrain.LinearEvalConfig, [FOLDER / "linear_eval.yaml"])
    check(
        linear,
        {
            "mode": "linear",
            "label_fractions": [0.01, 0.1, 1.0],
            "data.batch_size": 64,
            "trainer.max_epochs": 30,
            "data.preprocess.clahe": False,
        },
    )
    check(cxrkit.load_config(CamConfig, [FOLDER / "cam.yaml"]), CAM)
    authors = cxrkit.load_config(
        pretrain.LinearEvalConfig,
        [FOLDER / "linear_eval.yaml", FOLDER / "linear_eval_authors.yaml"],
    )
    # barlowtwins/evaluate.py: lr 0.5 unscaled, wd 1e-6, momentum 0.9, batch 64, 30 epochs, the
    # 15 classes of dataset.py
    check(
        authors,
        {
            "protocol": "authors",
            "lr": 0.5,
            "weight_decay": 1e-6,
            "momentum": 0.9,
            "data.batch_size": 64,
            "trainer.max_epochs": 30,
            "label_fractions": [0.01, 0.1, 1.0],
        },
    )
    assert len(authors.findings) == 15 and authors.findings[-1] == "No Finding"
