"""Class activation maps for each predicted box (pytorch-grad-cam), drawn over the cache image.

BarlowTwins-CXR explained its detector with Ablation-CAM on the backbone's ``res4`` stage
(torchvision ``layer3``): each of the layer's channels is zeroed in turn and the drop of the box's
score weights that channel. Grad-CAM (gradient-weighted channels) and EigenCAM (first principal
component of the activations, class-agnostic) are the cheaper alternatives. The target of every
map is one predicted box: pytorch-grad-cam's :class:`FasterRCNNBoxScoreTarget` scores how well the
(perturbed) model still finds that box (IoU + score when the label matches).

Maps, overlays and scores are in **cache pixels** (the image the detector saw); the index written
beside them (``cams.csv``) also gives each box in original pixels, and scores every map with
:mod:`cxrkit.eval.cam_scores` (energy inside the box, pointing game) against the predicted box and
the ground-truth boxes of its class. Which boxes get a map: :func:`select_boxes` (every class
first, then by score) or, to compare two detectors on the same images, :func:`cover_classes`.
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

from cxrkit import io
from cxrkit.data.cache import Cache, item_key
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.eval import cam_scores
from cxrkit.progress import track

METHODS = ("ablation", "gradcam", "eigencam")
DEFAULT_LAYER = "backbone.body.layer3"  # BarlowTwins-CXR: res4 in detectron2's names
INDEX_FILE = "cams.csv"
INDEX_COLUMNS = (
    "image_id",
    "rank",
    "finding",
    "score",
    "x1",
    "y1",
    "x2",
    "y2",  # original pixels
    "cache_x1",
    "cache_y1",
    "cache_x2",
    "cache_y2",  # cache pixels, the frame of the map and its scores
    "resolution",
    "n_gt",
    *cam_scores.SCORE_COLUMNS,
    "file",
)


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


PREDICTED_COLOUR = (255, 255, 255)  # BGR white: the box the map explains
GT_COLOUR = (255, 0, 255)  # BGR magenta: ground truth (no JET colour, so it stays visible)
LEGEND = "white: predicted  magenta: ground truth  (cache px)"


def _put_text(
    out: np.ndarray, text: str, corner: Sequence[int], colour: tuple, scale: float, thickness: int
) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    x1, y1 = corner[0], corner[1]
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    # above the box when there is room, below its top edge otherwise; never past the right edge
    x = max(0, min(x1, out.shape[1] - text_w))
    y = y1 - 3 if y1 - 3 >= text_h else min(out.shape[0] - 1, y1 + text_h + 3)
    cv2.putText(out, text, (x, y), font, scale, colour, thickness, cv2.LINE_AA)


def draw_boxes(
    out: np.ndarray,
    *,
    predicted: Sequence[tuple[Sequence[float], str]] = (),
    ground_truth: Sequence[tuple[Sequence[float], str]] = (),
    factor: int = 1,
    legend: str | None = None,
) -> np.ndarray:
    """Draw boxes onto a BGR image in place: ground truth magenta (``GT <text>``), predictions
    white (their text, e.g. finding and score) on top; returns ``out``.

    Args:
        out: uint8 (H, W, 3) BGR.
        predicted, ground_truth: ``(x1y1x2y2, text)`` in the pixels of ``out`` divided by
            ``factor`` (the image was enlarged by ``factor`` after the boxes were measured).
        legend: a line written at the bottom left (e.g. :data:`LEGEND`); None: no legend.
    """
    thickness = max(1, out.shape[0] // 256)
    scale = max(0.3, out.shape[0] / 640)
    drawn = [(b, f"GT {text}", GT_COLOUR) for b, text in ground_truth]
    drawn += [(b, text, PREDICTED_COLOUR) for b, text in predicted]
    for b, text, colour in drawn:
        x1, y1, x2, y2 = (int(round(v * factor)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        _put_text(out, text, (x1, y1), colour, scale, thickness)
    if legend:
        small = max(0.3, 0.75 * scale)
        cv2.putText(
            out,
            legend,
            (2, out.shape[0] - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            small,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def draw_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    box: Sequence[float],
    caption: str,
    gt_boxes: Sequence[tuple[Sequence[float], str]] = (),
    legend: str | None = None,
    min_side: int = 512,
) -> np.ndarray:
    """The map as a JET heat map over the image, with the predicted and ground-truth boxes.

    Args:
        image: uint8 (H, W) grey image (cache pixels).
        cam: float (H, W) in [0, 1].
        box: the predicted box, x1y1x2y2 in the same pixels, drawn white with ``caption``.
        caption: text written above the box (finding and score).
        gt_boxes: ``(x1y1x2y2, finding)`` ground-truth boxes in the same pixels, drawn magenta
            with ``GT <finding>``.
        legend: a line written at the bottom left (e.g. :data:`LEGEND`); None: no legend.
        min_side: a small image is first enlarged by the smallest whole factor ``f`` that makes its
            longer side at least this, so the caption stays legible (boxes scaled by ``f`` too).

    Returns:
        uint8 (f * H, f * W, 3), BGR (for ``cv2.imwrite``).
    """
    factor = max(1, math.ceil(min_side / max(image.shape)))
    if factor > 1:
        size = (image.shape[1] * factor, image.shape[0] * factor)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        cam = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32) / 255.0
    out = show_cam_on_image(rgb, cam, use_rgb=False)
    return draw_boxes(
        out, predicted=[(box, caption)], ground_truth=gt_boxes, factor=factor, legend=legend
    )


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    io.atomic_write(path, data.tobytes())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "finding"


@dataclass(frozen=True)
class Candidate:
    """One detection that may get a CAM."""

    image_id: str
    rank: int  # 0 = the image's best-scoring detection
    label: int  # 1..num_classes
    score: float
    box: tuple[float, float, float, float]  # x1y1x2y2, cache pixels


def select_boxes(
    candidates: Sequence[Candidate],
    *,
    max_cams: int | None = None,
    max_images: int | None = None,
    per_image: int = 3,
) -> list[Candidate]:
    """The boxes to explain: every class first, then the best-scoring rest.

    Round one takes, for each class in the order of its best score, that class's best box that
    fits the limits; round two fills up with the remaining boxes by score. So a CAM set of a few
    images covers as many classes as the detections allow, instead of the first images' top class.

    Args:
        candidates: the detections (any order).
        max_cams: at most this many boxes (None: no limit).
        max_images: from at most this many images (None: no limit).
        per_image: at most this many boxes of one image.

    Returns:
        The chosen candidates, in the order chosen.
    """
    by_score = sorted(candidates, key=lambda c: (-c.score, c.image_id, c.rank))
    chosen: list[Candidate] = []
    taken: set[tuple[str, int]] = set()
    per: dict[str, int] = {}

    def fits(c: Candidate) -> bool:
        if (c.image_id, c.rank) in taken or per.get(c.image_id, 0) >= per_image:
            return False
        return c.image_id in per or max_images is None or len(per) < max_images

    def take(c: Candidate) -> None:
        chosen.append(c)
        taken.add((c.image_id, c.rank))
        per[c.image_id] = per.get(c.image_id, 0) + 1

    labels = list(dict.fromkeys(c.label for c in by_score))  # by their best score
    for label in labels:
        if max_cams is not None and len(chosen) >= max_cams:
            break
        first = next((c for c in by_score if c.label == label and fits(c)), None)
        if first is not None:
            take(first)
    for c in by_score:
        if max_cams is not None and len(chosen) >= max_cams:
            break
        if fits(c):
            take(c)
    return chosen


def cover_classes(records: Sequence[Record], *, n: int) -> list[Record]:
    """``n`` records with ground-truth boxes, chosen so that their boxes cover many classes.

    Model-independent (two detectors explained on these images are compared image by image):
    round one takes, class by class in order of first appearance, the first record with a box of
    a class not yet covered; round two fills up with the remaining records with boxes, in order.
    """
    with_boxes = [r for r in records if r.boxes]
    chosen: list[Record] = []
    covered: set[str] = set()
    for record in with_boxes:
        if len(chosen) >= n:
            break
        new = {b.finding for b in record.boxes} - covered
        if new:
            chosen.append(record)
            covered |= new
    ids = {r.image_id for r in chosen}
    chosen += [r for r in with_boxes if r.image_id not in ids][: max(0, n - len(chosen))]
    order = {r.image_id: k for k, r in enumerate(with_boxes)}
    return sorted(chosen, key=lambda r: order[r.image_id])


def _detect(
    model: nn.Module,
    records: Sequence[Record],
    *,
    cache: Cache,
    score_thresh: float,
    top_k: int,
    device: str | torch.device,
    progress: bool,
) -> list[Candidate]:
    found: list[Candidate] = []
    for record in track(records, desc="detect", unit="image", enabled=progress):
        image = torch.from_numpy(cache.load(record.image_id)).float().div(255.0)[None]
        with torch.no_grad():
            out = model([image.to(device)])[0]
        keep = out["scores"] >= score_thresh
        boxes, labels = out["boxes"][keep][:top_k], out["labels"][keep][:top_k]
        scores = out["scores"][keep][:top_k]
        for rank, (box, label, score) in enumerate(
            zip(boxes.cpu().tolist(), labels.tolist(), scores.tolist(), strict=True)
        ):
            found.append(Candidate(record.image_id, rank, int(label), float(score), tuple(box)))
    return found


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
    max_cams: int | None = None,
    max_images: int | None = None,
    ablation_ratio: float = 1.0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Write a CAM overlay PNG, with localisation scores, for the chosen boxes of ``records``.

    Every image's ``top_k`` boxes scoring ``>= score_thresh`` are candidates; with ``max_cams``
    / ``max_images``, :func:`select_boxes` picks among them so that several classes are covered.
    The ground truth is the records' boxes (pass fused records for fused ground truth): each
    overlay draws the predicted box (white) and every ground-truth box of the image (magenta), at
    cache resolution, and the map is scored by :func:`cxrkit.eval.cam_scores.score_cam` against
    the predicted box and against the ground-truth boxes of its class.

    Files: ``out_dir/<image key>_<rank>_<finding>.png`` and ``out_dir/cams.csv``, the returned
    index with one row per CAM (:data:`INDEX_COLUMNS`): image_id, rank (the box's place among the
    image's detections), finding, score, the box in **original** pixels (x1..y2) and in cache
    pixels (cache_x1..cache_y2), ``resolution`` (``cache``: maps, overlays and scores are in cache
    pixels), n_gt (ground-truth boxes of that class in the image), the four scores, file name.
    Images without a chosen box get no file.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    for name, limit in (("max_cams", max_cams), ("max_images", max_images)):
        if limit is not None and limit < 1:
            raise ConfigError(f"{name} must be >= 1 (or None for no limit), got {limit}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    candidates = _detect(
        model,
        records,
        cache=cache,
        score_thresh=score_thresh,
        top_k=top_k,
        device=device,
        progress=progress,
    )
    chosen = select_boxes(candidates, max_cams=max_cams, max_images=max_images, per_image=top_k)
    by_image: dict[str, list[Candidate]] = {}
    for c in chosen:
        by_image.setdefault(c.image_id, []).append(c)
    rows = []
    wanted = [r for r in records if r.image_id in by_image]
    for record in track(wanted, desc=f"{method} CAM", unit="image", enabled=progress):
        picked = sorted(by_image[record.image_id], key=lambda c: c.rank)
        rows += _explain_image(
            model,
            record,
            picked,
            cache=cache,
            classes=classes,
            out_dir=out_dir,
            method=method,
            target_layer=target_layer,
            ablation_ratio=ablation_ratio,
            batch_size=batch_size,
            device=device,
        )
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    io.atomic_write(out_dir / INDEX_FILE, lambda tmp: index.to_csv(tmp, index=False))
    return index


def _explain_image(
    model: nn.Module,
    record: Record,
    picked: Sequence[Candidate],
    *,
    cache: Cache,
    classes: Sequence[str],
    out_dir: Path,
    method: str,
    target_layer: str,
    ablation_ratio: float,
    batch_size: int,
    device: str | torch.device,
) -> list[tuple]:
    pixels = cache.load(record.image_id)
    image = torch.from_numpy(pixels).float().div(255.0)[None].to(device)
    boxes = torch.tensor([c.box for c in picked], dtype=torch.float32, device=device)
    labels = torch.tensor([c.label for c in picked], dtype=torch.int64, device=device)
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
    geometry = cache.geometry(record.image_id)
    # ground truth: original pixels -> cache pixels, the frame of the maps
    gt_cache = geometry.boxes_to_cache(
        np.array([[b.x1, b.y1, b.x2, b.y2] for b in record.boxes], dtype=np.float64)
    )
    gt = [(tuple(map(float, xy)), b.finding) for xy, b in zip(gt_cache, record.boxes, strict=True)]
    original = geometry.boxes_to_original(boxes.cpu().numpy())
    rows = []
    for c, cam, orig in zip(picked, maps, original, strict=True):
        finding = classes[c.label - 1]
        same = [xy for xy, name in gt if name == finding]
        scores = cam_scores.score_cam(cam, box=c.box, gt_boxes=same)
        name = f"{item_key(record.image_id)}_{c.rank}_{_slug(finding)}.png"
        overlay = draw_overlay(
            pixels, cam, box=c.box, caption=f"{finding} {c.score:.2f}", gt_boxes=gt, legend=LEGEND
        )
        _write_png(out_dir / name, overlay)
        rows.append(
            (
                record.image_id,
                c.rank,
                finding,
                c.score,
                *(float(v) for v in orig),
                *(float(v) for v in c.box),
                "cache",
                len(same),
                *(scores[k] for k in cam_scores.SCORE_COLUMNS),
                name,
            )
        )
    return rows
