"""The multi-task sample: a :class:`cxrkit.data.datasets.ClassificationDataset` item plus the
per-image targets that need the whole record or the item's boxes.

Added keys (all cache pixels, tensors so the shared ``collate`` stacks them):

- ``"abnormal"``: FloatTensor[] 1 (any finding), 0 (labelled, none), -1 (nothing known).
- ``"target3"``: Int64Tensor[] normal / disease / other for a screening member's disease, or
  :data:`cxrkit.multitask.targets.IGNORE` (also when the dataset is not for a screening member).
- ``"regions"``: FloatTensor[6] location targets (:data:`cxrkit.multitask.targets.REGIONS`) from
  the item's boxes; ``"regions_known"``: FloatTensor[] 1 when the image has boxes or is normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import DataError
from cxrkit.multitask import targets
from cxrkit.multitask.config import MultiTaskConfig


@dataclass(frozen=True)
class MaskLayout:
    """Which masks the dataset loads (``names``, the order of ``masks``/``mask_known``) and which
    channels each head uses."""

    names: list[str]
    organs: list[int]  # segmentation channels, in config.segmentation.organs order
    lesions: list[int]  # channels united into the lesion mask of the reconstruction target
    lung: int | None  # channel framing the location grid


def lesion_members(config: MultiTaskConfig, *, disease: str | None = None) -> list[str]:
    """Label (and mask) names of the lesions: the screening member's disease, else every finding
    (every screening disease for ``task=screening``)."""
    if disease is not None:
        entries = [disease]
    elif config.task == "screening":
        entries = config.screening.diseases
    else:
        entries = config.findings
    members: list[str] = []
    for entry in entries:
        members += [m for m in parse_finding(entry)[1] if m not in members]
    return members


def mask_layout(config: MultiTaskConfig, *, disease: str | None = None) -> MaskLayout:
    """The masks a run needs: organs (segmentation, location grid) and lesions (reconstruction)."""
    names: list[str] = []

    def channel(name: str) -> int:
        if name not in names:
            names.append(name)
        return names.index(name)

    organs = [channel(o) for o in config.segmentation.organs] if config.segmentation.enabled else []
    lung = None
    if config.location.enabled and config.location.grid_from_lung:
        lung = channel(config.location.lung_mask)
    lesions: list[int] = []
    if config.reconstruction.enabled and config.reconstruction.target == "lesion":
        lesions = [channel(m) for m in lesion_members(config, disease=disease)]
    return MaskLayout(names=names, organs=organs, lesions=lesions, lung=lung)


class MultiTaskDataset(Dataset):
    """Wrap ``base`` (built from the same ``records``, in the same order) and add targets.

    Args:
        base: a ClassificationDataset over ``records``.
        records: the records of ``base``, index-aligned.
        disease_members: label names of a screening member's disease (``None`` otherwise).
        lung_channel: index of the lung mask in the item's ``masks`` to frame the location grid.
        min_overlap: see :func:`cxrkit.multitask.targets.location_labels`.
    """

    def __init__(
        self,
        *,
        base: Dataset,
        records: Sequence[Record],
        disease_members: Sequence[str] | None = None,
        lung_channel: int | None = None,
        min_overlap: float = 0.25,
    ) -> None:
        if len(base) != len(records):  # type: ignore[arg-type]
            raise ValueError(f"base has {len(base)} items for {len(records)} records")  # type: ignore[arg-type]
        self.base = base
        self.records = list(records)
        self.disease_members = list(disease_members) if disease_members is not None else None
        self.lung_channel = lung_channel
        self.min_overlap = min_overlap

    def __len__(self) -> int:
        return len(self.records)

    def set_random_seed(self, seed: int) -> None:
        """Seed ``base``'s augmentation for the next item (the only randomness of an item)."""
        reseed = getattr(self.base, "set_random_seed", None)
        if reseed is not None:
            reseed(seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        record = self.records[index]
        if item["image_id"] != record.image_id:
            raise DataError(
                f"dataset item {index} is {item['image_id']!r} but its record is "
                f"{record.image_id!r}; the dataset must keep the records' order"
            )
        abnormal = targets.is_abnormal(record)
        item["abnormal"] = torch.tensor(-1.0 if abnormal is None else float(abnormal))
        label3 = targets.IGNORE
        if self.disease_members is not None:
            label3 = targets.three_class_label(record, members=self.disease_members)
        item["target3"] = torch.tensor(label3, dtype=torch.int64)
        image = item["image"]
        boxes = item.get("boxes")
        boxes = torch.zeros(0, 4) if boxes is None else torch.as_tensor(boxes).reshape(-1, 4)
        lung = None
        if self.lung_channel is not None and float(item["mask_known"][self.lung_channel]) > 0:
            lung = item["masks"][self.lung_channel]
        item["regions"] = targets.location_labels(
            boxes,
            width=int(image.shape[-1]),
            height=int(image.shape[-2]),
            lung=lung,
            min_overlap=self.min_overlap,
        )
        item["regions_known"] = torch.tensor(1.0 if len(boxes) or abnormal == 0 else 0.0)
        return item


def _group_label(record: Record, members: Sequence[str]) -> int | None:
    """A finding's label from its members: 1 if any is 1, 0 if every labelled one is 0."""
    values = [record.labels[m] for m in members if m in record.labels]
    return max(values) if values else None


def head_counts(config: MultiTaskConfig, records: Sequence[Record]) -> dict[str, int]:
    """How many of ``records`` give each enabled head a training target, by the rules the dataset
    and losses apply (what a run summary reports when some records lack masks or boxes).

    - ``classification``: images with a known label for at least one finding (a group's label is
      known when any member is labelled);
    - ``segmentation``: images with at least one organ mask, and ``segmentation:<organ>`` per
      organ (the loss is masked per organ);
    - ``location``: images with boxes, or labelled normal (an empty region target);
    - ``reconstruction``: every image for ``target=image``; for ``target=lesion`` the images with a
      lesion mask of a finding, or (``empty_when_negative``) labelled negative for every finding.
    """
    groups = [parse_finding(f)[1] for f in config.findings]
    labels = [[_group_label(r, g) for g in groups] for r in records]
    counts = {
        "images": len(records),
        "classification": sum(any(v is not None for v in row) for row in labels),
    }
    if config.segmentation.enabled:
        organs = config.segmentation.organs
        counts["segmentation"] = sum(any(o in r.mask_paths for o in organs) for r in records)
        for organ in organs:
            counts[f"segmentation:{organ}"] = sum(organ in r.mask_paths for r in records)
    if config.location.enabled:
        counts["location"] = sum(bool(r.boxes) or targets.is_abnormal(r) == 0 for r in records)
    rec = config.reconstruction
    if rec.enabled:
        if rec.target == "image":
            counts["reconstruction"] = len(records)
        else:
            lesions = lesion_members(config)
            counts["reconstruction"] = sum(
                any(m in r.mask_paths for m in lesions)
                or (rec.empty_when_negative and all(v == 0 for v in row))
                for r, row in zip(records, labels, strict=True)
            )
    return counts
