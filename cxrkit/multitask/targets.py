"""Training targets: dilated-lesion reconstruction, location regions, screening labels.

Everything here is in cache pixels and works on whole batches (the dataset gives masks as
``FloatTensor[B, M, H, W]`` in {0, 1} with ``mask_known: FloatTensor[B, M]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrkit.data.records import Record
from cxrkit.eval.screening import reference_abnormal

# Regions are named from the patient's side: on a frontal radiograph the patient's right lies on the
# image's left (radiological convention), so image columns left of the midline are "right_*".
REGIONS = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)
NORMAL, DISEASE, OTHER = 0, 1, 2
THREE_CLASSES = ("normal", "disease", "other")
IGNORE = -100  # torch cross_entropy's default ignore_index


def dilate(masks: Tensor, *, kernel: int) -> Tensor:
    """Binary dilation with a ``kernel`` x ``kernel`` square of ones.

    Same result as ``cv2.dilate(mask, np.ones((kernel, kernel)))`` on each (H, W) plane (pixels
    beyond the border do not count), computed batch-wise as a stride-1 max pool.

    Args:
        masks: FloatTensor[..., H, W] with values in {0, 1}.
        kernel: odd side of the square structuring element, in pixels.

    Returns:
        FloatTensor of the same shape, in {0, 1}.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"dilation kernel must be a positive odd number, got {kernel}")
    if kernel == 1:
        return masks.clone()
    shape = masks.shape
    planes = masks.reshape(-1, 1, shape[-2], shape[-1])
    # max_pool2d pads with -inf, so a lesion at the border grows only inwards, as cv2.dilate does.
    out = F.max_pool2d(planes, kernel_size=kernel, stride=1, padding=kernel // 2)
    return out.reshape(shape)


def lesion_mask(masks: Tensor, known: Tensor, *, channels: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Union of the lesion masks in ``channels``.

    Args:
        masks: FloatTensor[B, M, H, W] in {0, 1}.
        known: FloatTensor[B, M], 1 where the image has that mask.
        channels: indices into M of the lesion masks to unite.

    Returns:
        ``(mask, mask_known)``: FloatTensor[B, 1, H, W] and FloatTensor[B] (1 when any of the
        channels is known for the image).
    """
    if not channels:
        raise ValueError("no lesion mask channels given")
    index = list(channels)
    sel = masks[:, index] * known[:, index, None, None]
    return sel.amax(dim=1, keepdim=True), known[:, index].amax(dim=1)


def reconstruction_target(
    image: Tensor,
    *,
    mode: str,
    lesion: Tensor | None = None,
    lesion_known: Tensor | None = None,
    dilation: int = 1,
) -> tuple[Tensor, Tensor]:
    """What the decoder must output, and which samples count.

    Args:
        image: FloatTensor[B, 1, H, W] in [0, 1].
        mode: ``"image"`` (KCR: the whole input) or ``"lesion"`` (thesis: image x dilated mask).
        lesion: FloatTensor[B, 1, H, W] in {0, 1}; needed for ``"lesion"``.
        lesion_known: FloatTensor[B]; samples with 0 contribute no reconstruction loss.
        dilation: odd kernel side in pixels for ``"lesion"``.

    Returns:
        ``(target, weight)``: FloatTensor[B, 1, H, W] and FloatTensor[B] in {0, 1}.
    """
    if mode == "image":
        return image, torch.ones(image.shape[0], dtype=image.dtype, device=image.device)
    if mode != "lesion":
        raise ValueError(f"reconstruction mode {mode!r} is not 'image' or 'lesion'")
    if lesion is None or lesion_known is None:
        raise ValueError("mode 'lesion' needs lesion and lesion_known")
    return image * dilate(lesion, kernel=dilation), lesion_known.to(image.dtype)


def _cell_edges(lo: float, hi: float, parts: int) -> list[tuple[float, float]]:
    # outer cells reach to infinity so a box lying outside the lung box still lands in a region
    cuts = [lo + (hi - lo) * i / parts for i in range(1, parts)]
    bounds = [-float("inf"), *cuts, float("inf")]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def location_labels(
    boxes: Tensor,
    *,
    width: int,
    height: int,
    lung: Tensor | None = None,
    min_overlap: float = 0.25,
) -> Tensor:
    """Which of :data:`REGIONS` hold the boxes.

    The frame is the bounding box of ``lung`` when it has any pixel, else the whole image; it is cut
    into two halves (patient right | left) and three thirds (upper, middle, lower). A box marks each
    cell holding at least ``min_overlap`` of its area, and always the cell of its centre.

    Args:
        boxes: FloatTensor[N, 4] x1y1x2y2 in cache pixels; N may be 0 (all zeros returned).
        width, height: cache image size.
        lung: optional FloatTensor[H, W] in {0, 1}.
        min_overlap: fraction of a box's area.

    Returns:
        FloatTensor[6] in {0, 1}, ordered as :data:`REGIONS`.
    """
    out = torch.zeros(len(REGIONS))
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    if lung is not None and bool(lung.any()):
        ys, xs = torch.nonzero(lung > 0.5, as_tuple=True)
        x0, x1 = float(xs.min()), float(xs.max()) + 1
        y0, y1 = float(ys.min()), float(ys.max()) + 1
    columns = _cell_edges(x0, x1, 2)  # image-left half = patient's right
    rows = _cell_edges(y0, y1, 3)
    for bx1, by1, bx2, by2 in boxes.reshape(-1, 4).tolist():
        area = max(bx2 - bx1, 1e-6) * max(by2 - by1, 1e-6)
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        for c, (cl, cr) in enumerate(columns):
            for r, (rt, rb) in enumerate(rows):
                inter_w = max(0.0, min(bx2, cr) - max(bx1, cl))
                inter_h = max(0.0, min(by2, rb) - max(by1, rt))
                centre_in = cl <= cx < cr and rt <= cy < rb
                if centre_in or inter_w * inter_h / area >= min_overlap:
                    out[c * 3 + r] = 1.0
    return out


def is_abnormal(record: Record) -> int | None:
    """1 (abnormal), 0 (normal) or None (no label): the reference of ``cxrkit eval screening``.

    Any finding labelled 1 other than "No Finding" makes an image abnormal; "No Finding" = 1 or
    every label 0 makes it normal (:func:`cxrkit.eval.screening.reference_abnormal`).
    """
    reference = reference_abnormal(record)
    return None if reference is None else int(reference)


def three_class_label(record: Record, *, members: Sequence[str]) -> int:
    """The screening target of one disease: normal / this disease / another disease.

    ``members`` are the label names making up the disease (e.g. ``["Nodule", "Mass"]``). Returns
    :data:`DISEASE` (any member labelled 1), :data:`NORMAL` (a normal image, see
    :func:`is_abnormal`), :data:`OTHER` (abnormal with every member labelled 0) or :data:`IGNORE`
    when the labels cannot tell (abnormal but the disease unknown, or nothing labelled).
    """
    if any(record.labels.get(m) == 1 for m in members):
        return DISEASE
    abnormal = is_abnormal(record)
    if abnormal is None:
        return IGNORE
    if abnormal == 0:
        return NORMAL
    return OTHER if all(record.labels.get(m) == 0 for m in members) else IGNORE
