"""Detection ground truth from several readers' boxes: as given, one reader's, or fused.

VinDr-CXR has three radiologists' boxes per training image; a lesion then appears up to three times.
Scoring against every reader's box (``all``) counts each copy as a lesion to find; ``fused`` merges
the readers first with weighted boxes fusion (ensemble-boxes), as BarlowTwins-CXR did for its
detector; a reader id keeps that reader's boxes only. ``auto`` (:func:`resolve_gt_reader`) is
``fused`` when any image has boxes from more than one reader and ``all`` otherwise: the consensus
is the ground truth the papers score against, and with one reader the two are the same.

The fusion itself is :func:`cxrkit.data.fusion.fuse_boxes`, the one the detector trains with.
"""

from __future__ import annotations

from collections.abc import Sequence

from cxrkit.data.fusion import FUSED_READER, fuse_boxes
from cxrkit.data.records import Box, Record
from cxrkit.errors import DataError

AUTO_READER = "auto"


def resolve_gt_reader(records: Sequence[Record], gt_reader: str = AUTO_READER) -> str:
    """``gt_reader`` with ``auto`` made concrete: ``fused`` when an image of ``records`` carries
    boxes from two or more readers, else ``all``; any other value as given."""
    if gt_reader != AUTO_READER:
        return gt_reader
    for record in records:
        if len({b.reader for b in record.boxes}) > 1:
            return FUSED_READER
    return "all"


def ground_truth_boxes(
    records: Sequence[Record], *, gt_reader: str = "all", iou_thr: float = 0.5
) -> dict[str, list[Box]]:
    """The ground-truth boxes of each image, keyed by image id.

    Args:
        records: manifest records.
        gt_reader: ``all`` (every reader's box as given), ``fused`` (weighted boxes fusion of the
            readers, :func:`cxrkit.data.fusion.fuse_boxes`), a reader id (only that reader's
            boxes; an image that reader did not annotate has no box), or ``auto``
            (:func:`resolve_gt_reader`).
        iou_thr: fusion IoU for ``fused``.

    Raises:
        DataError: ``gt_reader`` names a reader that appears in no record.
    """
    gt_reader = resolve_gt_reader(records, gt_reader)
    if gt_reader == "all":
        return {r.image_id: list(r.boxes) for r in records}
    if gt_reader == FUSED_READER:
        return {
            r.image_id: fuse_boxes(
                r.boxes, width=r.width, height=r.height, iou_thr=iou_thr, method="wbf"
            )
            for r in records
        }
    readers = {b.reader for r in records for b in r.boxes}
    if gt_reader not in readers:
        raise DataError(
            f"ground-truth reader {gt_reader!r} has no box in the manifest; use 'auto', 'all', "
            f"'fused' or one of {sorted(readers)}"
        )
    return {r.image_id: [b for b in r.boxes if b.reader == gt_reader] for r in records}
