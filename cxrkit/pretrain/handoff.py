"""The stage-one handoff: ``backbone.pth`` (torchvision names) and ``backbone_d2.pkl`` (detectron2).

``backbone.pth`` is a plain state dict with torchvision ResNet-50 key names and no ``fc``::

    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load("backbone.pth", weights_only=True), strict=True)

It expects what every cxrkit stage feeds it: ``backbones.InputAdapter`` output, i.e. [0, 1] cache
pixels repeated to RGB and normalised with ImageNet mean/std (the pretraining views went through
the same adapter). ``backbone_d2.pkl`` holds the same weights for detectron2, with
``configs/detectron2/faster_rcnn_R_50_FPN_barlow_twins.yaml`` as the matching config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from cxrkit import io
from cxrkit.models import backbones, detectron2_export

BACKBONE_FILE = "backbone.pth"
DETECTRON2_FILE = "backbone_d2.pkl"


def export_backbone(*, state: Mapping[str, Tensor], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/backbone.pth`` and ``out_dir/backbone_d2.pkl`` atomically.

    Args:
        state: ResNet-50 weights with torchvision names and no ``fc`` (e.g.
            ``module.backbone.state_dict()``); tensors are stored as float32, contiguous, on CPU.

    Returns:
        The two paths. The state is checked by a strict load into ``build_resnet50()`` first.
    """
    out_dir = Path(out_dir)
    clean = {
        k: (v.detach().cpu().contiguous().float() if v.is_floating_point() else v.detach().cpu())
        for k, v in state.items()
    }
    backbones.build_resnet50().load_state_dict(clean, strict=True)  # fail before writing
    path = io.atomic_write(out_dir / BACKBONE_FILE, lambda tmp: torch.save(clean, tmp))
    d2 = detectron2_export.write_detectron2_checkpoint(
        clean, out_dir / DETECTRON2_FILE, author="cxrkit pretrain (Barlow Twins)"
    )
    return path, d2


def export(*, checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Export the backbone of a pretrain checkpoint (.ckpt) or any accepted weights file as
    ``out_dir/backbone.pth`` and ``out_dir/backbone_d2.pkl`` (see :func:`export_backbone`)."""
    state = backbones.load_backbone_state(checkpoint, arch="resnet50")
    return export_backbone(state=state, out_dir=out_dir)


def load(path: str | Path) -> torchvision.models.ResNet:
    """The ResNet-50 backbone of a ``backbone.pth`` or a pretrain ``.ckpt`` (torchvision's
    ``resnet50`` with ``fc = Identity``: ``(B, 3, H, W)`` ImageNet-normalised -> ``(B, 2048)``).

    Raises:
        MissingFileError: no such file. DataError: not ResNet-50 weights.
    """
    return backbones.build_resnet50(weights=path)
