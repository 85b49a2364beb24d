"""Class activation maps for each predicted box (pytorch-grad-cam), drawn over the cache image.

BarlowTwins-CXR explained its detector with Ablation-CAM on the backbone's ``res4`` stage
(torchvision ``layer3``): each of the layer's channels is zeroed in turn and the drop of the box's
score weights that channel. Grad-CAM (gradient-weighted channels) and EigenCAM (first principal
component of the activations, class-agnostic) are the cheaper alternatives. The target of every
map is one predicted box: pytorch-grad-cam's :class:`FasterRCNNBoxScoreTarget` scores how well the
(perturbed) model still finds that box (IoU + score when the label matches).

Maps and overlays are in **cache pixels** (the image the detector saw); the index written beside
them also gives each box in original pixels.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerFasterRCNN
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
from torch import Tensor, nn
from tqdm import tqdm

from cxrkit import io
from cxrkit.data.cache import Cache, item_key
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError

METHODS = ("ablation", "gradcam", "eigencam")
DEFAULT_LAYER = "backbone.body.layer3"  # BarlowTwins-CXR: res4 in detectron2's names
INDEX_FILE = "cams.csv"
INDEX_COLUMNS = ("image_id", "rank", "finding", "score", "x1", "y1", "x2", "y2", "file")


@dataclass
class CamConfig:
    """The settings of :func:`explain` as a protocol file states them
    (``configs/barlowtwins_cxr/cam.yaml``; ``explain(..., **dataclasses.asdict(cfg))``)."""

    method: str = "ablation"
    target_layer: str = DEFAULT_LAYER
    score_thresh: float = 0.3  # boxes scoring below get no CAM
    top_k: int = 3  # CAMs per image, best boxes first
    ablation_ratio: float = 1.0  # fraction of the layer's channels Ablation-CAM ablates
    batch_size: int = 32  # ablated copies per forward pass

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.score_thresh <= 1 or self.top_k < 1 or self.batch_size < 1:
            raise ValueError("score_thresh must be in [0, 1], top_k and batch_size >= 1")
        if not 0 < self.ablation_ratio <= 1:
            raise ValueError(f"ablation_ratio must be in (0, 1], got {self.ablation_ratio}")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of ``model`` at dotted path ``name`` (e.g. ``backbone.body.layer3``).

    ``backbone`` (the FPN, whose output is a dict of pyramid levels) is accepted too: its maps are
    resized to the coarsest level and stacked, as in pytorch-grad-cam's Faster R-CNN tutorial.

    Raises:
        ConfigError: no such submodule; the message lists the backbone's stages.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        stages = [n for n in modules if n.count(".") <= 2 and n.startswith("backbone")]
        raise ConfigError(f"CAM target layer {name!r} is not in the detector; try one of {stages}")
    return modules[name]


@contextlib.contextmanager
def _gradients_everywhere(model: nn.Module) -> Iterator[None]:
    # Grad-CAM needs the target layer's output to require grad; with frozen stages (or every
    # stage frozen) it would not, so every parameter is switched on for the duration.
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def box_cams(
    model: nn.Module,
    image: Tensor,
    *,
    boxes: Tensor,
    labels: Tensor,
    method: str = "ablation",
    target_layer: str = DEFAULT_LAYER,
    ablation_ratio: float = 1.0,
    batch_size: int = 32,
) -> np.ndarray:
    """One class activation map per box.

    Args:
        model: a detector from :func:`cxrkit.finetune.model.build_detector` (put in eval mode).
        image: ``FloatTensor[1 or 3, H, W]`` in [0, 1], cache pixels, on the model's device.
        boxes: ``FloatTensor[K, 4]`` x1y1x2y2 in cache pixels, boxes the model predicted.
        labels: ``Int64Tensor[K]``, their labels (1..num_classes).
        method: ``ablation``, ``gradcam`` or ``eigencam``.
        target_layer: dotted module path (see :func:`resolve_layer`).
        ablation_ratio: fraction of channels Ablation-CAM ablates (1.0: all, the paper's method;
            below 1, pytorch-grad-cam keeps the ``2 * ratio`` most and least salient channels).
        batch_size: ablated copies of the image per forward pass.

    Returns:
        ``float32[K, H, W]`` in [0, 1], each map normalised to its own maximum.
    """
    if method not in METHODS:
        raise ConfigError(f"CAM method must be one of {METHODS}, got {method!r}")
    if not 0 < ablation_ratio <= 1:
        raise ConfigError(f"ablation_ratio must be in (0, 1], got {ablation_ratio}")
    layer = resolve_layer(model, target_layer)
    fpn = target_layer == "backbone"
    reshape = fasterrcnn_reshape_transform if fpn else None
    model.eval()
    if method == "ablation":
        cam = AblationCAM(
            model,
            [layer],
            reshape_transform=reshape,
            ablation_layer=AblationLayerFasterRCNN() if fpn else AblationLayer(),
            batch_size=batch_size,
            ratio_channels_to_ablate=ablation_ratio,
        )
    elif method == "gradcam":
        cam = GradCAM(model, [layer], reshape_transform=reshape)
    else:
        cam = EigenCAM(model, [layer], reshape_transform=reshape)
    maps = []
    grads = _gradients_everywhere(model) if method == "gradcam" else contextlib.nullcontext()
    # pytorch-grad-cam divides by each channel's maximum when choosing channels to ablate; an
    # all-zero channel gives 0/0, ranked last anyway
    with cam, grads, np.errstate(invalid="ignore", divide="ignore"):
        for box, label in zip(boxes, labels, strict=True):
            target = FasterRCNNBoxScoreTarget(
                labels=[int(label)], bounding_boxes=[box.detach().cpu().numpy()]
            )
            maps.append(cam(input_tensor=image[None], targets=[target])[0])
    height, width = image.shape[-2:]
    return np.stack(maps).astype(np.float32) if maps else np.zeros((0, height, width), np.float32)


def draw_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    box: Sequence[float],
    caption: str,
    min_side: int = 512,
) -> np.ndarray:
    """The map as a JET heat map over the image, with the box and its caption drawn.

    Args:
        image: uint8 (H, W) grey image (cache pixels).
        cam: float (H, W) in [0, 1].
        box: x1y1x2y2 in the same pixels.
        caption: text written above the box (finding and score).
        min_side: a small image is first enlarged by the smallest whole factor ``f`` that makes its
            longer side at least this, so the caption stays legible (box scaled by ``f`` too).

    Returns:
        uint8 (f * H, f * W, 3), BGR (for ``cv2.imwrite``).
    """
    factor = max(1, math.ceil(min_side / max(image.shape)))
    if factor > 1:
        size = (image.shape[1] * factor, image.shape[0] * factor)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        cam = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        box = [v * factor for v in box]
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32) / 255.0
    out = show_cam_on_image(rgb, cam, use_rgb=False)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    thickness = max(1, image.shape[0] // 256)
    cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thickness)
    scale = max(0.3, image.shape[0] / 640)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), _ = cv2.getTextSize(caption, font, scale, thickness)
    # above the box when there is room, below its top edge otherwise; never past the right edge
    x = max(0, min(x1, out.shape[1] - text_w))
    y = y1 - 3 if y1 - 3 >= text_h else min(out.shape[0] - 1, y1 + text_h + 3)
    cv2.putText(
        out,
        caption,
        (x, y),
        font,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
    return out


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    io.atomic_write(path, data.tobytes())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "finding"


def explain(
    model: nn.Module,
    *,
    records: Sequence[Record],
    cache: Cache,
    classes: Sequence[str],
    out_dir: str | Path,
    method: str = "ablation",
    target_layer: str = DEFAULT_LAYER,
    score_thresh: float = 0.3,
    top_k: int = 3,
    ablation_ratio: float = 1.0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Write a CAM overlay PNG for each of an image's ``top_k`` boxes scoring ``>= score_thresh``.

    Files: ``out_dir/<image key>_<rank>_<finding>.png`` and ``out_dir/cams.csv`` (the returned
    index: image_id, rank, finding, score, box x1y1x2y2 in **original** pixels, file name).
    Images without such a box get no file.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    rows = []
    for record in tqdm(records, desc=f"{method} CAM", unit="image", disable=not progress):
        pixels = cache.load(record.image_id)
        image = torch.from_numpy(pixels).float().div(255.0)[None].to(device)
        with torch.no_grad():
            found = model([image])[0]
        keep = found["scores"] >= score_thresh
        boxes = found["boxes"][keep][:top_k]
        labels = found["labels"][keep][:top_k]
        scores = found["scores"][keep][:top_k]
        if len(boxes) == 0:
            continue
        maps = box_cams(
            model,
            image,
            boxes=boxes,
            labels=labels,
            method=method,
            target_layer=target_layer,
            ablation_ratio=ablation_ratio,
            batch_size=batch_size,
        )
        original = cache.geometry(record.image_id).boxes_to_original(boxes.cpu().numpy())
        for rank, (box, label, score, cam) in enumerate(
            zip(boxes.cpu().numpy(), labels.tolist(), scores.tolist(), maps, strict=True)
        ):
            finding = classes[label - 1]
            name = f"{item_key(record.image_id)}_{rank}_{_slug(finding)}.png"
            caption = f"{finding} {score:.2f}"
            _write_png(out_dir / name, draw_overlay(pixels, cam, box=box, caption=caption))
            x1, y1, x2, y2 = (float(v) for v in original[rank])
            rows.append((record.image_id, rank, finding, float(score), x1, y1, x2, y2, name))
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    io.atomic_write(out_dir / INDEX_FILE, lambda tmp: index.to_csv(tmp, index=False))
    return index
