"""Detection ground truth from several readers' boxes: as given, one reader's, or fused.

VinDr-CXR has three radiologists' boxes per training image; a lesion then appears up to three times.
Scoring against every reader's box (``all``, the default) counts each copy as a lesion to find;
``fused`` merges the readers first with weighted boxes fusion (ensemble-boxes), as BarlowTwins-CXR
did for its detector; a reader id keeps that reader's boxes only.

The fusion itself is :func:`cxrkit.data.fusion.fuse_boxes`, the one the detector trains with.
"""

from __future__ import annotations

from collections.abc import Sequence

from cxrkit.data.fusion import FUSED_READER, fuse_boxes
from cxrkit.data.records import Box, Record
from cxrkit.errors import DataError


def ground_truth_boxes(
    records: Sequence[Record], *, gt_reader: str = "all", iou_thr: float = 0.5
) -> dict[str, list[Box]]:
    """The ground-truth boxes of each image, keyed by image id.

    Args:
        records: manifest records.
        gt_reader: ``all`` (every reader's box as given), ``fused`` (weighted boxes fusion of the
            readers, :func:`cxrkit.data.fusion.fuse_boxes`) or a reader id (only that reader's
            boxes; an image that reader did not annotate has no box).
        iou_thr: fusion IoU for ``fused``.

    Raises:
        DataError: ``gt_reader`` names a reader that appears in no record.
    """
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
            f"ground-truth reader {gt_reader!r} has no box in the manifest; use 'all', 'fused' or "
            f"one of {sorted(readers)}"
        )
    return {r.image_id: [b for b in r.boxes if b.reader == gt_reader] for r in records}
