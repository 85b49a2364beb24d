"""Detections in original pixels: running the detector over a cache, and the files it writes.

The detector sees cache images and answers in cache pixels; every file written here is in the
**original pixels** of the manifest's image (``cache.geometry(image_id).boxes_to_original``), which
is what :mod:`cxrkit.eval` and the VinBigData Kaggle format expect. Two formats:

- the predictions file (:func:`cxrkit.eval.predictions.write_predictions`, kind ``detection``):
  ``image_id, finding, score, x1, y1, x2, y2``, one row per box;
- the Kaggle VinBigData submission: ``image_id, PredictionString`` with ``"class_id score x1 y1 x2
  y2"`` repeated per box, ``class_id`` the index of the finding in the class table, and
  ``"<no-finding id> 1 0 0 1 1"`` (``"14 1 0 0 1 1"`` for the 14 VinDr classes) for an image with
  no box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrkit import engine
from cxrkit.data.cache import Cache, Geometry
from cxrkit.data.records import Record
from cxrkit.errors import DataError
from cxrkit.progress import track

DETECTION_COLUMNS = ("image_id", "finding", "score", "x1", "y1", "x2", "y2")


def detections_to_frame(
    outputs: Sequence[dict[str, torch.Tensor]],
    *,
    image_ids: Sequence[str],
    geometries: Sequence[Geometry],
    classes: Sequence[str],
) -> pd.DataFrame:
    """Turn the detector's outputs for a batch into predictions rows in original pixels.

    Args:
        outputs: one ``{"boxes": FloatTensor[N, 4] x1y1x2y2 cache pixels, "labels":
            Int64Tensor[N] in 1..len(classes), "scores": FloatTensor[N]}`` per image.
        image_ids: the images, in the same order.
        geometries: each image's cache geometry.
        classes: the class table; label ``i`` is ``classes[i - 1]``.

    Returns:
        Columns :data:`DETECTION_COLUMNS`; boxes clipped to the original image. A box lying
        entirely in the padding (empty once clipped) is dropped.
    """
    frames = []
    for output, image_id, geometry in zip(outputs, image_ids, geometries, strict=True):
        boxes = output["boxes"].detach().float().cpu().numpy()
        if len(boxes) == 0:
            continue
        labels = output["labels"].detach().cpu().numpy()
        if labels.min() < 1 or labels.max() > len(classes):
            raise DataError(
                f"image {image_id!r}: the detector predicted label {int(labels.max())}, but the "
                f"class table has {len(classes)} classes (checkpoint and classes disagree)"
            )
        original = geometry.boxes_to_original(boxes)
        frame = pd.DataFrame(
            {
                "image_id": image_id,
                "finding": [classes[int(label) - 1] for label in labels],
                "score": output["scores"].detach().float().cpu().numpy().astype(np.float64),
                "x1": original[:, 0].astype(np.float64),
                "y1": original[:, 1].astype(np.float64),
                "x2": original[:, 2].astype(np.float64),
                "y2": original[:, 3].astype(np.float64),
            }
        )
        frames.append(frame[(frame.x1 < frame.x2) & (frame.y1 < frame.y2)])
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


def empty_frame() -> pd.DataFrame:
    """A predictions table with no rows and the detection columns."""
    return pd.DataFrame(
        {
            c: pd.Series(dtype=object if c in ("image_id", "finding") else "float64")
            for c in DETECTION_COLUMNS
        }
    )


@torch.inference_mode()
def predict(
    model: nn.Module,
    *,
    records: Sequence[Record],
    cache: Cache,
    classes: Sequence[str],
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``model`` (a detector from :func:`cxrkit.finetune.model.build_detector`) over
    ``records`` read from ``cache``; returns predictions rows in original pixels (see
    :func:`detections_to_frame`). The model is put in eval mode on ``device``."""
    from cxrkit.data.datasets import UnlabeledDataset

    model.eval().to(device)
    loader = engine.build_loader(
        UnlabeledDataset(records=records, cache=cache),
        batch_size=batch_size,
        num_workers=num_workers,
        train=False,
    )
    frames = []
    for batch in track(loader, desc="predict", unit="batch", enabled=progress):
        images = [image.to(device) for image in batch["image"]]
        outputs = model(images)
        frames.append(
            detections_to_frame(
                outputs,
                image_ids=batch["image_id"],
                geometries=[cache.geometry(i) for i in batch["image_id"]],
                classes=classes,
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


def kaggle_submission(
    predictions: pd.DataFrame,
    *,
    image_ids: Sequence[str],
    classes: Sequence[str],
) -> pd.DataFrame:
    """The VinBigData Kaggle submission for ``image_ids`` from predictions in original pixels.

    Each box becomes ``"class_id score x1 y1 x2 y2"`` (class id = index in ``classes``, score with 4
    decimals, coordinates rounded to whole pixels), boxes by decreasing score. An image without
    boxes gets ``"<len(classes)> 1 0 0 1 1"``, the competition's "No finding" entry.

    Raises:
        DataError: a prediction names a finding that is not in ``classes``, or an image that is not
            in ``image_ids``.
    """
    class_id = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(predictions["finding"]) - set(class_id))
    if unknown:
        raise DataError(f"predictions name findings {unknown} that are not in the class table")
    extra = sorted(set(predictions["image_id"]) - set(image_ids))
    if extra:
        raise DataError(f"predictions for images {extra[:5]} that are not in the submitted set")
    no_finding = f"{len(classes)} 1 0 0 1 1"
    strings: dict[str, list[str]] = {}
    ordered = predictions.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    for row in ordered.itertuples(index=False):
        strings.setdefault(row.image_id, []).append(
            f"{class_id[row.finding]} {row.score:.4f} {round(row.x1)} {round(row.y1)} "
            f"{round(row.x2)} {round(row.y2)}"
        )
    return pd.DataFrame(
        {
            "image_id": list(image_ids),
            "PredictionString": [" ".join(strings.get(i, [])) or no_finding for i in image_ids],
        }
    )
