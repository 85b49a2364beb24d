"""Torch Datasets over a manifest and its cache: unlabeled views, classification and detection.

Every stage reads images the same way: :func:`cxrkit.data.loading.load_records` gives the
manifest's records, :func:`cxrkit.data.loading.open_cache` the preprocessed cache (built on first
use), and one of the Datasets below turns each record into a sample dict.
Contracts shared by all of them:

* ``image``: FloatTensor[1, H, W] in [0, 1], **cache pixels** (the cache stores uint8 H x W).
* ``boxes``: FloatTensor[N, 4], x1y1x2y2 in **cache pixels**, ``0 <= x1 < x2 <= W``; N may be 0.
  Map them back with ``cache.geometry(image_id).boxes_to_original(boxes)``.
* ``image_id`` is in every sample, and an exception while loading item ``i`` is re-raised as
  :class:`~cxrkit.errors.DataError` naming that image and the cause.
* Augmentation (:mod:`cxrkit.data.augment`) is an albumentations ``Compose`` applied to the uint8
  image with its masks and boxes before conversion to tensors. Without it boxes are used as mapped.

The Datasets are safe for DataLoader workers under fork and spawn: ``__init__`` opens no files, and
per-item targets are packed into one byte buffer (so forked workers do not copy millions of Python
objects' pages by touching their reference counts).

Augmentation randomness: albumentations 2 keeps a generator per ``Compose`` and ignores the global
seed. Training loaders (:class:`cxrkit.data.sampling.SeededItems`) call :meth:`set_random_seed`
with a seed of (run seed, epoch, position) before each item, so an augmented item is reproducible
and the same whatever the number of workers. Used without that (a plain DataLoader), each worker
reseeds the augmentation from the worker's torch seed: every forked worker would otherwise inherit
the generator in the same state, repeating one worker's "random" augmentation in all of them.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import albumentations as A  # cxrkit/__init__.py has already turned off its update check
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from cxrkit.data import findings as findings_mod
from cxrkit.data.augmentation import apply_augment, check_augment, clip_boxes
from cxrkit.data.cache import Cache
from cxrkit.data.records import Box, Record
from cxrkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Sample keys that hold one entry per box; collate keeps them as lists (their length varies).
PER_BOX_KEYS = ("boxes", "box_findings")

_EXAMPLES = 5  # ids quoted in an error message about many images


# --------------------------------------------------------------------------------------------------
# Batching


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts from the Datasets below (``DataLoader(..., collate_fn=collate)``).

    Per key: tensors of equal shape are stacked (``image`` -> FloatTensor[B, 1, H, W]); per-box
    entries (``boxes``, ``box_findings``, and detection ``labels``, which are int64 with one class
    per box) stay lists of length B, as do strings and tensors of differing shapes. Float ``labels``
    (classification, one per finding) are stacked. A sequence of tensors per sample (several views
    from a multi-view transform) becomes a list of batched views.

    Raises:
        ValueError: no samples, or samples with different keys.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    keys = list(samples[0])
    for s in samples[1:]:
        if list(s) != keys:
            raise ValueError(
                f"samples have different keys: {keys} vs {list(s)} (image {s.get('image_id')!r})"
            )
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        per_box = key in PER_BOX_KEYS or (
            key == "labels"
            and all(
                isinstance(v, torch.Tensor) and v.ndim == 1 and not v.is_floating_point()
                for v in values
            )
        )
        batch[key] = list(values) if per_box else _collate_values(values)
    return batch


def _collate_values(values: list[Any]) -> Any:
    if all(isinstance(v, torch.Tensor) for v in values):
        if all(v.shape == values[0].shape for v in values):
            return torch.stack(values)
        return list(values)
    if all(
        isinstance(v, list | tuple)
        and len(v) == len(values[0])
        and len(v) > 0
        and all(isinstance(t, torch.Tensor) for t in v)
        for v in values
    ):
        return [_collate_values(list(views)) for views in zip(*values, strict=True)]
    return list(values)


# --------------------------------------------------------------------------------------------------
# Datasets


class _Packed:
    """A read-only list stored as pickles in one uint8 buffer (see the module docstring)."""

    def __init__(self, items: Iterable[Any]) -> None:
        blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


def _parse_groups(entries: Sequence[str], *, owner: str, what: str) -> list[findings_mod.Finding]:
    """The finding groups of ``owner``'s argument ``what`` (``findings`` or ``classes``).

    Raises:
        ConfigError: an empty or unparsable list, naming ``owner`` and ``what``.
    """
    try:
        groups = findings_mod.parse_all(entries, what=f"{owner} {what}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not groups:
        raise ConfigError(f"{owner}: {what} is empty")
    return groups


def _check_names(names: Sequence[str], *, owner: str, what: str) -> None:
    # a bare string is a Sequence too: "Nodule" would read as N, o, d, u, l, e
    if isinstance(names, str):
        raise ConfigError(f"{owner}: {what} must be a list, got {names!r}")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> FloatTensor[1, H, W] in [0, 1]."""
    # In numpy, single-threaded: torch's intra-op thread pool costs milliseconds per small image
    # in the main process (num_workers=0) on a busy CPU; DataLoader workers run torch with 1 thread.
    scaled = np.multiply(image, np.float32(1 / 255), dtype=np.float32)
    return torch.from_numpy(scaled)[None]


