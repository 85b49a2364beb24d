"""Image backbones shared by every stage: ResNet-50 and DenseNet-121, and how their weights load.

Contracts:

- A backbone takes ``(B, 3, H, W)`` ImageNet-normalised float images and returns pooled features
  ``(B, C)``: ``C = 2048`` for ResNet-50 (``fc`` replaced by ``Identity``), ``C = 1024`` for
  DenseNet-121 (``classifier`` replaced by ``Identity``).
- Datasets give ``(B, 1, H, W)`` cache pixels in ``[0, 1]``; :class:`InputAdapter` turns them into
  what the backbone expects (channel repeated to 3, ImageNet mean/std), so every stage - and the
  Barlow Twins views - sees the same input statistics.
- Weights always come from a local file (no downloads). :func:`load_backbone_state` accepts the
  torchvision ImageNet file, our ``backbone.pth`` (torchvision key names, no ``fc``) and a
  Lightning checkpoint of the pretrain stage, and returns a state dict that loads with
  ``strict=True`` into the backbone built here.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from cxrkit import io
from cxrkit.errors import CheckpointError, ConfigError, DataError, MissingFileError
from cxrkit.models.weights import IMAGENET_FILES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS = ("resnet50", "densenet121")
FEATURE_DIMS = {"resnet50": 2048, "densenet121": 1024}
# The head each torchvision classifier carries; it is dropped when loading a backbone.
_HEADS = {"resnet50": "fc.", "densenet121": "classifier."}
# Lightning checkpoints of our stages keep the backbone under this attribute name.
CHECKPOINT_PREFIX = "backbone."

# DenseNet files from 2017 name layers "norm.1" where the module is "norm1" (torchvision's own fix).
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class InputAdapter(nn.Module):
    """Turn cache pixels into ImageNet-normalised RGB.

    Input ``(B, 1, H, W)`` or ``(B, 3, H, W)`` float in ``[0, 1]``; output ``(B, 3, H, W)`` with
    ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per channel. A single channel is repeated to three
    (a grey radiograph is R = G = B). The statistics are non-persistent buffers: they follow the
    module's device and dtype but never appear in a state dict, so checkpoints hold weights only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InputAdapter expects (B, 1|3, H, W) images, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _weights_hint(arch: str) -> str:
    return (
        f"give the path of an existing file: torchvision's ImageNet {arch} weights (download "
        f"{IMAGENET_FILES[arch]} once, e.g. with `curl -LO {IMAGENET_FILES[arch]}`), a "
        "backbone.pth exported by `cxrkit pretrain`, or a pretrain checkpoint (.ckpt); or "
        "init=random (model.init=random in a stage config) for random initialisation"
    )


def _missing_weights(path: Path, arch: str) -> MissingFileError:
    hint = _weights_hint(arch)
    return MissingFileError(f"{path}: weights file not found. {hint[0].upper()}{hint[1:]}")


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")


def _torchvision_model(arch: str) -> nn.Module:
    # weights=None: torchvision never downloads; we load files ourselves.
    if arch == "resnet50":
        # zero_init_residual: each block's last BatchNorm starts at 0, so a randomly initialised
        # network starts as a near-identity chain of blocks; the Barlow Twins code builds its
        # ResNet-50 this way (facebookresearch/barlowtwins, main.py). Loaded weights overwrite it.
        return torchvision.models.resnet50(weights=None, zero_init_residual=True)
    return torchvision.models.densenet121(weights=None)


def _expected_shapes(arch: str) -> dict[str, torch.Size]:
    # Built on the meta device: the key names and shapes without allocating 25M parameters.
    with torch.device("meta"):
        model = _torchvision_model(arch)
    head = _HEADS[arch]
    return {k: v.shape for k, v in model.state_dict().items() if not k.startswith(head)}


def _clean_key(key: str) -> str:
    # DDP wraps modules as "module.", torch.compile as "_orig_mod."; neither is part of the name.
    return key.replace("module.", "", 1) if key.startswith("module.") else key


