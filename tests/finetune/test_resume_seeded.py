"""Finetune with a shuffled loader AND augmentation is reproducible and resumes exactly mid-epoch.

The detector is a tiny Faster R-CNN (one conv stage) in place of R50-FPN, so that three short runs
fit in seconds; what is under test is `finetune.fit`'s loader (ResumableSampler over seeded items,
albumentations reseeded per item) and the engine's resume, which do not depend on the backbone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

import cxrkit
from cxrkit import engine, finetune
from cxrkit.data.cache import Cache
from cxrkit.finetune import train as finetune_train
from cxrkit.finetune.config import AugmentConfig
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.model import IMAGENET_MEAN, IMAGENET_STD, GrayscaleRCNNTransform
from cxrkit.finetune.module import DetectorModule

from .toy_vindr import SIZE, ToyData, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "tiny_faster_rcnn.yaml"
STEPS = 7  # 8 training images, batch 2: 4 steps an epoch, so the run ends mid-epoch too


def _tiny_detector(*, num_classes: int, image_size: int, **_: object) -> FasterRCNN:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
    )
    backbone.out_channels = 8  # type: ignore[assignment]
    model = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        rpn_anchor_generator=AnchorGenerator(sizes=((16, 32),), aspect_ratios=((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=4, sampling_ratio=2),
        representation_size=32,
        min_size=image_size,
        max_size=image_size,
        rpn_pre_nms_top_n_train=50,
        rpn_post_nms_top_n_train=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=16,
    )
    model.transform = GrayscaleRCNNTransform(
        min_size=image_size,
        max_size=image_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    return model


def _config(toy: ToyData, out: Path) -> finetune.Config:
    return cxrkit.load_config(
        finetune.Config,
        TINY,
        overrides=[
            *tiny_overrides(toy, out),
            "augment.enabled=true",
            "augment.strength=strong",
            "augment.hflip=true",
            "data.batch_size=2",
            "data.val_split=unassigned",  # no such record: no validation, the runs compare training
            "trainer.max_epochs=2",
            f"trainer.max_steps={STEPS}",
            "trainer.checkpoint_every_n_steps=1",
        ],
    )


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finetune_train, "build_detector", _tiny_detector)


@pytest.mark.usefixtures("tiny")
def test_seeded_runs_are_reproducible_and_a_killed_run_resumes_exactly(
    toy: ToyData, tmp_path: Path, kill_at_step, assert_same_weights
) -> None:
    full = finetune.fit(_config(toy, tmp_path / "full")).output_dir
    # (a) the same seed: the same weights, bit for bit (order and augmentation are seeded)
    torch.manual_seed(1234)  # whatever the process' RNG state before the run
    assert_same_weights(full, finetune.fit(_config(toy, tmp_path / "again")).output_dir, step=STEPS)

    # (b) killed in the middle of the second epoch (its second batch), resumed from last.ckpt
    split = _config(toy, tmp_path / "split")
    with kill_at_step(DetectorModule, 5):
        finetune.fit(split)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert_same_weights(full, finetune.fit(split).output_dir, step=STEPS)


def test_augmented_items_depend_on_seed_epoch_and_position_not_on_workers(toy: ToyData) -> None:
    config = _config(toy, Path("unused"))
    records = detection_records(
        [r for r in toy.records if r.split == "train"], config=config, train=True
    )
    dataset = finetune_train.detection_dataset(
        records,
        cache=Cache(toy.cache),
        classes=config.classes,
        size=SIZE,
        augment=AugmentConfig(strength="strong", hflip=True),
    )

    def epoch(num_workers: int, n: int) -> list[dict]:
        loader = engine.build_loader(
            dataset, batch_size=2, num_workers=num_workers, train=True, seed=5
        )
        loader.sampler.set_epoch(n)
        return list(loader)

    def same(a: list[dict], b: list[dict]) -> bool:
        return all(
            x["image_id"] == y["image_id"]
            and torch.equal(x["image"], y["image"])
            and all(torch.equal(p, q) for p, q in zip(x["boxes"], y["boxes"], strict=True))
            for x, y in zip(a, b, strict=True)
        )

    zero = epoch(0, 1)
    assert same(zero, epoch(2, 1))  # two worker processes: the same pixels and boxes
    assert same(zero, epoch(0, 1))
    # another epoch: another order and other augmentations of the same image
    again = {i: x["image"][k] for x in epoch(0, 2) for k, i in enumerate(x["image_id"])}
    assert any(
        not torch.equal(x["image"][k], again[i]) for x in zero for k, i in enumerate(x["image_id"])
    )
