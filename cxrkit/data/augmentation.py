"""Training augmentation for chest X-rays, applied to image, masks and boxes together.

An albumentations ``Compose`` runs on the uint8 cache image with its masks and pascal_voc boxes
(label field :data:`BOX_LABEL_FIELD`) *before* conversion to tensors. Afterwards boxes are clipped
to the image and a box narrower or shorter than :data:`MIN_AUGMENTED_BOX_SIDE` cache pixels is
dropped with its label: it was pushed (almost) out of the image and no longer shows its lesion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A  # cxrkit/__init__.py has already turned off its update check
import cv2
import numpy as np

from cxrkit.errors import ConfigError

BOX_LABEL_FIELD = "box_labels"
"""Name of the albumentations label field that carries box identities through augmentation."""

MIN_AUGMENTED_BOX_SIDE = 1.0
"""Boxes narrower or shorter than this (cache pixels) after augmentation are dropped."""


@dataclass(frozen=True)
class _Strength:
    scale: float  # +- relative zoom
    translate: float  # +- fraction of the side, per axis
    rotate: float  # +- degrees
    intensity: float  # +- brightness and contrast
    p: float  # probability of each transform


_STRENGTHS = {
    "light": _Strength(scale=0.05, translate=0.03, rotate=5.0, intensity=0.1, p=0.5),
    "strong": _Strength(scale=0.15, translate=0.08, rotate=10.0, intensity=0.25, p=0.8),
}
_KINDS = ("classification", "detection")


TRANSFORMS = (
    "hflip",
    "affine",
    "shift",
    "rotate",
    "brightness_contrast",
    "gamma",
    "sharpen",
    "blur",
    "noise",
)
"""The named transforms of :func:`default_augment` (``transforms=[...]``), each one albumentations
transform:

