"""Torch Datasets over a manifest and its cache: unlabeled views, classification and detection.

Every stage reads images the same way: :func:`load_records` gives the manifest's records,
:func:`open_cache` gives the preprocessed cache (building it on first use), and one of the Datasets
below turns each record into a sample dict. Contracts shared by all of them:

* ``image``: FloatTensor[1, H, W] in [0, 1], **cache pixels** (the cache stores uint8 H x W).
* ``boxes``: FloatTensor[N, 4], x1y1x2y2 in **cache pixels**, ``0 <= x1 < x2 <= W``; N may be 0.
  Map them back with ``cache.geometry(image_id).boxes_to_original(boxes)``.
* ``image_id`` is in every sample, and an exception while loading item ``i`` is re-raised as
  :class:`~cxrkit.errors.DataError` naming that image and the cause.
* Augmentation is an albumentations ``Compose`` applied to the uint8 image together with its masks
  and pascal_voc boxes (label field :data:`BOX_LABEL_FIELD`) *before* conversion to tensors.
  Afterwards boxes are clipped to the image and a box narrower or shorter than
  :data:`MIN_AUGMENTED_BOX_SIDE` cache pixels is dropped with its label: it was pushed (almost) out
  of the image and no longer shows its lesion. Without augmentation boxes are used as mapped.

The Datasets are safe for DataLoader workers under fork and spawn: ``__init__`` opens no files, and
per-item targets are packed into one byte buffer (so forked workers do not copy millions of Python
objects' pages by touching their reference counts). Each worker reseeds the augmentation from the
worker's torch seed; albumentations keeps its own generator, which every forked worker would
otherwise inherit in the same state, repeating one worker's "random" augmentation in all of them.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import albumentations as A  # cxrkit/__init__.py has already turned off its update check
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from cxrkit.config import DataConfig, PreprocessConfig
from cxrkit.data import cache as cache_layout
from cxrkit.data import findings as findings_mod
from cxrkit.data.cache import ERRORS_FILE, INDEX_FILE, RECIPE_FILE, Cache
from cxrkit.data.records import SPLITS, Box, Record, read_manifest
from cxrkit.errors import ConfigError, DataError, MissingFileError

log = logging.getLogger(__name__)

BOX_LABEL_FIELD = "box_labels"
"""Name of the albumentations label field that carries box identities through augmentation."""

MIN_AUGMENTED_BOX_SIDE = 1.0
"""Boxes narrower or shorter than this (cache pixels) after augmentation are dropped."""

CACHE_WAIT_ENV = "CXRKIT_CACHE_WAIT_S"
"""Seconds a non-zero rank waits for rank 0 to build the cache (default :data:`CACHE_WAIT_S`)."""

CACHE_WAIT_S = 6 * 3600.0

# Sample keys that hold one entry per box; collate keeps them as lists (their length varies).
PER_BOX_KEYS = ("boxes", "box_findings")

_EXAMPLES = 5  # ids quoted in an error message about many images


# --------------------------------------------------------------------------------------------------
# Records and cache


def load_records(
    data: DataConfig, *, split: str | None = None, cache: Cache | None = None
) -> list[Record]:
    """The records of ``data.manifest``, optionally of one split and checked against a cache.

    Args:
        data: its ``manifest`` is read; ``on_error`` applies when ``cache`` is given.
        split: keep only records of this split (one of ``records.SPLITS``); None keeps all.
        cache: when given, records missing from it raise :class:`DataError` (``on_error="fail"``)
            or are dropped with a logged warning (``on_error="skip"``), as in :func:`open_cache`.

    Raises:
        ConfigError: ``data.manifest`` is not set or ``split`` is unknown.
        MissingFileError / DataError: the manifest is missing or unreadable.
    """
    if not data.manifest:
        raise ConfigError(
            "data.manifest is not set: give the Parquet manifest from `cxrkit prepare` "
            "(data.manifest=PATH)"
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {SPLITS}")
    records = read_manifest(data.manifest)
    if split is not None:
        records = [r for r in records if r.split == split]
    if cache is not None:
        _check_in_cache(records, cache, on_error=data.on_error)
    return records


def open_cache(
    data: DataConfig, *, records: Sequence[Record] | None = None, progress: bool = True
) -> Cache:
    """Open the cache at ``data.cache``, building it first if it has no ``index.parquet``.

    The cache is built from every record of ``data.manifest`` plus any of ``records`` not in the
    manifest, with ``data.preprocess``, ``data.num_workers`` processes and ``data.on_error``. Under
    DDP only global rank 0 builds (rank from ``RANK``, ``SLURM_PROCID`` or ``LOCAL_RANK``); the
    other ranks wait for ``index.parquet`` up to ``$CXRKIT_CACHE_WAIT_S`` seconds (default 6 h).

    Every requested record (``records``, or the whole manifest when None) must be in the cache.
    Missing ones (failed or skipped in preprocess) raise :class:`DataError` with their count and
    examples, unless ``data.on_error == "skip"``: then they are logged as a warning with their count
    and removed **in place** from ``records`` (which must then be a list, as from
    :func:`load_records`), so the caller's list matches the cache.

    Raises:
        ConfigError: ``data.cache`` unset; the cache was built with another recipe than
            ``data.preprocess``; nothing to build from; ``records`` is not a list under ``skip``.
        MissingFileError: the manifest is missing; rank 0 did not finish the cache in time.
        DataError: requested records missing from the cache (``on_error="fail"``).
    """
    if not data.cache:
        raise ConfigError(
            "data.cache is not set: give a cache directory (data.cache=PATH); it is built from "
            "data.manifest on first use"
        )
    root = Path(data.cache)
    if (root / RECIPE_FILE).is_file():
        # Before building: a mismatched recipe must not resume into (and corrupt) this cache.
        _check_recipe(root, data.preprocess)
    if not (root / INDEX_FILE).is_file():
        rank = global_rank()
        if rank == 0:
            _build(root, data=data, records=records, progress=progress)
        else:
            _wait_for_index(root, rank=rank)
    cache = Cache(root)
    _check_recipe(root, data.preprocess)
    requested = (
        records if records is not None else (read_manifest(data.manifest) if data.manifest else [])
    )
    _check_in_cache(requested, cache, on_error=data.on_error)
    return cache


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 without a launcher).

    torchrun sets ``RANK``, SLURM ``SLURM_PROCID``; Lightning's own launcher sets only
    ``LOCAL_RANK`` (and ``NODE_RANK`` across nodes), so that is the fallback.
    """

    def read(name: str) -> int | None:
        value = os.environ.get(name, "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None

    for name in ("RANK", "SLURM_PROCID"):
        rank = read(name)
        if rank is not None:
            return rank
    local, node = read("LOCAL_RANK") or 0, read("NODE_RANK") or read("GROUP_RANK") or 0
    return local + node * max(1, read("LOCAL_WORLD_SIZE") or 1)


def _build(
    root: Path, *, data: DataConfig, records: Sequence[Record] | None, progress: bool
) -> None:
    from cxrkit.data.preprocess import build_cache  # the writer's deps are not needed to read

    to_build = read_manifest(data.manifest) if data.manifest else []
    known = {r.image_id for r in to_build}
    to_build += [r for r in records or () if r.image_id not in known]
    if not to_build:
        raise ConfigError(
            f"{root}: no cache there and nothing to build it from (data.manifest is not set and "
            "no records were given)"
        )
    log.info("building the cache at %s from %d records", root, len(to_build))
    summary = build_cache(
        records=to_build,
        out_dir=root,
        recipe=data.preprocess,
        workers=data.num_workers,
        on_error=data.on_error,
        progress=progress,
    )
    if summary.failed:
        log.warning(
            "%s: %d of %d images could not be cached and were skipped; see %s",
            root,
            summary.failed,
            len(to_build),
            summary.errors_file,
        )


def _wait_for_index(root: Path, *, rank: int) -> None:
    raw = os.environ.get(CACHE_WAIT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else CACHE_WAIT_S
    except ValueError:
        raise ConfigError(f"{CACHE_WAIT_ENV}={raw!r} is not a number of seconds") from None
    poll = min(10.0, max(0.05, timeout / 100))
    log.info(
        "rank %d: waiting up to %.0f s for rank 0 to build the cache at %s", rank, timeout, root
    )
    deadline = time.monotonic() + timeout
    while not (root / INDEX_FILE).is_file():
        if time.monotonic() >= deadline:
            raise MissingFileError(
                f"{root}: rank {rank} waited {timeout:.0f} s for global rank 0 to build the cache "
                f"but {INDEX_FILE} did not appear; check rank 0's log for its error, build the "
                f"cache beforehand with `cxrkit preprocess --manifest M --out {root}`, or wait "
                f"longer with {CACHE_WAIT_ENV}=SECONDS"
            )
        time.sleep(poll)


def _check_recipe(root: Path, wanted: PreprocessConfig) -> None:
    stored = cache_layout.read_recipe(root)
    expected = asdict(wanted)
    changed = [k for k in cache_layout.recipe_differences(stored, expected) if k in expected]
    if changed:
        details = ", ".join(
            f"{k}: cache {stored.get(k)!r} vs config {expected[k]!r}" for k in changed
        )
        raise ConfigError(
            f"the cache at {root} was built with a different recipe than data.preprocess "
            f"({details}); {root / RECIPE_FILE} must match the config: point data.cache at another "
            f"directory, set data.preprocess to the cache's recipe, or delete {root} to rebuild it"
        )


def _check_in_cache(records: Sequence[Record], cache: Cache, *, on_error: str) -> None:
    missing = [r.image_id for r in records if r.image_id not in cache]
    if not missing:
        return
    examples = ", ".join(repr(i) for i in missing[:_EXAMPLES])
    message = (
        f"{cache.root}: {len(missing)} of {len(records)} requested images are not in the cache "
        f"(e.g. {examples}): they failed or were skipped in preprocess (see "
        f"{cache.root / ERRORS_FILE}) or were added to the manifest after the cache was built"
    )
    if on_error != "skip":
        raise DataError(
            f"{message}; fix them and rerun `cxrkit preprocess`, or set data.on_error=skip to "
            "train without them"
        )
    if not isinstance(records, MutableSequence):
        raise ConfigError(
            f"{message}; data.on_error=skip drops them from the records, which needs a list "
            f"(got {type(records).__name__})"
        )
    log.warning("%s; data.on_error=skip: dropping these %d images", message, len(missing))
    records[:] = [r for r in records if r.image_id in cache]


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
# Augmentation


@dataclass(frozen=True)
class _Strength:
    scale: float  # +- relative zoom
    translate: float  # +- fraction of the side, per axis
    rotate: float  # +- degrees
    intensity: float  # +- brightness and contrast
    p: float  # probability of each transform


_STRENGTHS = {
    "light": _Strength(scale=0.05, translate=0.03, rotate=5.0, intensity=0.1, p=0.5),
    "strong": _Strength(scale=0.15, translate=0.08, rotate=10.0, intensity=0.25, p=0.8),
}
_KINDS = ("classification", "detection")


def default_augment(
    *, kind: str, size: int, strength: str = "light", hflip: bool = False
) -> A.Compose:
    """The default training augmentation for chest X-rays.

    Small affine jitter (zoom, shift, rotation; zero fill) and brightness/contrast, then a resize to
    ``size x size``. Grayscale throughout: no hue, saturation or colour jitter. Boxes go through as
    pascal_voc with label field :data:`BOX_LABEL_FIELD` and are clipped; masks follow the image with
    nearest interpolation.

    Args:
        kind: ``"classification"`` or ``"detection"``. Detection rotates half as much, bounds
            rotated boxes by the inscribed ellipse (tighter than the rotated corners) and drops a
            box with under a quarter of its area left in the image.
        size: output side in pixels. Use the cache's side (``data.preprocess.size``) so that boxes
            stay in cache pixels; a smaller side trains at a lower resolution than the cache.
        strength: ``"light"`` or ``"strong"``.
        hflip: add a random horizontal flip (p = 0.5). Off by default: a chest X-ray is not
            mirror-symmetric (heart and aortic arch on the left, laterality markers), so a flipped
            film is an anatomically impossible image and turns left-sided findings into right-sided
            ones; enable it only for findings whose appearance does not depend on the side.

    Raises:
        ConfigError: unknown ``kind`` or ``strength``, or ``size < 16``.
    """
    if kind not in _KINDS:
        raise ConfigError(f"augmentation kind {kind!r} is not one of {_KINDS}")
    if strength not in _STRENGTHS:
        raise ConfigError(f"augmentation strength {strength!r} is not one of {tuple(_STRENGTHS)}")
    if size < 16:
        raise ConfigError(f"augmentation size must be at least 16 pixels, got {size}")
    s = _STRENGTHS[strength]
    detection = kind == "detection"
    rotate = s.rotate / 2 if detection else s.rotate
    transforms: list[Any] = [A.HorizontalFlip(p=0.5)] if hflip else []
    transforms += [
        A.Affine(
            scale=(1 - s.scale, 1 + s.scale),
            translate_percent={"x": (-s.translate, s.translate), "y": (-s.translate, s.translate)},
            rotate=(-rotate, rotate),
            rotate_method="ellipse" if detection else "largest_box",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=s.p,
        ),
        A.RandomBrightnessContrast(brightness_limit=s.intensity, contrast_limit=s.intensity, p=s.p),
        A.Resize(height=size, width=size),
    ]
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=[BOX_LABEL_FIELD],
        clip=True,
        # Detection: a lesion with under a quarter of its box left in view is no longer a fair
        # positive. Classification keeps every box (they are auxiliary targets there).
        min_visibility=0.25 if detection else 0.0,
        filter_invalid_bboxes=True,
    )
    return A.Compose(transforms, bbox_params=bbox_params)


def _check_augment(augment: Any, *, needs_boxes: bool, dataset: str) -> None:
    if augment is None:
        return
    if not isinstance(augment, A.Compose):
        raise ConfigError(
            f"{dataset}: augment must be an albumentations Compose (e.g. "
            f"datasets.default_augment(...)), got {type(augment).__name__}"
        )
    if not needs_boxes:
        return
    processor = augment.processors.get("bboxes")
    params = getattr(processor, "params", None)
    if (
        params is None
        or params.format != "pascal_voc"
        or BOX_LABEL_FIELD not in (params.label_fields or ())
    ):
        raise ConfigError(
            f"{dataset}: the records have boxes, so augment needs "
            f"bbox_params=A.BboxParams(format='pascal_voc', label_fields=[{BOX_LABEL_FIELD!r}], "
            "clip=True) to move them with the image"
        )


def _apply_augment(
    augment: A.Compose, *, image: np.ndarray, masks: list[np.ndarray], boxes: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Augment image, masks and boxes together. Returns them and, per kept box, its input index."""
    height, width = image.shape
    inputs: dict[str, Any] = {"image": image}
    if masks:
        inputs["masks"] = masks
    has_box_processor = "bboxes" in augment.processors
    if has_box_processor:
        # Mapped boxes can pass the border by float rounding, which albumentations rejects.
        inputs["bboxes"] = _clip_boxes(boxes, width=width, height=height)
        inputs[BOX_LABEL_FIELD] = np.arange(len(boxes), dtype=np.int64)
    elif len(boxes):
        raise ConfigError(f"augment has no bbox_params but the image has {len(boxes)} boxes")
    out = augment(**inputs)
    image = out["image"]
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8):
        raise ConfigError(
            "augment must return the image as a uint8 array (leave out Normalize/ToTensorV2: the "
            f"dataset converts to tensors), got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    new_masks = [np.asarray(m) for m in out["masks"]] if masks else []
    if not has_box_processor:
        return image, new_masks, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    index = np.asarray(out[BOX_LABEL_FIELD], dtype=np.int64).reshape(-1)
    boxes = _clip_boxes(boxes, width=image.shape[1], height=image.shape[0])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_AUGMENTED_BOX_SIDE) & (
        (boxes[:, 3] - boxes[:, 1]) >= MIN_AUGMENTED_BOX_SIDE
    )
    return image, new_masks, boxes[keep], index[keep]


def _clip_boxes(boxes: np.ndarray, *, width: int, height: int) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


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


def _parse_groups(entries: Sequence[str], *, what: str) -> list[findings_mod.Finding]:
    try:
        return findings_mod.parse_all(entries, what=what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
        self._seeded_with: int | None = None

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

    def _seed_worker(self) -> None:
        transform = self._random_transform()
        info = get_worker_info()
        if info is None or transform is None or not hasattr(transform, "set_random_seed"):
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
        return _clip_boxes(boxes, width=geometry.width, height=geometry.height)


class UnlabeledDataset(_CacheDataset):
    """Cache images without labels, for self-supervised pretraining.

    Item: ``{"image_id": str, "image": ...}`` where ``image`` is

    * ``transform(image)`` for a plain callable taking the uint8 (H, W) ndarray; for two-view
      pretraining it returns the views (e.g. a list of two tensors), which :func:`collate` batches
      per view. Randomness from ``torch``, ``numpy`` or ``random`` differs per DataLoader worker
      (torch seeds them); a transform with its own generator should offer ``set_random_seed(seed)``,
      which each worker calls with its torch seed.
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
            out = _to_tensor(_apply_augment(self.transform, image=image, masks=[], boxes=empty)[0])
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
    """

    def __init__(
        self,
        *,
        records: Sequence[Record],
        cache: Cache,
        findings: Sequence[str],
        masks: Sequence[str] = (),
        augment: A.Compose | None = None,
    ) -> None:
        super().__init__(records=records, cache=cache, name="ClassificationDataset")
        groups = _parse_groups(findings, what="ClassificationDataset findings")
        if not groups:
            raise ConfigError("ClassificationDataset: findings is empty")
        if isinstance(masks, str):
            raise ConfigError(f"ClassificationDataset: masks must be a list, got {masks!r}")
        self.findings = [name for name, _ in groups]
        self.masks = list(masks)
        self.augment = augment
        _check_augment(
            augment,
            needs_boxes=any(r.boxes for r in records),
            dataset="ClassificationDataset",
        )
        stated = {f for r in records for f in r.labels}
        for name, members in groups:
            if records and not stated.intersection(members):
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
            image, present, boxes, kept = _apply_augment(
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
        groups = _parse_groups(classes, what="DetectionDataset classes")
        if not groups:
            raise ConfigError("DetectionDataset: classes is empty")
        if isinstance(ignore, str):
            raise ConfigError(f"DetectionDataset: ignore must be a list, got {ignore!r}")
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
        _check_augment(augment, needs_boxes=True, dataset="DetectionDataset")
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
            image, _, boxes, kept = _apply_augment(self.augment, image=image, masks=[], boxes=boxes)
            labels = labels[kept]
        return {
            "image_id": item["image_id"],
            "view": item["view"],
            "image": _to_tensor(image),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
        }
