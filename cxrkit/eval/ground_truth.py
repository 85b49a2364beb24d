"""Detection ground truth from several readers' boxes: as given, one reader's, or fused.

VinDr-CXR has three radiologists' boxes per training image; a lesion then appears up to three times.
Scoring against every reader's box (``all``, the default) counts each copy as a lesion to find;
``fused`` merges the readers first with weighted boxes fusion (ensemble-boxes), as BarlowTwins-CXR
did for its detector; a reader id keeps that reader's boxes only.

The finetune stage owns the training-time fusion (``cxrkit.finetune.fusion``); this module keeps the
minimal version the evaluation needs so that eval does not depend on a training stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrkit.data.records import Box, Record
from cxrkit.errors import ConfigError, DataError

FUSION_METHODS = ("wbf", "nms", "none")
FUSED_READER = "fused"


def fuse_reader_boxes(
    boxes: Sequence[Box],
    *,
    width: int,
    height: int,
    iou_thr: float = 0.5,
    method: str = "wbf",
) -> list[Box]:
    """Merge boxes of several readers that mark the same lesion.

    Each reader is one "model" of ensemble-boxes; every box has confidence 1 and ``skip_box_thr`` is
    0, so no box is discarded for its score. Boxes are normalised by ``width`` / ``height`` for the
    library and mapped back to original pixels. Boxes of different findings are never merged.

    Args:
        boxes: original-pixel boxes (x1y1x2y2) of one image, any readers.
        width, height: the image size in pixels.
        iou_thr: boxes overlapping more than this (same finding) are merged.
        method: ``wbf`` (weighted boxes fusion: coordinates averaged), ``nms`` (one of the
            overlapping boxes is kept) or ``none`` (boxes returned unchanged).

    Returns:
        The fused boxes, reader ``"fused"`` (unchanged boxes keep their reader for ``none``); the
        order is by finding name then by the library's output order.
    """
    if method not in FUSION_METHODS:
        raise ConfigError(f"fusion method {method!r} is not one of {FUSION_METHODS}")
    if not 0 < iou_thr <= 1:
        raise ConfigError(f"fusion iou_thr must lie in (0, 1], got {iou_thr}")
    if width <= 0 or height <= 0:
        raise DataError(f"image size {width}x{height} is not positive")
    if method == "none" or not boxes:
        return list(boxes)
    # imported here: ensemble-boxes pulls in numba (and its nms compiles on first use, seconds)
    from ensemble_boxes import nms, weighted_boxes_fusion

    findings = sorted({b.finding for b in boxes})
    readers = sorted({b.reader for b in boxes})
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for reader in readers:
        mine = [b for b in boxes if b.reader == reader]
        xyxy = np.array([b.xyxy for b in mine], dtype=np.float64) / scale
        boxes_list.append(np.clip(xyxy, 0.0, 1.0))
        scores_list.append(np.ones(len(mine)))
        labels_list.append(np.array([findings.index(b.finding) for b in mine]))
    if method == "wbf":
        fused, _, labels = weighted_boxes_fusion(
            boxes_list, scores_list, labels_list, iou_thr=iou_thr, skip_box_thr=0.0
        )
    else:
        fused, _, labels = nms(boxes_list, scores_list, labels_list, iou_thr=iou_thr)
    fused = np.asarray(fused, dtype=np.float64) * scale
    out = [
        Box(
            finding=findings[int(label)],
            x1=float(x1),
            y1=float(y1),
            x2=float(x2),
            y2=float(y2),
            reader=FUSED_READER,
        )
        for (x1, y1, x2, y2), label in zip(fused, labels, strict=True)
    ]
    return sorted(out, key=lambda b: b.finding)


def ground_truth_boxes(
    records: Sequence[Record], *, gt_reader: str = "all", iou_thr: float = 0.5
) -> dict[str, list[Box]]:
    """The ground-truth boxes of each image, keyed by image id.

    Args:
        records: manifest records.
        gt_reader: ``all`` (every reader's box as given), ``fused`` (weighted boxes fusion of the
            readers, :func:`fuse_reader_boxes`) or a reader id (only that reader's boxes; an image
            that reader did not annotate has no box).
        iou_thr: fusion IoU for ``fused``.

    Raises:
        DataError: ``gt_reader`` names a reader that appears in no record.
    """
    if gt_reader == "all":
        return {r.image_id: list(r.boxes) for r in records}
    if gt_reader == FUSED_READER:
        return {
            r.image_id: fuse_reader_boxes(
                r.boxes, width=r.width, height=r.height, iou_thr=iou_thr, method="wbf"
            )
            for r in records
        }
    readers = {b.reader for r in records for b in r.boxes}
    if gt_reader not in readers:
        raise DataError(
            f"ground-truth reader {gt_reader!r} has no box in the manifest; use 'all', 'fused' or "
            f"one of {sorted(readers)}"
        )
    return {r.image_id: [b for b in r.boxes if b.reader == gt_reader] for r in records}
