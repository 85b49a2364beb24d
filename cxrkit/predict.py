"""Any trained cxrkit model on a few image files: what ``cxrkit predict`` does, from Python.

The model kind is read from what the path holds: a detector (``detector.pt`` or a finetune
``.ckpt``), a multi-task model file (``model.pt``, or a screening member's ``member.pt``), or a
screening-ensemble directory (``ensemble.json``). Each file is read with the model's own
preprocessing recipe (:mod:`cxrkit.data.single`). :func:`predict_files` writes::

    OUT/predictions.csv        the frame of the model's ``predict_images`` (path and image_id first;
                               detector: one row per box, x1y1x2y2 in ORIGINAL pixels of the file;
                               classifier / ensemble: one row per image)
    OUT/predictions.json       the same numbers per image, with each image's size, the model and
                               kind, the ensemble's threshold, and the skipped files
    OUT/overlays/<id>.png      one per image, at the file's ORIGINAL resolution: the image as the
                               model saw it (its cache image mapped back through the geometry) with
                               the boxes and their scores, or the top findings as text

Example::

    from cxrkit import predict
    result = predict.predict_files("runs/finetune/bt/detector.pt", ["a.dcm", "b.png"], out_dir="o")
    result.frame    # path, image_id, finding, score, x1, y1, x2, y2 (original pixels)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cxrkit import io
from cxrkit.data import single
from cxrkit.errors import CheckpointError, ConfigError, MissingFileError
from cxrkit.finetune.predictor import Detector
from cxrkit.multitask.ensemble import ENSEMBLE_FILE, Ensemble
from cxrkit.multitask.predictor import Classifier

Model = Detector | Classifier | Ensemble
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
OVERLAY_DIR = "overlays"
TOP_FINDINGS = 3  # findings written on a classifier's overlay (cxrkit's choice)
CHUNK = 16  # files read and predicted at a time, so that a long list does not fill the memory
MODEL_HINT = (
    "give a detector (detector.pt, or a finetune checkpoint .ckpt), a multi-task model file "
    "(model.pt, member.pt) or a screening ensemble directory (with ensemble.json)"
)


def kind_of(model: Model) -> str:
    """``detector``, ``classifier`` or ``ensemble``."""
    if isinstance(model, Detector):
        return "detector"
    return "classifier" if isinstance(model, Classifier) else "ensemble"


def load(path: str | Path) -> Model:
    """Load the model at ``path``, whichever of the three kinds it is (module docstring).

    Raises:
        MissingFileError: no such file or directory; a directory without ``ensemble.json``.
        CheckpointError: a file that is not a cxrkit detector or multi-task model (an image, a
            backbone, a config...), named with what it is.
    """
    from cxrkit import finetune, multitask

    path = Path(path)
    if path.is_dir():
        if not (path / ENSEMBLE_FILE).is_file():
            raise MissingFileError(f"{path}: a directory without {ENSEMBLE_FILE}; {MODEL_HINT}")
        return Ensemble.load(path)
    if not path.exists():
        raise MissingFileError(f"{path}: model not found; {MODEL_HINT}")
    if path.suffix == ".ckpt":
        return finetune.load(path)
    # mmap: only the header of a large file is read to learn its kind
    blob = io.load_torch(path, what="cxrkit model file", hint=MODEL_HINT, mmap=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise CheckpointError(f"{path}: not a cxrkit model file (no configuration); {MODEL_HINT}")
    # files written before the "kind" key: a multi-task config has a task, a detector's none
    kind = blob.get("kind") or ("multitask" if "task" in blob["config"] else "detector")
    if kind == "detector":
        return finetune.load(path)
    if kind == "multitask":
        return multitask.load(path)
    raise CheckpointError(f"{path}: a cxrkit {kind} file, not a model to run; {MODEL_HINT}")


@dataclass
class Predicted:
    """What :func:`predict_files` wrote, and the frame it wrote."""

    kind: str
    frame: pd.DataFrame
    csv: Path
    json: Path
    overlays: list[Path]
    failed: list[single.Failed] = field(default_factory=list)


def predict_files(
    model: str | Path | Model,
    files: Sequence[str | Path],
    *,
    out_dir: str | Path,
    score_threshold: float | None = None,
    device: str | None = None,
    on_error: str = "fail",
) -> Predicted:
    """Run a model on image files and write the predictions and overlays (module docstring).

    Args:
        model: a path (:func:`load`) or a loaded model.
        files: PNG / JPEG / TIFF / DICOM files.
        out_dir: the output folder, checked before the model is loaded.
        score_threshold: a detector's minimum box score, in [0, 1) (default: its own).
        device: ``auto`` (None), ``cpu``, ``cuda`` or ``cuda:N``.
        on_error: ``"fail"`` stops at the first unreadable file; ``"skip"`` leaves it out and lists
            it in ``predictions.json`` (``"failed"``).

    Raises:
        ConfigError: a bad output folder, ``score_threshold`` for a classifier or ensemble, a bad
            device or ``on_error``.
        MissingFileError, CheckpointError: as :func:`load`; a missing image (``on_error="fail"``).
        ImageReadError, DataError: an unreadable image (``on_error="fail"``), naming it.
    """
    out = io.check_output_dir(out_dir)
    if on_error not in single.ON_ERROR:
        raise ConfigError(f"on_error must be one of {single.ON_ERROR}, got {on_error!r}")
    if on_error == "fail":  # a mistyped name fails before the model is loaded
        for f in files:
            if not Path(f).is_file():
                raise MissingFileError(f"{f}: image file not found")
    ids = single.image_ids(files)  # over every file: a stem shared across chunks stays told apart
    names = _overlay_names(ids)
    loaded = load(model) if isinstance(model, str | Path) else model
    kind = kind_of(loaded)
    if score_threshold is not None and kind != "detector":
        raise ConfigError(f"--score-threshold applies to detectors; this model is a {kind}")
    frames, entries, failed, overlays = [], [], [], []
    for start in range(0, len(files), CHUNK):  # a chunk of images in memory at a time
        chunk = files[start : start + CHUNK]
        images = single.read_images(
            chunk,
            recipe=loaded.config.data.preprocess,
            on_error=on_error,
            ids=ids[start : start + CHUNK],
        )
        if kind == "detector":
            frame = loaded.predict_images(images, score_threshold=score_threshold, device=device)
        else:
            frame = loaded.predict_images(images, device=device)
        frames.append(frame)
        failed.extend(images.failed)
        for item in images.items:
            entry = _entry(kind, item, frame)
            entries.append(entry)
            ok, png = cv2.imencode(".png", draw(kind, item, entry))
            if not ok:
                raise OSError(f"{item.path}: PNG encoding of the overlay failed")
            target = out / OVERLAY_DIR / f"{names[item.image_id]}.png"
            overlays.append(io.atomic_write(target, png.tobytes()))
    frame = pd.concat(frames, ignore_index=True)
    doc: dict[str, Any] = {
        "model": str(model) if isinstance(model, str | Path) else str(getattr(model, "path", "")),
        "kind": kind,
        "images": entries,
        "failed": [{"path": f.path, "reason": f.reason} for f in failed],
    }
    if kind == "detector":
        doc["coordinates"] = "x1, y1, x2, y2 in the original pixels of each file"
    if kind == "ensemble":
        doc["threshold"] = loaded.threshold
        doc["operating_point"] = loaded.operating_point
    csv_path = io.atomic_write(out / PREDICTIONS_CSV, frame.to_csv(index=False))
    json_path = io.atomic_write(out / PREDICTIONS_JSON, json.dumps(doc, indent=1) + "\n")
    return Predicted(kind, frame, csv_path, json_path, overlays, failed)


def _entry(kind: str, item: single.Prepared, frame: pd.DataFrame) -> dict[str, Any]:
    """One image's part of ``predictions.json``, from its rows of ``frame``."""
    rows = frame[frame["image_id"] == item.image_id]
    entry: dict[str, Any] = {
        "path": item.path,
        "image_id": item.image_id,
        "width": item.geometry.orig_width,
        "height": item.geometry.orig_height,
    }
    values = rows.drop(columns=[single.PATH_COLUMN, "image_id"]).to_dict(orient="records")
    if kind == "detector":
        entry["boxes"] = values
    else:  # one row per image
        entry.update({k: v.item() if hasattr(v, "item") else v for k, v in values[0].items()})
    return entry


