"""Image files read the way a model's cache was built, without a manifest or a cache directory.

A trained model carries its preprocessing recipe (``config.data.preprocess``). To run it on a few
files, :func:`read_for_model` reads each one with the reader the cache build uses
(:func:`cxrkit.data.images.read_levels`: DICOM Modality LUT, the VOI LUT / window when the recipe
asks for it, MONOCHROME1 inverted) and applies the same recipe
(:func:`cxrkit.data.preprocess.apply_recipe`), so the pixels equal what ``build_cache`` writes for
that file, bit for bit. :func:`read_images` does it for many files and wraps the result as records
plus a :class:`MemoryCache`, which every Dataset and ``predict`` function reads like a cache
directory::

    images = single.read_images(["a.dcm", "b.png"], recipe=config.data.preprocess)
    frame = finetune.predict(model, records=images.records, cache=images.cache, classes=...)

Image ids are the files' stems; files sharing a stem are told apart by their path as given.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cxrkit.config import PreprocessConfig
from cxrkit.data.cache import Cache, Geometry
from cxrkit.data.images import read_levels
from cxrkit.data.preprocess import ON_ERROR, apply_recipe
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, CxrkitError, DataError

log = logging.getLogger(__name__)

SOURCE = "file"  # the records' source: files named by a user, not a dataset


@dataclass(frozen=True)
class Prepared:
    """One file as the model sees it.

    Attributes:
        path: the file as given.
        image_id: its id among the files read together (:func:`image_ids`).
        image: uint8 (size, size) cache pixels, as ``build_cache`` writes them.
        geometry: maps x1y1x2y2 boxes between the file's pixels and ``image``.
        meta: the reader's metadata (``format``; DICOM header fields such as ``view``).
    """

    path: str
    image_id: str
    image: np.ndarray
    geometry: Geometry
    meta: dict[str, Any] = field(default_factory=dict)


def read_for_model(
    path: str | Path, *, recipe: PreprocessConfig, image_id: str | None = None
) -> Prepared:
    """Read one PNG / JPEG / TIFF / DICOM file and apply ``recipe`` to it.

    Args:
        path: the image file.
        recipe: the model's preprocessing recipe (``config.data.preprocess``).
        image_id: the id to give it (default: the file's stem).

    Returns:
        The cache-resolution image and its geometry (:class:`Prepared`).

    Raises:
        ImageReadError: a missing, empty or undecodable file (DicomReadError for DICOM).
        DataError: an image the recipe cannot use (empty, NaN or infinite values), naming the file.
    """
    image, meta = read_levels(path, apply_voi_lut=recipe.apply_voi_lut)
    try:
        out, geometry = apply_recipe(image, recipe=recipe)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return Prepared(
        path=str(path),
        image_id=image_id if image_id is not None else Path(path).stem,
        image=out,
        geometry=geometry,
        meta=meta,
    )


def to_original(image: np.ndarray, *, geometry: Geometry) -> np.ndarray:
    """A cache image brought back to the file's pixels: resized to the padded side, the padding cut.

    Args:
        image: uint8 (geometry.height, geometry.width) cache pixels.

    Returns:
        uint8 (orig_height, orig_width): what the model saw, on the original pixel grid (boxes in
        original pixels fall on it as they fall on the file).
    """
    side_w = int(round(geometry.width / geometry.scale_x))
    side_h = int(round(geometry.height / geometry.scale_y))
    shrinking = side_w < geometry.width or side_h < geometry.height
    resized = cv2.resize(
        image, (side_w, side_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    left, top = int(geometry.pad_left), int(geometry.pad_top)
    crop = resized[top : top + geometry.orig_height, left : left + geometry.orig_width]
    return np.ascontiguousarray(crop)


def image_ids(paths: Sequence[str | Path]) -> list[str]:
    """The ids of files read together: each file's stem, or its path as given when two files share
    a stem (``a/x.png`` and ``b/x.dcm``).

    Raises:
        ConfigError: the same path given twice.
    """
    texts = [str(p) for p in paths]
    repeated = [p for p, n in Counter(texts).items() if n > 1]
    if repeated:
        raise ConfigError(f"{repeated[0]}: given more than once")
    stems = Counter(Path(p).stem for p in texts)
    return [Path(p).stem if stems[Path(p).stem] == 1 else p for p in texts]


class MemoryCache(Cache):
    """A :class:`~cxrkit.data.cache.Cache` held in memory: the images of :func:`read_images`.

    It answers ``load``, ``geometry``, ``mask_names`` and ``load_mask`` (no masks) like a cache
    directory, so the Datasets and every stage's ``predict`` read it unchanged.
    """

    def __init__(self, items: Sequence[Prepared], *, recipe: PreprocessConfig) -> None:
        # A cache directory's constructor reads recipe.json and index.parquet; nothing to read here.
        self.root = Path("<files in memory>")
        self.recipe = dict(vars(recipe))
        self.store = None
        self._items = {item.image_id: item for item in items}
        self._rows = {}  # the directory cache's index; every reader of it is overridden below

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        return list(self._items)

    def _item(self, image_id: str) -> Prepared:
        try:
            return self._items[image_id]
        except KeyError:
            raise DataError(f"image {image_id!r} is not among the files read") from None

    def geometry(self, image_id: str) -> Geometry:
        return self._item(image_id).geometry

    def load(self, image_id: str) -> np.ndarray:
        return self._item(image_id).image

    def mask_names(self, image_id: str) -> list[str]:
        self._item(image_id)
        return []

    def load_mask(self, image_id: str, name: str) -> np.ndarray | None:
        self._item(image_id)
        return None


@dataclass(frozen=True)
class Failed:
    """A file :func:`read_images` skipped, and why (the error's message, which names the file)."""

    path: str
    reason: str


@dataclass
class Images:
    """Files read with one recipe: the read ones (in the order given) and the skipped ones."""

    items: list[Prepared]
    cache: MemoryCache
    failed: list[Failed] = field(default_factory=list)

    @property
    def records(self) -> list[Record]:
        """One record per read file (split ``unassigned``, no labels), for a stage's ``predict``."""
        return [
            Record(
                image_id=item.image_id,
                source=SOURCE,
                path=item.path,
                patient_id=item.image_id,
                width=item.geometry.orig_width,
                height=item.geometry.orig_height,
            )
            for item in self.items
        ]

    @property
    def paths(self) -> dict[str, str]:
        """image_id -> the file as given."""
        return {item.image_id: item.path for item in self.items}


def read_images(
    paths: Sequence[str | Path],
    *,
    recipe: PreprocessConfig,
    on_error: str = "fail",
    ids: Sequence[str] | None = None,
) -> Images:
    """Read every file of ``paths`` with :func:`read_for_model`.

    Args:
        paths: image files (PNG, JPEG, TIFF, DICOM with or without a suffix).
        recipe: the model's preprocessing recipe.
        on_error: ``"fail"`` raises on the first unreadable file; ``"skip"`` lists it in
            ``Images.failed`` (and logs it) and reads the others.
        ids: the files' image ids (default: :func:`image_ids`).

    Raises:
        ConfigError: no paths, a path given twice, ids not one distinct per file, a bad
            ``on_error``.
        ImageReadError, DataError: with ``on_error="fail"``, the first file that cannot be read.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not paths:
        raise ConfigError("no image file given")
    items, failed = [], []
    ids = image_ids(paths) if ids is None else list(ids)
    if len(ids) != len(paths) or len(set(ids)) != len(ids):
        raise ConfigError(f"give one distinct image id per file ({len(paths)} files)")
    for path, image_id in zip(paths, ids, strict=True):
        try:
            items.append(read_for_model(path, recipe=recipe, image_id=image_id))
        except CxrkitError as exc:
            if on_error == "fail":
                raise
            log.warning("skipped %s", exc)
            failed.append(Failed(path=str(path), reason=str(exc)))
    return Images(items=items, cache=MemoryCache(items, recipe=recipe), failed=failed)


def ensure_read(
    images: str | Path | Sequence[str | Path] | Images,
    *,
    recipe: PreprocessConfig,
    on_error: str = "fail",
) -> Images:
    """``images`` as :class:`Images`: read with ``recipe`` (:func:`read_images`) unless already
    read, in which case they must have been read with that same recipe.

    Raises:
        ConfigError: images read with another recipe; as :func:`read_images`.
    """
    if isinstance(images, Images):
        if images.cache.recipe != dict(vars(recipe)):
            raise ConfigError("these images were read with another preprocessing recipe")
        return images
    if isinstance(images, str | Path):
        images = [images]
    return read_images(images, recipe=recipe, on_error=on_error)


PATH_COLUMN = "path"  # the file as given: the first column of every frame of predictions on files


def with_paths(frame: pd.DataFrame, images: Images) -> pd.DataFrame:
    """``frame`` (with an ``image_id`` column) with each row's file as its first column,
    ``path``, and the skipped files in ``frame.attrs["failed"]`` (``[{"path", "reason"}]``)."""
    frame.insert(0, PATH_COLUMN, frame["image_id"].map(images.paths).astype(object))
    frame.attrs["failed"] = [{"path": f.path, "reason": f.reason} for f in images.failed]
    return frame