class _CacheDataset(Dataset):
    """Shared machinery: packed items, cache lookup, worker seeding, per-item error wrapping."""

    def __init__(self, *, records: Sequence[Record], cache: Cache, name: str) -> None:
        if not isinstance(cache, Cache):
            raise ConfigError(
                f"{name}: cache must be a cxrkit Cache (from open_cache), got {cache!r}"
            )
        missing = [r.image_id for r in records if r.image_id not in cache]
        if missing:
            examples = ", ".join(repr(i) for i in missing[:_EXAMPLES])
            raise DataError(
                f"{name}: {len(missing)} of {len(records)} records are not in the cache at "
                f"{cache.root} (e.g. {examples}); pass the records through "
                "open_cache(data, records=...) or load_records(data, cache=...), which drop them "
                "under data.on_error=skip"
            )
        self.cache = cache
        self._ids = np.array([r.image_id for r in records], dtype=str)  # no per-item objects
        self._seeded_with: int | None = None  # the worker seed the transform was seeded with
        self._item_seeded = False  # set_random_seed was called: items are seeded one by one

    def __len__(self) -> int:
        return len(self._items)

    @property
    def image_ids(self) -> list[str]:
        """The image id of every item, in order."""
        return self._ids.tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        item = self._items[index % len(self)]
        try:
            self._seed_worker()
            return self._load(item)
        except Exception as exc:
            raise DataError(
                f"image {item['image_id']!r} (item {index}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def set_random_seed(self, seed: int) -> None:
        """Seed the augmentation's own generator (albumentations ``Compose.set_random_seed``) for
        the next item; from then on the per-worker seeding is off (the caller seeds each item)."""
        self._item_seeded = True
        transform = self._random_transform()
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)

    def _seed_worker(self) -> None:
        transform = self._random_transform()
        info = get_worker_info()
        if (
            self._item_seeded
            or info is None
            or transform is None
            or not hasattr(transform, "set_random_seed")
        ):
            return
        if self._seeded_with != info.seed:
            transform.set_random_seed(info.seed % 2**32)
            self._seeded_with = info.seed

    def _random_transform(self) -> Any:
        return None

    def _read_image(self, image_id: str) -> np.ndarray:
        image = self.cache.load(image_id)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise DataError(
                f"cache image is {image.dtype} {image.shape}, expected uint8 (H, W); rebuild the "
                "cache with `cxrkit preprocess`"
            )
        return image

    def _boxes_in_cache(self, image_id: str, boxes: Sequence[Box]) -> np.ndarray:
        """Record boxes (original pixels) -> (N, 4) float32 cache pixels, clipped to the image."""
        geometry = self.cache.geometry(image_id)
        boxes = geometry.boxes_to_cache(np.array([b.xyxy for b in boxes], np.float64))
        return clip_boxes(boxes, width=geometry.width, height=geometry.height)


