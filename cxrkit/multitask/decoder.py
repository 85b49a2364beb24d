"""A convolutional decoder from the encoder's feature pyramid back to input resolution.

Used twice: as Model 2's reconstruction decoder (one output channel, sigmoid, no skips by default so
the image must pass through the encoder's bottleneck) and as Guendel's organ segmentation head (one
logit channel per organ, with U-Net skips for sharp borders).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _UpBlock(nn.Module):
    """2x bilinear upsampling, optional concatenation of a skip feature, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class Decoder(nn.Module):
    """Feature pyramid -> map at input resolution.

    Args:
        in_channels: channels of the encoder's pyramid levels, finest first (strides 4, 8, 16, 32).
        out_channels: output channels (1 for reconstruction, one per organ for segmentation).
        width: channels after the first upsampling; halved at each further stage (at least 16).
        skips: concatenate the finer pyramid levels (U-Net) on the way up.
        output: ``"sigmoid"`` (values in [0, 1], for reconstruction) or ``"logits"``.

    ``forward(features, size)`` takes the pyramid as a list of FloatTensor[B, C_i, H_i, W_i] and
    returns FloatTensor[B, out_channels, *size].
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int,
        width: int = 256,
        skips: bool = False,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("in_channels is empty")
        if out_channels < 1 or width < 8:
            raise ValueError(f"need out_channels >= 1 and width >= 8, got {out_channels}, {width}")
        if output not in ("sigmoid", "logits"):
            raise ValueError(f"output {output!r} is not 'sigmoid' or 'logits'")
        self.skips = skips
        self.output = output
        levels = list(in_channels)
        # one block per finer level, then two more 2x steps from stride 4 to stride 1
        skip_channels = [*levels[-2::-1], 0, 0] if skips else [0] * (len(levels) + 1)
        blocks, cin = [], levels[-1]
        for i, cskip in enumerate(skip_channels):
            cout = max(width // (2**i), 16)
            blocks.append(_UpBlock(cin, cskip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, out_channels, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        x = features[-1]
        finer = list(features[-2::-1])
        for i, block in enumerate(self.blocks):
            skip = finer[i] if self.skips and i < len(finer) else None
            x = block(x, skip)
        x = self.head(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x) if self.output == "sigmoid" else x
