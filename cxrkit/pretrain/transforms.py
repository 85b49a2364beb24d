"""The two augmented views Barlow Twins compares, built from lightly's and torchvision's transforms.

Input: a cache image, uint8 ndarray ``(H, W)``. Output: ``[view_a, view_b]``, each a ByteTensor
``[1, size, size]``: the views cross the worker-to-trainer boundary as uint8 grey (100 kB a pair at
224 px, against 1.2 MB as float32 RGB) and become float in ``[0, 1]`` on the device
(:func:`to_float_views`, called by :class:`cxrkit.pretrain.data.PretrainData` after the batch is
transferred), with the very scaling lightly's ``ToTensor`` applies. They are **not** normalised:
the model normalises with ImageNet statistics in :class:`cxrkit.models.backbones.InputAdapter`
(repeating the grey channel to RGB), exactly as stage two does with the exported backbone.

Recipes (``views.recipe``):

- ``byol`` (default, BarlowTwins-CXR): lightly's ``BYOLView1Transform`` / ``BYOLView2Transform``
  (random resized crop, horizontal flip, colour jitter, grey scale, asymmetric Gaussian blur,
  p = 1.0 / 0.1, and solarisation, p = 0.0 / 0.2), with their last step ``ToTensor`` replaced by
  ``PILToTensor`` (uint8). They run on the grey image in mode ``L``: on an image with R = G = B,
  colour jitter cannot tint (hue and saturation act on chroma, which is zero; brightness and
  contrast act alike on every channel; PIL's grey conversion of R = G = B is exact), so the views
  equal the first channel of the RGB pipeline pixel for pixel (tests/pretrain/test_views.py), at a
  third of the cost.
- ``cxr``: a radiograph recipe on the grey image: random resized crop, a small
  rotation/shift/zoom (``RandomAffine``), brightness and contrast jitter only (a radiograph has
  no hue or saturation), and BYOL's asymmetric blur. No solarisation (it inverts the densities
  that carry the diagnosis). **Horizontal flips are off by default**: the heart, aortic knob and
  gastric bubble sit on the patient's left, so a flipped film depicts dextrocardia / situs inversus
  and an invariance to it teaches the backbone to ignore laterality, which stage two's localiser
  needs; set ``views.hflip_prob`` to turn them on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import to_dtype

from cxrkit.pretrain.config import ViewsConfig

BYOL_HFLIP_PROB = 0.5
CXR_HFLIP_PROB = 0.0  # see the module docstring
# BYOL's asymmetry: view a always blurred, view b rarely (and only b is solarised in BYOL).
BLUR_PROBS = (1.0, 0.1)


class TwoViews:
    """``image: uint8 (H, W)`` -> ``[view_a(image), view_b(image)]`` (see the module docstring).

    Args:
        view_a, view_b: transforms from a PIL image to a Tensor[C, S, S] (uint8 for the recipes
            here; a transform ending in ``ToTensor`` gives float in [0, 1], which
            :func:`to_float_views` passes through).
        mode: the PIL mode the grey image is given to them in, ``"L"`` (default) or ``"RGB"``.
    """

    def __init__(
        self,
        *,
        view_a: Callable[[Image.Image], Tensor],
        view_b: Callable[[Image.Image], Tensor],
        mode: str = "L",
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.view_a, self.view_b, self.mode = view_a, view_b, mode

    def __call__(self, image: np.ndarray) -> list[Tensor]:
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 (H, W) cache image, got {image.dtype} {image.shape}"
            )
        pil = Image.fromarray(image, mode="L")
        if self.mode == "RGB":
            pil = pil.convert("RGB")
        return [self.view_a(pil), self.view_b(pil)]


def _cxr_view(views: ViewsConfig, *, blur_prob: float, hflip_prob: float) -> Callable:
    return T.Compose(
        [
            T.RandomResizedCrop(size=views.size, scale=(views.min_scale, 1.0)),
            T.RandomAffine(
                degrees=views.rotation_degrees,
                translate=(views.translate, views.translate),
                scale=(1 - views.scale_jitter, 1 + views.scale_jitter),
            ),
            T.RandomHorizontalFlip(p=hflip_prob),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            GaussianBlur(sigmas=(0.1, 2.0), prob=blur_prob),
            T.PILToTensor(),  # uint8 on the wire (module docstring)
        ]
    )


def _uint8_output(view: Callable) -> Callable:
    """lightly's BYOL view with its final ``ToTensor`` swapped for ``PILToTensor`` (uint8)."""
    steps = list(view.transform.transforms)
    if type(steps[-1]).__name__ != "ToTensor":
        raise TypeError(
            f"expected lightly's BYOL view to end in ToTensor, found {type(steps[-1]).__name__}; "
            "this lightly version builds its views differently"
        )
    return T.Compose([*steps[:-1], T.PILToTensor()])


def to_float_views(views: list[Tensor]) -> list[Tensor]:
    """Views as they arrive on the device -> FloatTensor[B, C, S, S] in [0, 1].

    uint8 views are scaled to float32 by torchvision's ``to_dtype(scale=True)``, the very function
    lightly's ``ToTensor`` applies on the host, so the values are bit-identical to the float
    pipeline's; float views (tests, benchmarks, a custom transform) are returned unchanged.
    """
    return [to_dtype(v, torch.float32, scale=True) if v.dtype == torch.uint8 else v for v in views]


def build_view_transform(*, views: ViewsConfig) -> TwoViews:
    """The pair of views of ``views.recipe`` at ``views.size`` pixels, unnormalised."""
    if views.recipe == "byol":
        hflip = BYOL_HFLIP_PROB if views.hflip_prob is None else views.hflip_prob
        common = dict(input_size=views.size, min_scale=views.min_scale, hf_prob=hflip)
        # normalize=None: the model's InputAdapter normalises (module docstring)
        return TwoViews(
            view_a=_uint8_output(BYOLView1Transform(**common, normalize=None)),
            view_b=_uint8_output(BYOLView2Transform(**common, normalize=None)),
            mode="L",
        )
    hflip = CXR_HFLIP_PROB if views.hflip_prob is None else views.hflip_prob
    return TwoViews(
        view_a=_cxr_view(views, blur_prob=BLUR_PROBS[0], hflip_prob=hflip),
        view_b=_cxr_view(views, blur_prob=BLUR_PROBS[1], hflip_prob=hflip),
        mode="L",
    )
