"""Cache images and their boxes as a COCO detection file, for detectron2 and other COCO readers.

The file describes the **cache** images (the PNGs a detector trains on), so every coordinate in it
is in **cache pixels**: ``images[i].width/height`` are the cache image's size and
``annotations[j].bbox`` is ``[x, y, w, h]`` in that image. Each image entry also carries the
geometry back to the original (the manifest's frame, where cxrkit's predictions files live)::

    {"id": 1, "file_name": "items/3f/toy00-....png", "width": 128, "height": 128,
     "cxrkit_image_id": "toy00", "orig_width": 256, "orig_height": 192,
     "pad_left": 0.0, "pad_top": 32.0, "scale_x": 0.5, "scale_y": 0.5}

    x_orig = x_cache / scale_x - pad_left        y_orig = y_cache / scale_y - pad_top

``file_name`` is relative to the cache directory, recorded as ``info.image_root`` (detectron2's
``image_root``). Categories are ``1..K`` in the order of ``classes`` (the detector config's), so a
reader that sorts category ids (detectron2 does) maps class ``classes[k]`` to contiguous id ``k``.
Images without a box ("No finding") are listed with no annotation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit import io
from cxrkit.data.cache import Cache, Geometry, image_path
from cxrkit.data.records import Record
from cxrkit.errors import DataError, MissingFileError

FRAME = "cache pixels"
GEOMETRY_KEYS = ("orig_width", "orig_height", "pad_left", "pad_top", "scale_x", "scale_y")


def to_coco(records: Sequence[Record], *, cache: Cache, classes: Sequence[str]) -> dict[str, Any]:
    """The COCO dictionary of ``records`` over ``cache`` (see the module docstring).

    Args:
        records: the images, boxes in original pixels and already in their final form (class
            names mapped, readers fused): every box becomes one annotation.
        cache: the finished cache holding every record's image.
        classes: the category names in id order (category ``k + 1`` is ``classes[k]``).

    Raises:
        DataError: a record is not in the cache, or a box's finding is not one of ``classes``.
    """
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"COCO categories must be distinct and at least one: {list(classes)}")
    category = {name: k + 1 for k, name in enumerate(classes)}
    images, annotations = [], []
    for number, record in enumerate(records, start=1):
        geometry = cache.geometry(record.image_id)  # DataError naming the image when absent
        images.append(
            {
                "id": number,
                "file_name": image_path(cache.root, record.image_id)
                .relative_to(cache.root)
                .as_posix(),
                "width": geometry.width,
                "height": geometry.height,
                "cxrkit_image_id": record.image_id,
                **{key: getattr(geometry, key) for key in GEOMETRY_KEYS},
            }
        )
        if not record.boxes:
            continue
        unknown = sorted({b.finding for b in record.boxes} - set(category))
        if unknown:
            raise DataError(
                f"image {record.image_id!r}: box findings {unknown} are not among the COCO "
                f"categories {list(classes)}"
            )
        xyxy = geometry.boxes_to_cache(np.array([b.xyxy for b in record.boxes]))
        for box, (x1, y1, x2, y2) in zip(record.boxes, xyxy.astype(np.float64), strict=True):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": category[box.finding],
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": "cxrkit export coco: cache images with their boxes",
            "coordinates": FRAME,
            "image_root": str(cache.root.resolve()),
            "geometry": "x_orig = x_cache / scale_x - pad_left; y_orig = y_cache / scale_y - "
            "pad_top",
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name} for name, k in category.items()],
    }


def write_coco(
    records: Sequence[Record], path: str | Path, *, cache: Cache, classes: Sequence[str]
) -> Path:
    """Write :func:`to_coco` of ``records`` as JSON at ``path`` (atomically); returns ``path``."""
    return io.atomic_write(path, json.dumps(to_coco(records, cache=cache, classes=classes)))


def read_coco(path: str | Path) -> dict[str, Any]:
    """A COCO file written by :func:`write_coco`, checked for what the converters need.

    Raises:
        MissingFileError, DataError: no file, not JSON, or no cxrkit geometry in an image entry.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: COCO file not found (write it with `cxrkit export coco ... --out {path}`)"
        )
    try:
        coco = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable COCO JSON file ({exc})") from None
    if not isinstance(coco, dict) or not {"images", "categories"} <= set(coco):
        raise DataError(f"{path}: a COCO file needs 'images' and 'categories'")
    for entry in coco["images"]:
        missing = [k for k in ("id", "cxrkit_image_id", *GEOMETRY_KEYS) if k not in entry]
        if missing:
            raise DataError(
                f"{path}: image {entry.get('id')!r} lacks {missing}: only files written by "
                "`cxrkit export coco` map cache pixels back to the original images"
            )
    return coco


def geometry_of(entry: dict[str, Any]) -> Geometry:
    """The cache geometry of one image entry of :func:`to_coco`."""
    return Geometry(
        width=int(entry["width"]),
        height=int(entry["height"]),
        **{key: entry[key] for key in GEOMETRY_KEYS},
    )
