"""Output shapes of every head, the decoder, and encoder weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cxrkit.errors import MissingFileError
from cxrkit.multitask.decoder import Decoder
from cxrkit.multitask.model import build_encoder, build_model
from cxrkit.multitask.targets import REGIONS


@pytest.mark.parametrize("encoder", ["resnet50", "densenet121", "resnet18"])
def test_every_head_has_the_documented_shape(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        encoder=encoder,
        init="random",
        num_outputs=5,
        reconstruction=True,
        reconstruction_width=32,
        num_organs=2,
        segmentation_width=32,
        location=True,
    ).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = model(image)
    assert out["logits"].shape == (2, 5)
    assert out["reconstruction"].shape == (2, 1, 64, 64)
    assert out["reconstruction"].min() >= 0 and out["reconstruction"].max() <= 1  # sigmoid
    assert out["segmentation"].shape == (2, 2, 64, 64)
    assert out["location"].shape == (2, len(REGIONS))
    with torch.no_grad():
        assert "reconstruction" not in model(image, reconstruct=False)


def test_model1_has_only_the_classifier() -> None:
    model = build_model(encoder="resnet18", init="random", num_outputs=3)
    out = model(torch.rand(1, 1, 64, 64))
    assert set(out) == {"logits"} and out["logits"].shape == (1, 3)
    assert model.decoder is None and model.segmentation is None and model.location is None


@pytest.mark.parametrize("skips", [False, True])
def test_decoder_output_matches_odd_input_size(skips: bool) -> None:
    pyramid = [torch.rand(1, c, 80 // s, 72 // s) for c, s in ((8, 4), (16, 8), (32, 16), (64, 32))]
    decoder = Decoder(
        in_channels=[8, 16, 32, 64], out_channels=3, width=32, skips=skips, output="logits"
    )
    assert decoder(pyramid, (81, 73)).shape == (1, 3, 81, 73)


def test_encoder_pyramid_strides_and_torchvision_names() -> None:
    enc = build_encoder(name="resnet18", init="random")
    levels = enc(torch.rand(1, 1, 64, 64))
    assert [tuple(x.shape[1:]) for x in levels] == [
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]
    assert "body.layer4.1.conv2.weight" in enc.state_dict()


def test_encoder_weights_from_a_torchvision_file(tmp_path: Path) -> None:
    reference = torchvision.models.densenet121(weights=None)
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(reference.state_dict(), path)  # includes classifier.*, which must be dropped
    enc = build_encoder(name="densenet121", init="imagenet", weights=path)
    ours = enc.body.state_dict()
    key = "features.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(ours[key], reference.state_dict()[key])


def test_missing_encoder_weights_say_how_to_provide_them(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="encoder.weights"):
        build_encoder(name="resnet50", init="imagenet", weights=None)
    with pytest.raises(MissingFileError, match="backbone.pth"):
        build_encoder(name="resnet50", init="checkpoint", weights=tmp_path / "nope.pth")
