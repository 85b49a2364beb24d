"""A loaded multi-task model, and its scores on image files given by path.

:func:`cxrkit.multitask.load` returns a :class:`Classifier`; ``predict_images`` reads each file
with the model's own preprocessing recipe (:mod:`cxrkit.data.single`, the same pixels its cache
held)::

    classifier = multitask.load("runs/multitask/kcr_model2/model.pt")
    frame = classifier.predict_images(["a.dcm", "b.png"])
    # path, image_id, then one sigmoid probability per finding (Atelectasis, ..., Nodule/Mass)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxrkit import engine
from cxrkit.data import single
from cxrkit.data.findings import parse as parse_finding
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.model import MultiTaskModel


def for_files(config: MultiTaskConfig) -> MultiTaskConfig:
    """``config`` with loader workers off: images read into memory need no worker processes."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=0))


@dataclass(frozen=True, eq=False)  # compared by identity: it holds a network
class Classifier:
    """A trained multi-task model (KCR Model 1/2, Guendel, or one screening member).

    Attributes:
        model: the network, eval mode, on the CPU until a predict call moves it.
        config: its resolved training configuration (findings, preprocessing recipe).
        extra: the whole model file's dict (``state_dict``, ``config``, ``findings``, a member's
            ``disease``, ...).
        path: the file it was loaded from.
    """

    model: MultiTaskModel
    config: MultiTaskConfig
    extra: dict[str, Any]
    path: Path

    @property
    def is_member(self) -> bool:
        """A screening member (softmax over normal / its disease [/ other]), not multi-label."""
        return self.config.task == "screening"

    @property
    def findings(self) -> list[str]:
        """What the classification head scores: the finding names of a multi-label model (a
        group's name, ``Nodule/Mass``), or a screening member's disease name."""
        if self.is_member:
            return [parse_finding(str(self.extra.get("disease", "disease"))).name]
        return [parse_finding(f).name for f in self.config.findings]

    def predict_images(
        self,
        paths: Sequence[str | Path] | single.Images,
        *,
        device: str | None = None,
        on_error: str = "fail",
    ) -> pd.DataFrame:
        """Scores of image files, read with this model's preprocessing recipe; one row per image.

        Args:
            paths: PNG / JPEG / TIFF / DICOM files, or images already read with this recipe
                (:func:`cxrkit.data.single.read_images`).
            device: ``auto`` (None), ``cpu``, ``cuda`` or ``cuda:N``.
            on_error: ``"fail"`` stops at an unreadable file; ``"skip"`` leaves it out and lists
                it in ``frame.attrs["failed"]``.

        Returns:
            ``path, image_id`` and, for a multi-label model, one column per finding
            (:attr:`findings`) holding its sigmoid probability, as ``score`` in the predictions
            files of ``cxrkit multitask predict``; for a screening member the columns of its
            member table: ``member, p_normal, p_target[, p_other], prediction``.

        Raises:
            ConfigError: a bad device or ``on_error``.
            ImageReadError, DataError: an unreadable file (``on_error="fail"``), naming it.
        """
        # imported here: both modules import this one (load returns a Classifier)
        from cxrkit.multitask.ensemble import member_frame
        from cxrkit.multitask.train import inference_loader, predict_logits

        target = engine.inference_device(device or "auto")
        images = single.ensure_read(paths, recipe=self.config.data.preprocess, on_error=on_error)
        loader = inference_loader(
            for_files(self.config), records=images.records, cache=images.cache, labelled=False
        )
        ids, logits = predict_logits(self.model, loader, device=target)
        if self.is_member:
            frame = member_frame(
                ids,
                logits.double().numpy().reshape(len(ids), self.config.screening.classes),
                diseases=self.findings,
                classes=self.config.screening.classes,
            )
        else:
            probs = logits.sigmoid().double().numpy().reshape(len(ids), len(self.findings))
            frame = pd.DataFrame(probs, columns=self.findings)
            frame.insert(0, "image_id", list(ids))
        return single.with_paths(frame, images)
