"""Encoder + heads of the multi-task models (KCR Model 1 / Model 2, Guendel, screening members).

    image (B,1,H,W) in [0,1] ─▶ InputAdapter ─▶ ResNet / DenseNet ─▶ pyramid [s4, s8, s16, s32]
        pooled s32 ─▶ Linear ─▶ "logits"   (B, F) multi-label, or (B, 3) normal/disease/other
        pooled s32 ─▶ Linear ─▶ "location" (B, 6) left/right x upper/middle/lower   (Guendel)
        pyramid    ─▶ Decoder ─▶ "reconstruction" (B, 1, H, W) in [0, 1]          (Model 2)
        pyramid    ─▶ Decoder ─▶ "segmentation"   (B, S, H, W) logits per organ   (Guendel)

The encoder is torchvision's ResNet-50 / DenseNet-121 (weights from stage one's ``backbone.pth``,
torchvision's ImageNet file, or random) with its pyramid taken by
``torchvision.models.feature_extraction``, so its parameter names stay torchvision's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor

from cxrkit.errors import MissingFileError
from cxrkit.multitask.config import ENCODERS, MultiTaskConfig
from cxrkit.multitask.decoder import Decoder
from cxrkit.multitask.targets import REGIONS

# torchvision node -> pyramid level (strides 4, 8, 16, 32) and each level's channels
_NODES = {
    "resnet50": (["layer1", "layer2", "layer3", "layer4"], [256, 512, 1024, 2048]),
    "resnet18": (["layer1", "layer2", "layer3", "layer4"], [64, 128, 256, 512]),
    "densenet121": (
        ["features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"],
        [256, 512, 1024, 1024],
    ),
}
_WHERE = {
    "imagenet": "torchvision's ImageNet file (resnet50-11ad3fa6.pth / densenet121-a639ec97.pth, "
    "downloaded once by you; cxrkit never downloads)",
    "checkpoint": "backbone.pth (or a .ckpt) written by `cxrkit pretrain`",
}


class Encoder(nn.Module):
    """Grey image -> feature pyramid.

    ``forward(image)`` takes FloatTensor[B, 1|3, H, W] in [0, 1] and returns a list of four
    FloatTensor[B, C_i, H / s, W / s] for strides s = 4, 8, 16, 32 (``channels`` gives C_i).
    """

    def __init__(self, *, name: str, body: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        nodes, channels = _NODES[name]
        self.name = name
        self.channels = list(channels)
        self.adapter = adapter
        self.body = create_feature_extractor(body, {n: str(i) for i, n in enumerate(nodes)})
        # DenseNet applies ReLU after norm5 in its own forward; the extractor stops before it
        self.final_relu = name == "densenet121"

    def forward(self, image: Tensor) -> list[Tensor]:
        out = self.body(self.adapter(image))
        levels = [out[str(i)] for i in range(len(out))]
        if self.final_relu:
            levels[-1] = F.relu(levels[-1])
        return levels


def build_encoder(*, name: str, init: str, weights: str | Path | None = None) -> Encoder:
    """ResNet-50 / DenseNet-121 (or a random ResNet-18 for quick runs) as an :class:`Encoder`.

    Raises:
        MissingFileError: ``init`` is ``imagenet``/``checkpoint`` and ``weights`` is empty or not
            a file.
    """
    from cxrkit.models import backbones

    if name not in ENCODERS:
        raise ValueError(f"encoder {name!r} is not one of {ENCODERS}")
    path: Path | None = None
    if init != "random":
        if not weights:
            raise MissingFileError(
                f"encoder.init={init} needs encoder.weights=PATH to {_WHERE[init]}; "
                "or set encoder.init=random"
            )
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(f"{path}: encoder weights not found; expected {_WHERE[init]}")
    if name == "resnet50":
        body: nn.Module = backbones.build_resnet50(weights=path)
    elif name == "densenet121":
        body = backbones.build_densenet121(weights=path)
    else:
        body = torchvision.models.resnet18(weights=None)
        body.fc = nn.Identity()
    return Encoder(name=name, body=body, adapter=backbones.InputAdapter())


class MultiTaskModel(nn.Module):
    """An :class:`Encoder`, a classification head and optional decoder, segmentation and location.

    ``forward(image, *, reconstruct=True)`` takes FloatTensor[B, 1, H, W] in [0, 1] and returns a
    dict: ``"logits"`` FloatTensor[B, num_outputs]; with a decoder ``"reconstruction"``
    FloatTensor[B, 1, H, W] in [0, 1] (skipped when ``reconstruct`` is False); with organs
    ``"segmentation"`` FloatTensor[B, num_organs, H, W] logits; with location ``"location"``
    FloatTensor[B, 6] logits ordered as :data:`cxrkit.multitask.targets.REGIONS`.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        num_outputs: int,
        decoder: Decoder | None = None,
        segmentation: Decoder | None = None,
        location: bool = False,
    ) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.encoder = encoder
        width = encoder.channels[-1]
        self.classifier = nn.Linear(width, num_outputs)
        self.decoder = decoder
        self.segmentation = segmentation
        self.location = nn.Linear(width, len(REGIONS)) if location else None

    def forward(self, image: Tensor, *, reconstruct: bool = True) -> dict[str, Tensor]:
        size = (image.shape[-2], image.shape[-1])
        pyramid = self.encoder(image)
        pooled = torch.flatten(F.adaptive_avg_pool2d(pyramid[-1], 1), 1)
        out = {"logits": self.classifier(pooled)}
        if self.decoder is not None and reconstruct:
            out["reconstruction"] = self.decoder(pyramid, size)
        if self.segmentation is not None:
            out["segmentation"] = self.segmentation(pyramid, size)
        if self.location is not None:
            out["location"] = self.location(pooled)
        return out


def build_model(
    *,
    encoder: str = "resnet50",
    init: str = "random",
    weights: str | Path | None = None,
    num_outputs: int,
    reconstruction: bool = False,
    reconstruction_width: int = 256,
    reconstruction_skips: bool = False,
    num_organs: int = 0,
    segmentation_width: int = 128,
    location: bool = False,
) -> MultiTaskModel:
    """Compose a :class:`MultiTaskModel` (arguments as in :mod:`cxrkit.multitask.config`)."""
    enc = build_encoder(name=encoder, init=init, weights=weights)
    decoder = (
        Decoder(
            in_channels=enc.channels,
            out_channels=1,
            width=reconstruction_width,
            skips=reconstruction_skips,
            output="sigmoid",
        )
        if reconstruction
        else None
    )
    seg = (
        Decoder(
            in_channels=enc.channels,
            out_channels=num_organs,
            width=segmentation_width,
            skips=True,
            output="logits",
        )
        if num_organs > 0
        else None
    )
    return MultiTaskModel(
        encoder=enc, num_outputs=num_outputs, decoder=decoder, segmentation=seg, location=location
    )


def build_from_config(
    config: MultiTaskConfig, *, num_outputs: int, load_weights: bool = True
) -> MultiTaskModel:
    """The model a config describes. ``load_weights=False`` builds it randomly initialised (used
    when a checkpoint's weights will be loaded over it, so the encoder file need not exist)."""
    enc = config.encoder
    return build_model(
        encoder=enc.name,
        init=enc.init if load_weights else "random",
        weights=enc.weights or None,
        num_outputs=num_outputs,
        reconstruction=config.reconstruction.enabled,
        reconstruction_width=config.reconstruction.width,
        reconstruction_skips=config.reconstruction.skips,
        num_organs=len(config.segmentation.organs) if config.segmentation.enabled else 0,
        segmentation_width=config.segmentation.width,
        location=config.location.enabled,
    )