def load_backbone_state(path: str | Path, *, arch: str = "resnet50") -> dict[str, Tensor]:
    """Read backbone weights from a local file, in torchvision key names, head removed.

    Accepted files: torchvision's ImageNet weights (``resnet50-11ad3fa6.pth`` with ``fc.*``,
    ``densenet121-a639ec97.pth`` with its old ``norm.1`` key style), a ``backbone.pth`` written by
    ``cxrkit pretrain`` (no ``fc``), a Lightning ``.ckpt`` whose ``state_dict`` holds the backbone
    under ``backbone.``. Loaded with ``weights_only=True`` on the CPU.

    Returns:
        ``{name: tensor}`` that loads with ``strict=True`` into :func:`build_resnet50` /
        :func:`build_densenet121`.

    Raises:
        MissingFileError: the file does not exist (the message says how to obtain one).
        DataError: the file is not a state dict, or its keys or shapes do not match ``arch``.
    """
    _check_arch(arch)
    path = Path(path)
    if not path.is_file():
        raise _missing_weights(path, arch)
    try:
        obj = io.load_torch(path, what=f"{arch} weights file", hint=_weights_hint(arch))
    except CheckpointError as exc:  # torn, not a torch file, or unsafe to unpickle
        raise DataError(f"{path}: cannot be read as a PyTorch weights file ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        # A Lightning checkpoint: keep only the backbone of the module.
        state = {
            k[len(CHECKPOINT_PREFIX) :]: v
            for k, v in obj["state_dict"].items()
            if k.startswith(CHECKPOINT_PREFIX)
        }
        if not state:
            raise DataError(
                f"{path}: a Lightning checkpoint without a '{CHECKPOINT_PREFIX}*' module; expected "
                "a checkpoint written by `cxrkit pretrain`"
            )
    elif isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        raise DataError(f"{path}: not a state dict of tensors nor a Lightning checkpoint")

    state = {_clean_key(k).replace("_orig_mod.", ""): v for k, v in state.items()}
    if arch == "densenet121":
        state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    head = _HEADS[arch]
    state = {k: v for k, v in state.items() if not k.startswith(head)}

    expected = _expected_shapes(arch)
    for key in expected:
        # Files saved before PyTorch 0.4 (torchvision's DenseNet-121, ResNet-50 V1) have no
        # BatchNorm step counters; the counter only matters for momentum=None, so start at 0.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(
            f"{path}: not {arch} weights: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    wrong = [k for k, shape in expected.items() if state[k].shape != shape]
    if wrong:
        k = wrong[0]
        raise DataError(
            f"{path}: {len(wrong)} tensors have the wrong shape for {arch}, e.g. {k!r} is "
            f"{tuple(state[k].shape)}, expected {tuple(expected[k])}"
        )
    return state


def _build(arch: str, weights: str | Path | None) -> nn.Module:
    model = _torchvision_model(arch)
    if arch == "resnet50":
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    if weights is not None:
        model.load_state_dict(load_backbone_state(weights, arch=arch), strict=True)
    return model


def build_resnet50(*, weights: str | Path | None = None) -> torchvision.models.ResNet:
    """torchvision ResNet-50 with ``fc = Identity``: ``(B, 3, H, W)`` -> ``(B, 2048)``.

    Args:
        weights: a local weights file (see :func:`load_backbone_state`); ``None`` keeps
            torchvision's random initialisation with ``zero_init_residual=True`` (as the Barlow
            Twins code builds it).
    """
    return _build("resnet50", weights)  # type: ignore[return-value]


def build_densenet121(*, weights: str | Path | None = None) -> nn.Module:
    """torchvision DenseNet-121 with ``classifier = Identity``: ``(B, 3, H, W)`` -> ``(B, 1024)``.

    Args:
        weights: a local weights file (see :func:`load_backbone_state`); ``None`` keeps
            torchvision's random initialisation.
    """
    return _build("densenet121", weights)


def build_backbone(*, name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """Build backbone ``name`` (``"resnet50"`` or ``"densenet121"``).

    Returns:
        ``(module, C)``: the module maps ``(B, 3, H, W)`` ImageNet-normalised images to pooled
        features ``(B, C)``.
    """
    _check_arch(name)
    return _build(name, weights), FEATURE_DIMS[name]
