"""The detector's records: source findings mapped to its classes, readers fused, negatives sampled.

Runs before :class:`cxrkit.data.datasets.DetectionDataset`, which then sees one box per lesion:

1. ``class_map`` renames findings (e.g. a rare VinDr local label to ``"Other lesion"``);
2. boxes of an ``ignore``-d finding are dropped on purpose; any other finding that is not a class
   is a :class:`~cxrkit.errors.DataError` naming the image and the finding (never dropped silently);
3. the readers' boxes are fused (:mod:`cxrkit.data.fusion`, method from the config);
4. for training, images left without a box ("No finding") are kept as negatives with empty targets,
   a seeded ``negatives_fraction`` of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from cxrkit.data.fusion import fuse_records
from cxrkit.data.records import Record
from cxrkit.errors import DataError
from cxrkit.finetune.config import FinetuneConfig


def map_classes(
    records: Sequence[Record],
    *,
    classes: Sequence[str],
    class_map: Mapping[str, str],
    ignore: Sequence[str],
) -> list[Record]:
    """Copies of ``records`` whose boxes are renamed by ``class_map`` and cleared of ``ignore``.

    Raises:
        DataError: a box whose finding is neither a class, mapped to one, nor ignored.
    """
    known, ignored = set(classes), set(ignore)
    out = []
    for record in records:
        boxes = []
        for box in record.boxes:
            finding = class_map.get(box.finding, box.finding)
            if finding in ignored or box.finding in ignored:
                continue
            if finding not in known:
                raise DataError(
                    f"image {record.image_id!r}: box finding {box.finding!r} is not one of the "
                    f"detector's classes {list(classes)}; add it to classes, map it to one with "
                    f"class_map ('{box.finding}=CLASS'), or list it in ignore"
                )
            boxes.append(
                dataclasses.replace(box, finding=finding) if finding != box.finding else box
            )
        out.append(dataclasses.replace(record, boxes=boxes))
    return out


def detection_records(
    records: Sequence[Record], *, config: FinetuneConfig, train: bool, seed: int = 0
) -> list[Record]:
    """The records the detector trains or is validated on (steps 1-4 of the module docstring).

    Args:
        records: manifest records of one split; boxes in original pixels, one per reader.
        config: classes, class_map, ignore, fusion and negatives_fraction.
        train: sample negatives (validation keeps every image: a detection on a normal image is a
            false positive the metric must see).
        seed: the negatives sample's seed.
    """
    mapped = map_classes(
        records,
        classes=config.classes,
        class_map=config.class_mapping(),
        ignore=config.ignore,
    )
    fused = fuse_records(
        mapped,
        method=config.fusion.method,
        iou_thr=config.fusion.iou_thr,
        skip_box_thr=config.fusion.skip_box_thr,
    )
    if not train or config.negatives_fraction >= 1.0:
        return fused
    negatives = [i for i, r in enumerate(fused) if not r.boxes]
    rng = np.random.default_rng(seed)
    n_keep = int(round(config.negatives_fraction * len(negatives)))
    kept = set(rng.choice(negatives, size=n_keep, replace=False).tolist()) if n_keep else set()
    return [r for i, r in enumerate(fused) if r.boxes or i in kept]
