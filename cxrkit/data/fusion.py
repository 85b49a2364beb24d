"""Reader-box fusion: several radiologists' boxes on one image become one set of boxes.

VinDr-CXR's training images were each read by three radiologists (readers R1..R17), who often box
the same lesion slightly differently. BarlowTwins-CXR merged them with weighted boxes fusion
(Solovyev et al., 2021; the ``ensemble-boxes`` package) before training; NMS (keep one of each
overlapping group) or keeping every reader's box are the alternatives. Every ground-truth box has
confidence 1 and every reader weight 1, so a WBF box is the plain average of its cluster.

Boxes go in and come out in **original pixels** (x1y1x2y2); ``ensemble-boxes`` wants them
normalised to [0, 1] by the image's width and height, which happens here and is undone on return.

One implementation for training (``cxrkit.finetune``) and evaluation (``cxrkit.eval``'s fused
ground truth), with one box order, so that both see the same boxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cxrkit.data.records import Box, Record
from cxrkit.errors import ConfigError, DataError

FUSED_READER = "fused"
METHODS = ("wbf", "nms", "none")


def fuse_boxes(
    boxes: Sequence[Box],
    *,
    width: int,
    height: int,
    method: str = "wbf",
    iou_thr: float = 0.5,
    skip_box_thr: float = 0.0,
) -> list[Box]:
    """Fuse one image's boxes across readers.

    Args:
        boxes: every reader's boxes of one image, original pixels; ``reader`` groups them
            (``""`` is one anonymous reader). Boxes of different findings never merge.
        width: image width in original pixels (for the [0, 1] normalisation).
        height: image height in original pixels.
        method: ``"wbf"`` (weighted boxes fusion), ``"nms"`` (of each group of boxes of one finding
            overlapping above ``iou_thr``, one is kept) or ``"none"`` (boxes returned unchanged).
        iou_thr: IoU above which two boxes of one finding belong to the same lesion.
        skip_box_thr: boxes with confidence below are dropped before fusion (all ground-truth
            boxes have confidence 1, so only a value of 1 or more drops anything).

    Returns:
        The fused boxes, original pixels, ``reader == "fused"`` (unchanged boxes for ``"none"``),
        sorted by finding then position so the result does not depend on the readers' order.
    """
    if method not in METHODS:
        raise ConfigError(f"fusion method must be 'wbf', 'nms' or 'none', got {method!r}")
    if not 0 < iou_thr <= 1:
        raise ConfigError(f"fusion iou_thr must lie in (0, 1], got {iou_thr}")
    if method == "none" or not boxes:
        return list(boxes)
    if width <= 0 or height <= 0:
        raise DataError(f"image size {width}x{height} is not positive")
    # imported here: ensemble-boxes pulls in numba, whose first import takes seconds
    from ensemble_boxes import nms, weighted_boxes_fusion

    findings = sorted({b.finding for b in boxes})
    label_of = {name: i for i, name in enumerate(findings)}
    readers = sorted({b.reader for b in boxes})
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for reader in readers:
        mine = [b for b in boxes if b.reader == reader]
        boxes_list.append(np.array([b.xyxy for b in mine], dtype=np.float64) / scale)
        scores_list.append(np.ones(len(mine)))
        labels_list.append(np.array([label_of[b.finding] for b in mine], dtype=np.float64))
    if method == "wbf":
        out_boxes, _, out_labels = weighted_boxes_fusion(
            boxes_list,
            scores_list,
            labels_list,
            weights=[1.0] * len(readers),
            iou_thr=iou_thr,
            skip_box_thr=skip_box_thr,
        )
    elif skip_box_thr > 1.0:
        # ensemble-boxes' NMS has no skip threshold; every ground-truth box has confidence 1
        return []
    else:
        out_boxes, _, out_labels = nms(boxes_list, scores_list, labels_list, iou_thr=iou_thr)
    pixels = np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4) * scale
    # the [0, 1] round trip can overshoot the border by a rounding error
    pixels[:, [0, 2]] = pixels[:, [0, 2]].clip(0, width)
    pixels[:, [1, 3]] = pixels[:, [1, 3]].clip(0, height)
    fused = [
        Box(
            finding=findings[int(label)],
            x1=float(x1),
            y1=float(y1),
            x2=float(x2),
            y2=float(y2),
            reader=FUSED_READER,
        )
        for (x1, y1, x2, y2), label in zip(pixels, out_labels, strict=True)
        if x1 < x2 and y1 < y2
    ]
    return sorted(fused, key=lambda b: (b.finding, b.xyxy))


def fuse_records(
    records: Sequence[Record],
    *,
    method: str = "wbf",
    iou_thr: float = 0.5,
    skip_box_thr: float = 0.0,
) -> list[Record]:
    """Copies of ``records`` whose boxes are fused across readers (see :func:`fuse_boxes`).

    The input records are not modified; labels, view, split and everything else are kept.
    """
    return [
        dataclasses.replace(
            record,
            boxes=fuse_boxes(
                record.boxes,
                width=record.width,
                height=record.height,
                method=method,
                iou_thr=iou_thr,
                skip_box_thr=skip_box_thr,
            ),
        )
        for record in records
    ]
