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

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from cxrkit import io
from cxrkit.errors import DataError
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD

PIXEL_MEAN = tuple(round(m * 255, 3) for m in IMAGENET_MEAN)  # (123.675, 116.28, 103.53)
PIXEL_STD = tuple(round(s * 255, 3) for s in IMAGENET_STD)  # (58.395, 57.12, 57.375)

# (torchvision name, detectron2 name): {i} is torchvision's stage (layer1..4), {I} detectron2's
# (res2..5, one more), {j} a block, {k} a convolution, {p} a BatchNorm parameter. Each key matches
# exactly one rule, in either direction.
_NAMES = [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.{p}", "stem.conv1.norm.{p}"),
    ("layer{i}.{j}.conv{k}.weight", "res{I}.{j}.conv{k}.weight"),
    ("layer{i}.{j}.bn{k}.{p}", "res{I}.{j}.conv{k}.norm.{p}"),
    ("layer{i}.{j}.downsample.0.weight", "res{I}.{j}.shortcut.weight"),
    ("layer{i}.{j}.downsample.1.{p}", "res{I}.{j}.shortcut.norm.{p}"),
]
_FIELDS = {
    "i": r"(?P<i>\d)",
    "I": r"(?P<I>\d)",
    "j": r"(?P<j>\d+)",
    "k": r"(?P<k>\d)",
    "p": r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)",
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[iIjkp]\})", template)
    return re.compile(
        "".join(_FIELDS[part[1]] if part.startswith("{") else re.escape(part) for part in parts)
    )


_RULES = [(_pattern(tv), _pattern(d2), tv, d2) for tv, d2 in _NAMES]


def _rename(key: str, *, to_d2: bool) -> str:
    for tv_pattern, d2_pattern, tv, d2 in _RULES:
        match = (tv_pattern if to_d2 else d2_pattern).fullmatch(key)
        if match:
            found = match.groupdict()
            if "i" in found:
                found["I"] = str(int(found["i"]) + 1)
            elif "I" in found:
                found["i"] = str(int(found["I"]) - 1)
            return (d2 if to_d2 else tv).format(**found)
    raise DataError(
        f"{key!r} is not a {'torchvision' if to_d2 else 'detectron2'} ResNet parameter name"
    )


def to_detectron2_name(key: str) -> str:
    """A torchvision ResNet state-dict key -> detectron2's name for it (DataError if unknown)."""
    return _rename(key, to_d2=True)


def from_detectron2_name(key: str) -> str:
    """A detectron2 ResNet parameter name -> torchvision's key (the inverse of the above)."""
    return _rename(key, to_d2=False)


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
    payload = {"model": to_detectron2(state), "__author__": author, "matching_heuristics": True}
    return io.atomic_write(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
