"""Backbone builders and weight loading: every accepted file format, every refused one."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from cxrkit.errors import ConfigError, DataError, MissingFileError
from cxrkit.models import backbones


@pytest.fixture(scope="module")
def imagenet_resnet50_file(tmp_path_factory):
    """A file in the format of torchvision's resnet50-11ad3fa6.pth (keys incl. fc.*)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet50-11ad3fa6.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def test_input_adapter_golden_values():
    adapter = backbones.InputAdapter()
    x = torch.full((2, 1, 4, 5), 0.5)
    y = adapter(x)
    assert y.shape == (2, 3, 4, 5)
    for c, (m, s) in enumerate(zip(backbones.IMAGENET_MEAN, backbones.IMAGENET_STD, strict=True)):
        assert torch.allclose(y[:, c], torch.full((2, 4, 5), (0.5 - m) / s))
    rgb = torch.rand(1, 3, 8, 8)
    assert torch.allclose(adapter(rgb)[0, 2], (rgb[0, 2] - 0.406) / 0.225)
    assert adapter.state_dict() == {}  # statistics never leak into checkpoints
    with pytest.raises(ValueError, match=r"\(B, 1\|3, H, W\)"):
        adapter(torch.rand(1, 2, 8, 8))


def test_resnet50_contract_random_init():
    model = backbones.build_resnet50()
    assert isinstance(model.fc, torch.nn.Identity)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2048)
    reference = {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    assert set(model.state_dict()) == reference


def test_imagenet_file_loads_strictly_without_fc(imagenet_resnet50_file):
    model = backbones.build_resnet50(weights=imagenet_resnet50_file)
    source = torch.load(imagenet_resnet50_file, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, source[k]), k
    # the documented stage-two handoff: strict load into torchvision's resnet50 minus fc
    plain = torchvision.models.resnet50()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(backbones.load_backbone_state(imagenet_resnet50_file), strict=True)


def test_backbone_pth_and_lightning_checkpoint(tmp_path, imagenet_resnet50_file):
    state = backbones.load_backbone_state(imagenet_resnet50_file)
    exported = tmp_path / "backbone.pth"
    torch.save(state, exported)
    assert backbones.load_backbone_state(exported).keys() == state.keys()

    ckpt = {
        "epoch": 3,
        "state_dict": {
            **{f"backbone.{k}": v for k, v in state.items()},
            "projection_head.layers.0.weight": torch.zeros(8, 2048),
        },
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = backbones.load_backbone_state(tmp_path / "last.ckpt")
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])

    # DDP ("module.") and torch.compile ("_orig_mod.") wrappers are not part of the names
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    assert backbones.load_backbone_state(tmp_path / "wrapped.pth").keys() == state.keys()


def test_missing_file_says_how_to_get_it(tmp_path):
    path = tmp_path / "resnet50-11ad3fa6.pth"
    with pytest.raises(MissingFileError) as info:
        backbones.build_resnet50(weights=path)
    message = str(info.value)
    assert str(path) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message


def test_refuses_wrong_files(tmp_path, imagenet_resnet50_file):
    state = backbones.load_backbone_state(imagenet_resnet50_file)
    torch.save({k: v for k, v in state.items() if k != "layer4.2.bn3.weight"}, tmp_path / "a.pth")
    with pytest.raises(DataError, match=r"1 missing keys .*layer4\.2\.bn3\.weight"):
        backbones.load_backbone_state(tmp_path / "a.pth")
    torch.save({**state, "conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "b.pth")
    with pytest.raises(DataError, match=r"'conv1\.weight' is \(64, 1, 7, 7\), expected"):
        backbones.load_backbone_state(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="c.pth: cannot be read"):
        backbones.load_backbone_state(tmp_path / "c.pth")
    torch.save({"state_dict": {"model.w": torch.zeros(1)}}, tmp_path / "d.ckpt")
    with pytest.raises(DataError, match="without a 'backbone"):
        backbones.load_backbone_state(tmp_path / "d.ckpt")
    with pytest.raises(DataError, match="not densenet121 weights"):
        backbones.load_backbone_state(imagenet_resnet50_file, arch="densenet121")


def test_densenet121_old_style_imagenet_file(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.densenet121().state_dict()
    # torchvision's 2017 file spells "denselayer1.norm.1.weight" for the module "norm1"
    # and, saved before PyTorch 0.4, has no BatchNorm num_batches_tracked
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)", r"\1.\2", k): v
        for k, v in reference.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    model, dim = backbones.build_backbone(
        name="densenet121", weights=tmp_path / "densenet121-a639ec97.pth"
    )
    assert dim == 1024
    assert isinstance(model.classifier, torch.nn.Identity)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1024)


def test_build_backbone_names():
    model, dim = backbones.build_backbone(name="resnet50")
    assert dim == 2048 and isinstance(model, torchvision.models.ResNet)
    with pytest.raises(ConfigError, match="unknown backbone 'vit'"):
        backbones.build_backbone(name="vit")


def test_random_resnet50_zero_inits_each_residual_branch():
    # The Barlow Twins code: torchvision.models.resnet50(zero_init_residual=True).
    model = backbones.build_resnet50()
    blocks = [m for m in model.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert torch.count_nonzero(model.bn1.weight) > 0  # the stem is not zeroed