class UnlabeledDataset(_CacheDataset):
    """Cache images without labels, for self-supervised pretraining.

    Item: ``{"image_id": str, "image": ...}`` where ``image`` is

    * ``transform(image)`` for a plain callable taking the uint8 (H, W) ndarray; for two-view
      pretraining it returns the views (e.g. a list of two tensors), which :func:`collate` batches
      per view. Randomness from ``torch``, ``numpy`` or ``random`` is seeded per item by the
      training loader (:class:`~cxrkit.data.sampling.SeededItems`), else differs per DataLoader
      worker (torch seeds them); a transform with its own generator should offer
      ``set_random_seed(seed)``, which :meth:`set_random_seed` calls per item (or each worker with
      its torch seed).
    * an albumentations ``Compose``'s output converted to FloatTensor[1, H, W] in [0, 1];
    * FloatTensor[1, H, W] in [0, 1] with ``transform=None``.
    """

    def __init__(
        self,
        *,
        records: Sequence[Record],
        cache: Cache,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        super().__init__(records=records, cache=cache, name="UnlabeledDataset")
        if transform is not None and not callable(transform):
            raise ConfigError(f"UnlabeledDataset: transform must be callable, got {transform!r}")
        self.transform = transform
        self._items = _Packed({"image_id": r.image_id} for r in records)

    def _random_transform(self) -> Any:
        return self.transform

    def _load(self, item: dict[str, Any]) -> dict[str, Any]:
        image = self._read_image(item["image_id"])
        if self.transform is None:
            out = _to_tensor(image)
        elif isinstance(self.transform, A.Compose):
            empty = np.zeros((0, 4), np.float32)
            out = _to_tensor(apply_augment(self.transform, image=image, masks=[], boxes=empty)[0])
        else:
            out = self.transform(image)
        return {"image_id": item["image_id"], "image": out}


class ClassificationDataset(_CacheDataset):
    """Multi-label classification samples with view, optional masks and the record's boxes.

    Item::

        image_id: str;  view: str (PA / AP / LL / unknown)
        image: FloatTensor[1, H, W] in [0, 1], cache pixels
        labels: FloatTensor[F], 0/1 per entry of ``findings`` (0 where unknown)
        label_known: FloatTensor[F], 1 where the record states the finding, 0 where it is unknown
        masks: FloatTensor[M, H, W] in {0, 1}, cache pixels, one per name in ``masks`` (zeros when
            the image has no such mask);  mask_known: FloatTensor[M], 1 where the mask exists
        boxes: FloatTensor[N, 4] x1y1x2y2 cache pixels (every finding);  box_findings: list[str] (N)

    Args:
        records: the images (all must be in ``cache``).
        cache: from :func:`open_cache`.
        findings: label names. An entry ``"Nodule/Mass=Nodule|Mass"`` is a group: its label is 1 if
            any member is 1, and it is known if any member is known.
        masks: mask names as in ``Record.mask_paths`` (e.g. ``"lung"``, ``"heart"``).
        augment: albumentations Compose, e.g. ``default_augment(kind="classification", ...)``.
        labelled: False for records that carry no labels by design (image files read for
            prediction): no warning that no record states a finding, which is then always true.
    """

    def __init__(
        self,
        *,
        records: Sequence[Record],
        cache: Cache,
        findings: Sequence[str],
        masks: Sequence[str] = (),
        augment: A.Compose | None = None,
        labelled: bool = True,
    ) -> None:
        super().__init__(records=records, cache=cache, name="ClassificationDataset")
        groups = _parse_groups(findings, owner="ClassificationDataset", what="findings")
        _check_names(masks, owner="ClassificationDataset", what="masks")
        self.findings = [name for name, _ in groups]
        self.masks = list(masks)
        self.augment = augment
        check_augment(
            augment,
            needs_boxes=any(r.boxes for r in records),
            dataset="ClassificationDataset",
        )
        stated = {f for r in records for f in r.labels}
        for name, members in groups:
            if labelled and records and not stated.intersection(members):
                log.warning(
                    "ClassificationDataset: no record states %s (is it spelled as in the "
                    "manifest?); its label is unknown for every image",
                    name if members == (name,) else f"{name} = {'|'.join(members)}",
                )
        self._items = _Packed(self._plan(r, groups) for r in records)

    def _plan(self, record: Record, groups: list[findings_mod.Finding]) -> dict[str, Any]:
        labels = np.zeros(len(groups), np.float32)
        known = np.zeros(len(groups), np.float32)
        for i, finding in enumerate(groups):
            value = findings_mod.label(record.labels, finding)
            if value is not None:
                known[i], labels[i] = 1.0, float(value)
        return {
            "image_id": record.image_id,
            "view": record.view,
            "labels": labels,
            "label_known": known,
            "boxes": self._boxes_in_cache(record.image_id, record.boxes),
            "box_findings": [b.finding for b in record.boxes],
        }

    def _random_transform(self) -> Any:
        return self.augment

    def _load(self, item: dict[str, Any]) -> dict[str, Any]:
        image_id = item["image_id"]
        image = self._read_image(image_id)
        found = {}
        for name in self.masks:
            mask = self.cache.load_mask(image_id, name)
            if mask is not None:
                if mask.shape != image.shape:
                    raise DataError(f"mask {name!r} is {mask.shape}, its image {image.shape}")
                found[name] = mask
        boxes, findings = item["boxes"], item["box_findings"]
        present = list(found.values())
        if self.augment is not None:
            image, present, boxes, kept = apply_augment(
                self.augment, image=image, masks=present, boxes=boxes
            )
            findings = [findings[i] for i in kept]
        masks = torch.zeros((len(self.masks), *image.shape), dtype=torch.float32)
        mask_known = torch.zeros(len(self.masks), dtype=torch.float32)
        for name, mask in zip(found, present, strict=True):
            i = self.masks.index(name)
            masks[i] = torch.from_numpy(np.asarray(mask) > 127)
            mask_known[i] = 1.0
        return {
            "image_id": image_id,
            "view": item["view"],
            "image": _to_tensor(image),
            "labels": torch.from_numpy(item["labels"]),
            "label_known": torch.from_numpy(item["label_known"]),
            "masks": masks,
            "mask_known": mask_known,
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "box_findings": findings,
        }


class DetectionDataset(_CacheDataset):
    """Object-detection samples in the torchvision convention, boxes in cache pixels.

    Item::

        image_id: str;  view: str
        image: FloatTensor[1, H, W] in [0, 1]
        boxes: FloatTensor[N, 4] x1y1x2y2 cache pixels, 0 <= x1 < x2 <= W; N may be 0 ("No finding")
        labels: Int64Tensor[N] in 1..len(classes); 0 is torchvision's background

    Boxes are used as given, one per reader: reader fusion happens before (the finetune stage
    builds fused records). After augmentation boxes are clipped and degenerate ones dropped (see
    the module docstring).

    Args:
        records: the images (all must be in ``cache``).
        cache: from :func:`open_cache`.
        classes: class names; label ``i + 1`` is ``classes[i]``. Groups as in
            :class:`ClassificationDataset` (``"Nodule/Mass=Nodule|Mass"``) merge findings.
        augment: albumentations Compose with pascal_voc ``bbox_params`` and label field
            :data:`BOX_LABEL_FIELD`, e.g. ``default_augment(kind="detection", ...)``.
        ignore: findings whose boxes are dropped (e.g. ``"Other lesion"``).

    Raises:
        DataError: a box whose finding is neither a class nor ignored, naming image and finding.
    """

    def __init__(
        self,
        *,
        records: Sequence[Record],
        cache: Cache,
        classes: Sequence[str],
        augment: A.Compose | None = None,
        ignore: Sequence[str] = (),
    ) -> None:
        super().__init__(records=records, cache=cache, name="DetectionDataset")
        groups = _parse_groups(classes, owner="DetectionDataset", what="classes")
        _check_names(ignore, owner="DetectionDataset", what="ignore")
        label_of: dict[str, int] = {}
        for i, (_, members) in enumerate(groups):
            for member in members:
                if member in label_of:
                    raise ConfigError(f"DetectionDataset classes: {member!r} is in two classes")
                label_of[member] = i + 1
        both = sorted(set(label_of) & set(ignore))
        if both:
            raise ConfigError(f"DetectionDataset: {both} are both classes and ignored")
        self.classes = [name for name, _ in groups]
        self.ignore = list(ignore)
        self.augment = augment
        check_augment(augment, needs_boxes=True, dataset="DetectionDataset")
        self._label_of = label_of
        self._items = _Packed(self._plan(r) for r in records)

    def _plan(self, record: Record) -> dict[str, Any]:
        unknown = [b.finding for b in record.boxes if b.finding not in self._label_of]
        unknown = [f for f in unknown if f not in self.ignore]
        if unknown:
            raise DataError(
                f"image {record.image_id!r}: box finding {unknown[0]!r} is not one of the classes "
                f"{self.classes} nor ignored {self.ignore}; add it to classes (or a group "
                "'Name=A|B') or to ignore"
            )
        kept = [b for b in record.boxes if b.finding in self._label_of]
        return {
            "image_id": record.image_id,
            "view": record.view,
            "boxes": self._boxes_in_cache(record.image_id, kept),
            "labels": np.array([self._label_of[b.finding] for b in kept], np.int64),
        }

    def _random_transform(self) -> Any:
        return self.augment

    def _load(self, item: dict[str, Any]) -> dict[str, Any]:
        image = self._read_image(item["image_id"])
        boxes, labels = item["boxes"], item["labels"]
        if self.augment is not None:
            image, _, boxes, kept = apply_augment(self.augment, image=image, masks=[], boxes=boxes)
            labels = labels[kept]
        return {
            "image_id": item["image_id"],
            "view": item["view"],
            "image": _to_tensor(image),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
        }
