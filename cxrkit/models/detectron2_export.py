"""torchvision ResNet-50 weights in detectron2's checkpoint format (names, pickle, input contract).

detectron2 cannot be installed from the package registries, so it is not a dependency; this
module writes the file its ``DetectionCheckpointer`` reads: a pickled dict
``{"model": {name: numpy array}, "__author__": str, "matching_heuristics": True}`` with
detectron2's ResNet names (as its ``tools/convert-torchvision-to-d2.py`` does)::

    conv1.weight                  -> stem.conv1.weight
    bn1.<p>                       -> stem.conv1.norm.<p>
    layer<i>.<j>.conv<k>.weight   -> res<i+1>.<j>.conv<k>.weight
    layer<i>.<j>.bn<k>.<p>        -> res<i+1>.<j>.conv<k>.norm.<p>
    layer<i>.<j>.downsample.0.*   -> res<i+1>.<j>.shortcut.*
    layer<i>.<j>.downsample.1.<p> -> res<i+1>.<j>.shortcut.norm.<p>

The matching detectron2 config (``configs/detectron2/``) must say: ``INPUT.FORMAT: "RGB"``,
``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` = ImageNet statistics x 255 (:data:`PIXEL_MEAN`,
:data:`PIXEL_STD`; the same normalisation as ``backbones.InputAdapter`` on [0, 1] images), and
``MODEL.RESNETS.STRIDE_IN_1X1: False`` (torchvision puts the stride in the 3x3 convolution).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from cxrkit.errors import DataError
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD

PIXEL_MEAN = tuple(round(m * 255, 3) for m in IMAGENET_MEAN)  # (123.675, 116.28, 103.53)
PIXEL_STD = tuple(round(s * 255, 3) for s in IMAGENET_STD)  # (58.395, 57.12, 57.375)

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# (torchvision pattern, detectron2 template) and the reverse; each key matches exactly one rule.
_TO_D2 = [
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN}$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$"), r"res{L}.\2.conv\3.weight"),
    (re.compile(rf"^layer(\d)\.(\d+)\.bn(\d)\.{_BN}$"), r"res{L}.\2.conv\3.norm.\4"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$"), r"res{L}.\2.shortcut.weight"),
    (re.compile(rf"^layer(\d)\.(\d+)\.downsample\.1\.{_BN}$"), r"res{L}.\2.shortcut.norm.\3"),
]
_FROM_D2 = [
    (re.compile(r"^stem\.conv1\.weight$"), "conv1.weight"),
    (re.compile(rf"^stem\.conv1\.norm\.{_BN}$"), r"bn1.\1"),
    (re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.weight$"), r"layer{L}.\2.conv\3.weight"),
    (re.compile(rf"^res(\d)\.(\d+)\.conv(\d)\.norm\.{_BN}$"), r"layer{L}.\2.bn\3.\4"),
    (re.compile(r"^res(\d)\.(\d+)\.shortcut\.weight$"), r"layer{L}.\2.downsample.0.weight"),
    (re.compile(rf"^res(\d)\.(\d+)\.shortcut\.norm\.{_BN}$"), r"layer{L}.\2.downsample.1.\3"),
]


def _apply(rules: list, key: str, *, stage_offset: int, what: str) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            stage = str(int(match.group(1)) + stage_offset) if "{L}" in template else ""
            return match.expand(template.replace("{L}", stage))
    raise DataError(f"{key!r} is not a {what} ResNet parameter name")


def to_detectron2_name(key: str) -> str:
    """A torchvision ResNet state-dict key -> detectron2's name for it (DataError if unknown)."""
    return _apply(_TO_D2, key, stage_offset=1, what="torchvision")


def from_detectron2_name(key: str) -> str:
    """A detectron2 ResNet parameter name -> torchvision's key (the inverse of the above)."""
    return _apply(_FROM_D2, key, stage_offset=-1, what="detectron2")


def to_detectron2(state: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """torchvision ResNet weights (no ``fc``) -> ``{detectron2 name: float32 ndarray}``.

    BatchNorm ``num_batches_tracked`` counters are left out: detectron2's ``FrozenBatchNorm2d``
    has no such buffer (its loader would only warn about unused keys).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[to_detectron2_name(key)] = value.detach().float().cpu().contiguous().numpy()
    return out


def write_detectron2_checkpoint(
    state: Mapping[str, Tensor], path: str | Path, *, author: str = "cxrkit"
) -> Path:
    """Pickle ``state`` (torchvision names) as a detectron2 checkpoint at ``path``, atomically."""
    path = Path(path)
    payload = {"model": to_detectron2(state), "__author__": author, "matching_heuristics": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path
