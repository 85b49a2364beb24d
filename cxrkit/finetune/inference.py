"""A saved detector run over one split of a manifest: the predictions files, and the CAMs.

What ``cxrkit finetune predict`` and ``cxrkit finetune cam`` do, callable from Python: the
manifest and cache default to the ones the detector was trained on (a missing cache is built with
the detector's preprocessing recipe), boxes are written in original pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from cxrkit import engine, io
from cxrkit.data import loading
from cxrkit.data.cache import Cache
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.finetune import cam, detections
from cxrkit.finetune.config import FinetuneConfig
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.train import load


@dataclass
class Split:
    """A loaded detector and the split it runs on."""

    model: nn.Module
    config: FinetuneConfig
    cache: Cache
    records: list[Record]
    device: torch.device


def open_split(
    model_path: str | Path,
    *,
    manifest: str | None = None,
    cache: str | None = None,
    root: str | None = None,
    split: str = "test",
    device: str = "auto",
    progress: bool = True,
) -> Split:
    """Load the detector at ``model_path`` and the records of ``split`` (``"all"``: every one).

    Raises:
        ConfigError: no manifest or cache given and the detector names none; a bad ``device``.
    """
    detector = load(model_path)
    model, config = detector.model, detector.config
    data = dataclasses.replace(
        config.data,
        manifest=manifest or config.data.manifest,
        cache=cache or config.data.cache,
        root=root or config.data.root,  # --root: where the manifest's images are now
    )
    if not data.manifest or not data.cache:
        raise ConfigError(f"{model_path}: the detector names no manifest/cache; give them")
    loading.check_split(split)  # a misspelt split fails before the cache is opened or built
    opened, records = loading.open_records(data, progress=progress)
    return Split(
        model, config, opened, loading.in_split(records, split), engine.inference_device(device)
    )


@dataclass
class Predicted:
    """What :func:`predict_split` wrote."""

    frame: pd.DataFrame  # the detections, original pixels
    n_images: int
    predictions: Path
    submission: Path | None


def predict_split(
    model_path: str | Path,
    *,
    out: str | Path,
    submission: str | Path | None = None,
    score_thresh: float | None = None,
    manifest: str | None = None,
    cache: str | None = None,
    root: str | None = None,
    split: str = "test",
    batch_size: int = 8,
    num_workers: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Predicted:
    """Write the detections of a saved detector on ``split`` to ``out`` (``.csv``/``.parquet``)
    and, with ``submission``, the Kaggle VinBigData submission CSV.

    Args:
        score_thresh: drop detections below (default: the detector's ``model.score_thresh``).

    Raises:
        ConfigError: ``score_thresh`` outside [0, 1), and as :func:`open_split`.
    """
    from cxrkit.eval.predictions import check_output, write_predictions

    if score_thresh is not None and not 0 <= score_thresh < 1:
        raise ConfigError(f"--score-thresh must be in [0, 1), got {score_thresh}")
    check_output(out)  # before inference: a bad --out must not cost the whole run
    if submission:
        io.check_output_file(submission)
    s = open_split(
        model_path,
        manifest=manifest,
        cache=cache,
        root=root,
        split=split,
        device=device,
        progress=progress,
    )
    if score_thresh is not None:
        s.model.roi_heads.score_thresh = score_thresh
    frame = detections.predict(
        s.model,
        records=s.records,
        cache=s.cache,
        classes=s.config.classes,
        batch_size=batch_size,
        num_workers=num_workers,
        device=s.device,
        progress=progress,
    )
    written = write_predictions(frame, out, kind="detection")
    kaggle = None
    if submission:
        table = detections.kaggle_submission(
            frame, image_ids=[r.image_id for r in s.records], classes=s.config.classes
        )
        kaggle = io.atomic_write(submission, lambda tmp: table.to_csv(tmp, index=False))
    return Predicted(frame, len(s.records), written, kaggle)


def explain_split(
    model_path: str | Path,
    *,
    out_dir: str | Path,
    image_ids: Sequence[str] = (),
    limit: int | None = None,
    max_cams: int | None = None,
    method: str = "ablation",
    target_layer: str = cam.DEFAULT_LAYER,
    score_thresh: float = 0.3,
    top_k: int = 3,
    ablation_ratio: float = 1.0,
    manifest: str | None = None,
    cache: str | None = None,
    root: str | None = None,
    split: str = "test",
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """CAM overlays and scores (:func:`cxrkit.finetune.cam.explain`) for the ``image_ids`` of
    ``split`` (all of it when empty); returns the index written as ``cams.csv``.

    ``limit`` images and ``max_cams`` boxes at most, chosen by
    :func:`cxrkit.finetune.cam.select_boxes` among every image's ``top_k`` detections: each class's
    best box first, then by score (the detector runs over the whole split to choose). The ground
    truth drawn and scored is the split's boxes fused as the detector's validation fused them
    (``detection_records``).

    Raises:
        ConfigError: an image id not in the split, a limit below 1, and as :func:`open_split`.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    s = open_split(
        model_path,
        manifest=manifest,
        cache=cache,
        root=root,
        split=split,
        device=device,
        progress=progress,
    )
    records = s.records
    if image_ids:
        by_id = {r.image_id: r for r in records}
        missing = [i for i in image_ids if i not in by_id]
        if missing:
            raise ConfigError(f"--image-ids {missing[:5]} are not in split {split!r}")
        records = [by_id[i] for i in image_ids]
    return cam.explain(
        s.model,
        records=detection_records(records, config=s.config, train=False),
        cache=s.cache,
        classes=s.config.classes,
        out_dir=out_dir,
        method=method,
        target_layer=target_layer,
        score_thresh=score_thresh,
        top_k=top_k,
        max_cams=max_cams,
        max_images=limit,
        ablation_ratio=ablation_ratio,
        batch_size=batch_size,
        device=s.device,
        progress=progress,
    )