- ``hflip``: horizontal flip, p = 0.5 (not gated by the strength's ``p``).
- ``affine``: zoom, shift and rotation together (the default jitter).
- ``shift``: translation only; ``rotate``: rotation only (the screening thesis lists them
  separately, without zoom).
- ``brightness_contrast``: brightness and contrast.
- ``gamma``: gamma correction; ``sharpen``: unsharp-style sharpening; ``blur``: Gaussian blur;
  ``noise``: additive Gaussian noise.

Magnitudes come from the strength (``light`` / ``strong``); each transform except ``hflip`` fires
with the strength's probability.
"""

DEFAULT_TRANSFORMS = ("affine", "brightness_contrast")
"""What :func:`default_augment` applies when ``transforms`` is not given (cxrkit's choice)."""


def default_augment(
    *,
    kind: str,
    size: int,
    strength: str = "light",
    hflip: bool = False,
    transforms: Sequence[str] | None = None,
) -> A.Compose:
    """The training augmentation for chest X-rays.

    By default small affine jitter (zoom, shift, rotation; zero fill) and brightness/contrast, then
    a resize to ``size x size``; ``transforms`` names another list (:data:`TRANSFORMS`). Grayscale
    throughout: no hue, saturation or colour jitter. Boxes go through as pascal_voc with label
    field :data:`BOX_LABEL_FIELD` and are clipped; masks follow the image with nearest
    interpolation (intensity transforms leave masks and boxes alone).

    Args:
        kind: ``"classification"`` or ``"detection"``. Detection rotates half as much, bounds
            rotated boxes by the inscribed ellipse (tighter than the rotated corners) and drops a
            box with under a quarter of its area left in the image.
        size: output side in pixels. Use the cache's side (``data.preprocess.size``) so that boxes
            stay in cache pixels; a smaller side trains at a lower resolution than the cache.
        strength: ``"light"`` or ``"strong"``: the magnitudes and probability.
        hflip: add a random horizontal flip (p = 0.5) in front of ``transforms``. Off by
            default: a chest X-ray is not mirror-symmetric (heart and aortic arch on the left,
            laterality markers), so a flipped film is an anatomically impossible image and turns
            left-sided findings into right-sided ones; papers that flip say so in their config.
        transforms: names from :data:`TRANSFORMS`, applied in this order (default
            :data:`DEFAULT_TRANSFORMS`); ``["hflip"]`` is a flip and nothing else, ``[]`` only the
            resize.

    Raises:
        ConfigError: unknown ``kind``, ``strength`` or transform, or ``size < 16``.
    """
    if kind not in _KINDS:
        raise ConfigError(f"augmentation kind {kind!r} is not one of {_KINDS}")
    if strength not in _STRENGTHS:
        raise ConfigError(f"augmentation strength {strength!r} is not one of {tuple(_STRENGTHS)}")
    if size < 16:
        raise ConfigError(f"augmentation size must be at least 16 pixels, got {size}")
    names = list(DEFAULT_TRANSFORMS if transforms is None else transforms)
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ConfigError(
            f"augmentation transform {unknown[0]!r} is not one of {', '.join(TRANSFORMS)}"
        )
    if hflip and "hflip" not in names:
        names.insert(0, "hflip")
    s = _STRENGTHS[strength]
    detection = kind == "detection"
    rotate = s.rotate / 2 if detection else s.rotate
    geometry = {
        "border_mode": cv2.BORDER_CONSTANT,
        "fill": 0,
        "fill_mask": 0,
        "rotate_method": "ellipse" if detection else "largest_box",
        "p": s.p,
    }
    shift = {"x": (-s.translate, s.translate), "y": (-s.translate, s.translate)}
    factories = {
        "hflip": lambda: A.HorizontalFlip(p=0.5),
        "affine": lambda: A.Affine(
            scale=(1 - s.scale, 1 + s.scale),
            translate_percent=shift,
            rotate=(-rotate, rotate),
            **geometry,
        ),
        "shift": lambda: A.Affine(translate_percent=shift, **geometry),
        "rotate": lambda: A.Affine(rotate=(-rotate, rotate), **geometry),
        "brightness_contrast": lambda: A.RandomBrightnessContrast(
            brightness_limit=s.intensity, contrast_limit=s.intensity, p=s.p
        ),
        # gamma in percent: 100 +- 100 x intensity
        "gamma": lambda: A.RandomGamma(
            gamma_limit=(100 * (1 - s.intensity), 100 * (1 + s.intensity)), p=s.p
        ),
        "sharpen": lambda: A.Sharpen(alpha=(0.1, 0.1 + s.intensity), lightness=(1.0, 1.0), p=s.p),
        "blur": lambda: A.GaussianBlur(blur_limit=(3, 5), p=s.p),
        # std as a fraction of the uint8 range: 0.1 x intensity (2.5 grey levels when light)
        "noise": lambda: A.GaussNoise(std_range=(0.0, 0.1 * s.intensity), p=s.p),
    }
    pipeline: list[Any] = [factories[n]() for n in names]
    pipeline.append(A.Resize(height=size, width=size))
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=[BOX_LABEL_FIELD],
        clip=True,
        # Detection: a lesion with under a quarter of its box left in view is no longer a fair
        # positive. Classification keeps every box (they are auxiliary targets there).
        min_visibility=0.25 if detection else 0.0,
        filter_invalid_bboxes=True,
    )
    return A.Compose(pipeline, bbox_params=bbox_params)


def check_augment(augment: Any, *, needs_boxes: bool, dataset: str) -> None:
    if augment is None:
        return
    if not isinstance(augment, A.Compose):
        raise ConfigError(
            f"{dataset}: augment must be an albumentations Compose (e.g. "
            f"augmentation.default_augment(...)), got {type(augment).__name__}"
        )
    if not needs_boxes:
        return
    processor = augment.processors.get("bboxes")
    params = getattr(processor, "params", None)
    if (
        params is None
        or params.format != "pascal_voc"
        or BOX_LABEL_FIELD not in (params.label_fields or ())
    ):
        raise ConfigError(
            f"{dataset}: the records have boxes, so augment needs "
            f"bbox_params=A.BboxParams(format='pascal_voc', label_fields=[{BOX_LABEL_FIELD!r}], "
            "clip=True) to move them with the image"
        )


def apply_augment(
    augment: A.Compose, *, image: np.ndarray, masks: list[np.ndarray], boxes: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Augment image, masks and boxes together. Returns them and, per kept box, its input index."""
    height, width = image.shape
    inputs: dict[str, Any] = {"image": image}
    if masks:
        inputs["masks"] = masks
    has_box_processor = "bboxes" in augment.processors
    if has_box_processor:
        # Mapped boxes can pass the border by float rounding, which albumentations rejects.
        inputs["bboxes"] = clip_boxes(boxes, width=width, height=height)
        inputs[BOX_LABEL_FIELD] = np.arange(len(boxes), dtype=np.int64)
    elif len(boxes):
        raise ConfigError(f"augment has no bbox_params but the image has {len(boxes)} boxes")
    out = augment(**inputs)
    image = out["image"]
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8):
        raise ConfigError(
            "augment must return the image as a uint8 array (leave out Normalize/ToTensorV2: the "
            f"dataset converts to tensors), got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    new_masks = [np.asarray(m) for m in out["masks"]] if masks else []
    if not has_box_processor:
        return image, new_masks, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    index = np.asarray(out[BOX_LABEL_FIELD], dtype=np.int64).reshape(-1)
    boxes = clip_boxes(boxes, width=image.shape[1], height=image.shape[0])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_AUGMENTED_BOX_SIDE) & (
        (boxes[:, 3] - boxes[:, 1]) >= MIN_AUGMENTED_BOX_SIDE
    )
    return image, new_masks, boxes[keep], index[keep]


def clip_boxes(boxes: np.ndarray, *, width: int, height: int) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out
