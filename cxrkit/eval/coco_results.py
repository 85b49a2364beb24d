"""detectron2 / COCO detection results -> cxrkit's detection predictions file.

Two inputs, both over the images of a COCO file written by ``cxrkit export coco``
(:mod:`cxrkit.data.coco`), boxes ``[x, y, w, h]`` in **cache pixels**:

- detectron2's ``instances_predictions.pth`` (``COCOEvaluator``'s ``output_dir``): a list of
  ``{"image_id": int, "instances": [{"image_id", "category_id", "bbox", "score"}, ...]}`` whose
  ``category_id`` is detectron2's **contiguous** id ``0..K-1`` (the k-th of the sorted COCO
  category ids);
- a COCO results JSON (detectron2's ``coco_instances_results.json``, mmdetection's
  ``results.bbox.json``): a list of ``{"image_id", "category_id", "bbox", "score"}`` with the COCO
  file's own category ids.

The output is the ``detection`` kind of :mod:`cxrkit.eval.predictions` (``image_id, finding, score,
x1, y1, x2, y2``) in **original pixels**, mapped with each image's geometry and clipped to the
image: what ``cxrkit eval detection`` reads. A box lying wholly in the padding is empty once
clipped and is dropped (counted in the returned ``dropped``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import io
from cxrkit.data.coco import geometry_of, read_coco
from cxrkit.errors import DataError, MissingFileError
from cxrkit.eval.predictions import (
    COLUMNS,
    check_output,
    validate_predictions,
    write_predictions,
)

FORMATS = ("detectron2", "coco")
DETECTRON2_FILE = "instances_predictions.pth"


@dataclass
class Converted:
    """The predictions table and how many boxes fell wholly outside the original image."""

    predictions: pd.DataFrame
    dropped: int


def read_results(path: str | Path, *, format: str | None = None) -> tuple[list[dict], str]:
    """The flat list of result dicts in ``path`` and its format (by suffix when ``format`` is
    None: ``.pth`` is detectron2's, ``.json`` a COCO results file).

    Raises:
        MissingFileError, CheckpointError, DataError: no file, an unreadable one, or not a list of
            results.
    """
    path = Path(path)
    if format is None:
        format = "detectron2" if path.suffix == ".pth" else "coco"
    if format not in FORMATS:
        raise DataError(f"results format must be one of {FORMATS}, got {format!r}")
    if format == "detectron2":
        blob = io.load_torch(
            path,
            what="detectron2 predictions file",
            hint=f"detectron2's COCOEvaluator(output_dir=...) writes {DETECTRON2_FILE}",
        )
        if not isinstance(blob, list) or not all(
            isinstance(p, dict) and "image_id" in p for p in blob
        ):
            raise DataError(f"{path}: not detectron2's list of per-image predictions")
        return [r for p in blob for r in p.get("instances", [])], format
    if not path.is_file():
        raise MissingFileError(f"{path}: COCO results file not found")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable COCO results JSON file ({exc})") from None
    if not isinstance(results, list):
        raise DataError(f"{path}: a COCO results file is a JSON list of detections")
    return results, format


def to_predictions(
    results: Sequence[dict[str, Any]], *, coco: dict[str, Any], contiguous: bool, source: str = ""
) -> Converted:
    """Results in cache pixels -> a detection predictions table in original pixels.

    Args:
        results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts.
        coco: the COCO dictionary the model ran on (:func:`cxrkit.data.coco.read_coco`).
        contiguous: ``category_id`` is detectron2's ``0..K-1`` rather than the COCO id.
        source: the results file, for messages.

    Raises:
        DataError: an image or category id the COCO file does not have, or a malformed result.
    """
    at = f"{source}: " if source else ""
    entries = {entry["id"]: entry for entry in coco["images"]}
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    names = (
        {k: c["name"] for k, c in enumerate(categories)}
        if contiguous
        else {c["id"]: c["name"] for c in categories}
    )
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for n, result in enumerate(results):
        try:
            image, category = result["image_id"], result["category_id"]
            bbox, score = [float(v) for v in result["bbox"]], float(result["score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{at}result {n} is malformed ({exc!r})") from None
        if image not in entries:
            raise DataError(f"{at}result {n}: image id {image!r} is not in the COCO file")
        if category not in names:
            kind = "contiguous (0..K-1)" if contiguous else "COCO"
            raise DataError(
                f"{at}result {n}: {kind} category id {category!r} is not one of {sorted(names)}"
            )
        if len(bbox) != 4:
            raise DataError(f"{at}result {n}: bbox needs [x, y, w, h], got {bbox}")
        by_image.setdefault(image, []).append(
            {"finding": names[category], "score": score, "bbox": bbox}
        )
    frames, dropped = [], 0
    for image, rows in by_image.items():
        entry = entries[image]
        xywh = np.array([r["bbox"] for r in rows], dtype=np.float64)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        original = geometry_of(entry).boxes_to_original(xyxy, clip=True).astype(np.float64)
        keep = (original[:, 0] < original[:, 2]) & (original[:, 1] < original[:, 3])
        dropped += int((~keep).sum())
        frame = pd.DataFrame(original[keep], columns=["x1", "y1", "x2", "y2"])
        frame.insert(0, "image_id", str(entry["cxrkit_image_id"]))
        frame.insert(1, "finding", [r["finding"] for r, k in zip(rows, keep, strict=True) if k])
        frame.insert(2, "score", [r["score"] for r, k in zip(rows, keep, strict=True) if k])
        frames.append(frame)
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=COLUMNS["detection"])
    )
    clean, _ = validate_predictions(table, kind="detection", source=source or "results")
    return Converted(predictions=clean, dropped=dropped)


def convert(
    results: str | Path, *, coco: str | Path, out: str | Path, format: str | None = None
) -> Converted:
    """Read ``results`` (detectron2 ``.pth`` or COCO ``.json``) over the COCO file ``coco`` and
    write the detection predictions file ``out`` (CSV or Parquet by suffix)."""
    out = check_output(out)
    items, found = read_results(results, format=format)
    converted = to_predictions(
        items, coco=read_coco(coco), contiguous=found == "detectron2", source=str(results)
    )
    write_predictions(converted.predictions, out, kind="detection")
    return converted