def _overlay_names(ids: Sequence[str]) -> dict[str, str]:
    """File-safe overlay names; the cache's item key (hashed) where two ids would clash."""
    from cxrkit.data.cache import item_key

    slugs = {i: re.sub(r"[^A-Za-z0-9._-]+", "_", i).strip("._") or "image" for i in ids}
    clashing = {s for s in slugs.values() if list(slugs.values()).count(s) > 1}
    return {i: item_key(i) if s in clashing else s for i, s in slugs.items()}


def _lines(kind: str, entry: dict[str, Any]) -> list[str]:
    """The text written on a classifier's or ensemble's overlay."""
    if kind == "ensemble":
        verdict = "abnormal" if entry["abnormal"] else "normal"
        return [f"screening: {verdict} (score {entry['score']:.3f})"]
    if "p_target" in entry:  # a screening member
        return [f"{entry['member']}: {entry['prediction']} (p {entry['p_target']:.3f})"]
    scores = {k: v for k, v in entry.items() if k not in ("path", "image_id", "width", "height")}
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:TOP_FINDINGS]
    return [f"{name} {score:.3f}" for name, score in top]


def draw(kind: str, item: single.Prepared, entry: dict[str, Any]) -> np.ndarray:
    """The overlay of one image: uint8 (orig_height, orig_width, 3) BGR.

    The image is the model's input mapped back to the file's pixels
    (:func:`cxrkit.data.single.to_original`); a detector's boxes (original pixels) are drawn in
    green with ``finding score`` above each, a classifier's top findings or the ensemble's verdict
    are written at the top left.
    """
    grey = single.to_original(item.image, geometry=item.geometry)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    side = max(out.shape[:2])
    thickness = max(1, round(side / 400))
    scale = max(0.3, side / 1000)
    font = cv2.FONT_HERSHEY_SIMPLEX
    green, yellow = (0, 255, 0), (0, 255, 255)
    if kind == "detector":
        for box in entry["boxes"]:
            x1, y1, x2, y2 = (int(round(box[k])) for k in ("x1", "y1", "x2", "y2"))
            cv2.rectangle(out, (x1, y1), (x2, y2), green, thickness)
            caption = f"{box['finding']} {box['score']:.2f}"
            (_, text_h), _ = cv2.getTextSize(caption, font, scale, thickness)
            y = y1 - 3 if y1 - 3 >= text_h else min(out.shape[0] - 1, y1 + text_h + 3)
            cv2.putText(out, caption, (x1, y), font, scale, green, thickness, cv2.LINE_AA)
        return out
    step = math.ceil(cv2.getTextSize("Ag", font, scale, thickness)[0][1] * 1.6)
    for i, line in enumerate(_lines(kind, entry)):
        cv2.putText(out, line, (4, step * (i + 1)), font, scale, yellow, thickness, cv2.LINE_AA)
    return out
