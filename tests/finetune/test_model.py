"""The Faster R-CNN builder: losses on empty images, stage-one weights, input geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from cxrkit.errors import ConfigError, DataError, MissingFileError
from cxrkit.finetune.model import build_detector
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_resnet50
from cxrkit.pretrain.handoff import export_backbone

SMALL = {"image_size": 64, "anchor_sizes": (8, 16, 32, 64, 128), "rpn_proposals_train": 50}


def test_an_image_without_boxes_gives_zero_box_regression_loss() -> None:
    torch.manual_seed(0)
    model = build_detector(num_classes=3, **SMALL).train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(1, 64, 64)], [empty])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_box_reg"].item() == 0.0
    # the classifier and objectness still learn "background" from a negative image
    assert losses["loss_classifier"].item() > 0 and losses["loss_objectness"].item() > 0
    sum(losses.values()).backward()  # and the sum is differentiable


def test_backbone_pth_loads_strictly_into_the_fpn_body(tmp_path: Path) -> None:
    torch.manual_seed(1)
    resnet = build_resnet50()  # stage one's backbone: torchvision names, fc = Identity
    with torch.no_grad():  # non-default statistics, so a skipped buffer would show
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    # stage one's handoff, written by the pretrain stage's own exporter
    path, _ = export_backbone(state=resnet.state_dict(), out_dir=tmp_path)
    saved = torch.load(path, weights_only=True)
    assert path.name == "backbone.pth" and not any(k.startswith("fc.") for k in saved)

    model = build_detector(num_classes=14, backbone_weights=path, image_size=64)
    body = model.backbone.body.state_dict()
    # FrozenBatchNorm2d has no num_batches_tracked; every other name matches one to one
    expected = {k for k in saved if not k.endswith("num_batches_tracked")}
    assert set(body) == expected
    for name in expected:
        assert torch.equal(body[name], saved[name]), name
    # defaults with weights: frozen statistics, stem and layer1 frozen, layer2..4 trained
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    trained = {
        n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad
    }
    assert trained == {"layer2", "layer3", "layer4"}


def test_random_init_trains_every_stage_with_batchnorm() -> None:
    model = build_detector(num_classes=2, image_size=64)
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # + background


def test_missing_or_foreign_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nope.pth"):
        build_detector(num_classes=2, backbone_weights=tmp_path / "nope.pth")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="bad.pth"):
        build_detector(num_classes=2, backbone_weights=tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="num_classes"):
        build_detector(num_classes=0)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        build_detector(num_classes=1, anchor_sizes=(8, 16))


def test_transform_keeps_cache_pixels_and_normalises_like_imagenet() -> None:
    model = build_detector(num_classes=2, image_size=128).eval()
    image = torch.rand(1, 128, 128)
    boxes = torch.tensor([[10.5, 20.25, 60.0, 90.75]])
    batch, targets = model.transform([image], [{"boxes": boxes.clone(), "labels": torch.ones(1)}])
    assert batch.image_sizes == [(128, 128)]
    assert torch.equal(targets[0]["boxes"], boxes)  # no rescale: boxes stay in cache pixels
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (image.expand(3, -1, -1) - mean) / std
    assert torch.allclose(batch.tensors[0], expected, atol=1e-6)
    # and the inference post-processing maps boxes back by the identity
    (out,) = model.transform.postprocess([{"boxes": boxes.clone()}], [(128, 128)], [(128, 128)])
    assert torch.equal(out["boxes"], boxes)


@pytest.mark.parametrize(("trainable_layers", "frozen_bn"), [(3, True), (5, False), (0, True)])
def test_public_fpn_builder_builds_the_module_the_private_extractor_did(
    trainable_layers: int, frozen_bn: bool
) -> None:
    # the construction build_detector used before torchvision's public resnet_fpn_backbone
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    norm = FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
    old = _resnet_fpn_extractor(
        torchvision.models.resnet50(weights=None, norm_layer=norm), trainable_layers
    )
    new = build_detector(
        num_classes=2, trainable_layers=trainable_layers, frozen_bn=frozen_bn, **SMALL
    ).backbone
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(old_state) == list(new_state)
    assert all(old_state[k].shape == new_state[k].shape for k in old_state)
    trainable = {n for n, p in new.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in old.named_parameters() if p.requires_grad}
    assert [type(m) for m in old.modules()] == [type(m) for m in new.modules()]
