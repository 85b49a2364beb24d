"""The two augmented views Barlow Twins compares, built from lightly's and torchvision's transforms.

Input: a cache image, uint8 ndarray ``(H, W)``. Output: ``[view_a, view_b]``, each a FloatTensor
``[C, size, size]`` in ``[0, 1]`` - **not** normalised. The model normalises with ImageNet
statistics in :class:`cxrkit.models.backbones.InputAdapter`, exactly as stage two does with the
exported backbone, so pretraining and fine-tuning see the same input statistics.

Recipes (``views.recipe``):

- ``byol`` (default, BarlowTwins-CXR): lightly's ``BYOLView1Transform`` / ``BYOLView2Transform``
  on the image as RGB (R = G = B): random resized crop, horizontal flip, colour jitter, grey scale,
  asymmetric Gaussian blur (p = 1.0 / 0.1) and solarisation (p = 0.0 / 0.2). ``C = 3``; colour
  jitter may tint the grey image slightly, as in the paper.
- ``cxr``: a radiograph recipe on the grey image (``C = 1``): random resized crop, a small
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
from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from PIL import Image
from torch import Tensor

from cxrkit.pretrain.config import ViewsConfig

BYOL_HFLIP_PROB = 0.5
CXR_HFLIP_PROB = 0.0  # see the module docstring
# BYOL's asymmetry: view a always blurred, view b rarely (and only b is solarised in BYOL).
BLUR_PROBS = (1.0, 0.1)


class TwoViews:
    """``image: uint8 (H, W)`` -> ``[view_a(image), view_b(image)]`` (see the module docstring).

    Args:
        view_a, view_b: transforms from a PIL image to FloatTensor[C, S, S] in [0, 1].
        mode: the PIL mode the grey image is given to them in, ``"RGB"`` or ``"L"``.
    """

    def __init__(
        self,
        *,
        view_a: Callable[[Image.Image], Tensor],
        view_b: Callable[[Image.Image], Tensor],
        mode: str,
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
            T.ToTensor(),
        ]
    )


def build_view_transform(*, views: ViewsConfig) -> TwoViews:
    """The pair of views of ``views.recipe`` at ``views.size`` pixels, unnormalised."""
    if views.recipe == "byol":
        hflip = BYOL_HFLIP_PROB if views.hflip_prob is None else views.hflip_prob
        common = dict(input_size=views.size, min_scale=views.min_scale, hf_prob=hflip)
        # normalize=None: the model's InputAdapter normalises (module docstring)
        return TwoViews(
            view_a=BYOLView1Transform(**common, normalize=None),
            view_b=BYOLView2Transform(**common, normalize=None),
            mode="RGB",
        )
    hflip = CXR_HFLIP_PROB if views.hflip_prob is None else views.hflip_prob
    return TwoViews(
        view_a=_cxr_view(views, blur_prob=BLUR_PROBS[0], hflip_prob=hflip),
        view_b=_cxr_view(views, blur_prob=BLUR_PROBS[1], hflip_prob=hflip),
        mode="L",
    )
