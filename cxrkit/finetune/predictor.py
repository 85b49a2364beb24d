"""A loaded detector, and its predictions on image files given by path.

:func:`cxrkit.finetune.load` returns a :class:`Detector`; ``predict_images`` reads each file with
the detector's own preprocessing recipe (:mod:`cxrkit.data.single`, the same pixels its cache
held) and answers in the **original pixels of each file**::

    detector = finetune.load("runs/finetune/bt/detector.pt")
    frame = detector.predict_images(["a.dcm", "b.png"], score_threshold=0.3)
    # path, image_id, finding, score, x1, y1, x2, y2: one row per box
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from cxrkit import engine
from cxrkit.data import single
from cxrkit.errors import ConfigError
from cxrkit.finetune import detections
from cxrkit.finetune.config import FinetuneConfig


@dataclass(frozen=True, eq=False)  # compared by identity: it holds a network
class Detector:
    """A trained Faster R-CNN and what it was trained with.

    Attributes:
        model: the detector (torchvision ``FasterRCNN``), eval mode, on the CPU until a predict
            call moves it.
        config: its resolved training configuration (classes, preprocessing recipe).
        path: the file it was loaded from (``detector.pt`` or a ``.ckpt``).
    """

    model: nn.Module
    config: FinetuneConfig
    path: Path

    @property
    def classes(self) -> list[str]:
        """The class table; the model's label ``i`` is ``classes[i - 1]``."""
        return list(self.config.classes)

    def predict_images(
        self,
        paths: Sequence[str | Path] | single.Images,
        *,
        score_threshold: float | None = None,
        device: str | None = None,
        on_error: str = "fail",
        batch_size: int = 4,
    ) -> pd.DataFrame:
        """Detections on image files, read with this detector's preprocessing recipe.

        Args:
            paths: PNG / JPEG / TIFF / DICOM files, or images already read with this recipe
                (:func:`cxrkit.data.single.read_images`).
            score_threshold: keep boxes scoring at least this, in [0, 1) (default: the
                detector's ``model.score_thresh``).
            device: ``auto`` (None), ``cpu``, ``cuda`` or ``cuda:N``.
            on_error: ``"fail"`` stops at an unreadable file; ``"skip"`` leaves it out and lists
                it in ``frame.attrs["failed"]``.
            batch_size: images per forward pass.

        Returns:
            ``path, image_id, finding, score, x1, y1, x2, y2``, one row per box, boxes x1y1x2y2
            in the **original pixels of each file** (clipped to it); an image without boxes has
            no row. The same numbers as :func:`cxrkit.finetune.predict` on a cache of the files.

        Raises:
            ConfigError: ``score_threshold`` outside [0, 1), a bad device or ``on_error``.
            ImageReadError, DataError: an unreadable file (``on_error="fail"``), naming it.
        """
        if score_threshold is not None and not 0 <= score_threshold < 1:
            raise ConfigError(f"score threshold must be in [0, 1), got {score_threshold}")
        target = engine.inference_device(device or "auto")
        images = single.ensure_read(paths, recipe=self.config.data.preprocess, on_error=on_error)
        heads = self.model.roi_heads
        saved = heads.score_thresh
        if score_threshold is not None:
            heads.score_thresh = score_threshold
        try:
            frame = detections.predict(
                self.model,
                records=images.records,
                cache=images.cache,
                classes=self.classes,
                batch_size=batch_size,
                device=target,
                progress=False,
            )
        finally:
            heads.score_thresh = saved
        return single.with_paths(frame, images)
