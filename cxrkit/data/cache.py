"""The preprocessed-image cache: its on-disk layout, the geometry of each image, and a reader.

Layout of a cache directory (written by :mod:`cxrkit.data.preprocess`, read here)::

    recipe.json                       the preprocessing recipe and output size (a rerun must match)
    index.parquet                     one row per finished image: image_id, file, geometry, masks,
                                      sha256 and size in bytes of the PNG
    items/<xx>/<key>.png              the image: uint8, single channel, height x width cache pixels
    items/<xx>/<key>.mask.<name>.png  masks mapped into cache pixels (uint8 0/255), one per name
    journal/<run>-<pid>.jsonl         while a run goes on: one line per item a worker process
                                      finished (its index row, as JSON), appended after the PNG
                                      landed; merged into index.parquet at the end, then removed
    journal/<run>-<pid>.u8            their raw pixels, for packing the store (removed with it)
    errors.csv                        items skipped with --on-error skip: image_id, path, reason
    store/                            the same images as raw memory-mapped shards, when packed
                                      (:mod:`cxrkit.data.store`; training sizes, side <= 512)

``<key>`` is a readable, filename-safe prefix of the image id followed by 32 hex digits of the id's
sha256, so two ids never share a file: not ids that differ only after a dot (DICOM UIDs), nor in
characters the prefix replaces, nor only in case on a case-insensitive file system. ``<xx>`` (two
hex digits of the same hash) spreads files over folders. ``recipe.json`` records the layout version
(``cache_layout``); a cache from the old scheme, in which ids could collide, is refused by name.
An item is finished when its row is in the index or in a journal and its PNG still has the
recorded size and sha256: a killed run resumes from the index plus the journals its workers left,
redoing only items whose files do not match (caches written before the journals, with one JSON
sidecar per item, resume from their index the same way). Loading an image reads it from the store
when the store holds it packed from the PNG the index names (its crc32 checked on a process's
first read), else from the PNG, checked against the sha256 in the index; a cache without a store
(built before it existed, or above 512 px) reads its PNGs.

Geometry: an original image of ``orig_width x orig_height`` is zero-padded by ``pad_left`` and
``pad_top`` (and right/bottom) and resized by ``scale_x``/``scale_y``, so for any point::

    x_cache = (x_orig + pad_left) * scale_x        x_orig = x_cache / scale_x - pad_left
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from cxrkit import io
from cxrkit.data.store import Store
from cxrkit.errors import ConfigError, DataError, ImageReadError, MissingFileError

RECIPE_FILE = "recipe.json"
INDEX_FILE = "index.parquet"
ERRORS_FILE = "errors.csv"
ITEMS_DIR = "items"
JOURNAL_DIR = "journal"
LAYOUT_KEY = "cache_layout"
LAYOUT_VERSION = 2  # 1: keys cut at the last dot by Path.with_suffix, so ids could collide

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX_CHARS = 64


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How one original image maps into its cache image (see the module docstring)."""

    orig_width: int
    orig_height: int
    pad_left: float
    pad_top: float
    scale_x: float
    scale_y: float
    width: int  # cache image width
    height: int  # cache image height

    def boxes_to_cache(self, boxes: np.ndarray) -> np.ndarray:
        """boxes: (N, 4) x1y1x2y2 in original pixels -> (N, 4) float32 in cache pixels."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, [0, 2]] = (b[:, [0, 2]] + self.pad_left) * self.scale_x
        out[:, [1, 3]] = (b[:, [1, 3]] + self.pad_top) * self.scale_y
        return out.astype(np.float32)

    def boxes_to_original(self, boxes: np.ndarray, *, clip: bool = True) -> np.ndarray:
        """boxes: (N, 4) x1y1x2y2 in cache pixels -> (N, 4) float32 in original pixels.

        With ``clip`` the result is clipped to the original image (a box predicted in the padding
        shrinks to the image border).
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, [0, 2]] = b[:, [0, 2]] / self.scale_x - self.pad_left
        out[:, [1, 3]] = b[:, [1, 3]] / self.scale_y - self.pad_top
        if clip:
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_width)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_height)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def item_key(image_id: str) -> str:
    """Filename-safe key for an image id (or a mask name), injective in practice.

    The key is ``<prefix>-<hash>``: ``<prefix>`` keeps up to 64 characters of the id with anything
    but ``[A-Za-z0-9_-]`` replaced by ``_`` (dots too, so nothing downstream can mistake part of an
    id for a file suffix); ``<hash>`` is 32 lowercase hex digits (128 bits) of the id's sha256, so
    ids that differ anywhere, in case only or in unicode normalisation, map to different names.
    """
    prefix = _UNSAFE.sub("_", image_id)[:_PREFIX_CHARS]
    return f"{prefix}-{_digest(image_id)[:32]}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def item_stem(root: str | Path, image_id: str) -> Path:
    """Path of an item without suffix: ``root/items/<xx>/<key>``."""
    return Path(root) / ITEMS_DIR / _digest(image_id)[:2] / item_key(image_id)


def image_file(image_id: str) -> str:
    """The image's path relative to the cache directory, as the index's ``file`` holds it."""
    return f"{ITEMS_DIR}/{_digest(image_id)[:2]}/{item_key(image_id)}.png"


def _with_suffix(stem: Path, suffix: str) -> Path:
    # Appended, never Path.with_suffix: that cuts a stem at its last dot.
    return stem.with_name(stem.name + suffix)


def image_path(root: str | Path, image_id: str) -> Path:
    return _with_suffix(item_stem(root, image_id), ".png")


def mask_path(root: str | Path, image_id: str, name: str) -> Path:
    return _with_suffix(item_stem(root, image_id), f".mask.{item_key(name)}.png")


def recipe_record(recipe: dict[str, Any]) -> dict[str, Any]:
    """What ``recipe.json`` holds: the recipe plus the item-naming layout version."""
    return {**recipe, LAYOUT_KEY: LAYOUT_VERSION}


def read_recipe(root: str | Path) -> dict[str, Any]:
    """The recipe stored in ``root/recipe.json``, without the layout key.

    Raises:
        ConfigError: the file is unreadable, or the cache was built with another item-naming
            layout (before version 2, ids differing only after a dot could share one file).
    """
    path = Path(root) / RECIPE_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable recipe ({exc}); delete {root} to rebuild") from exc
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: not a JSON object; delete {root} to rebuild")
    layout = stored.pop(LAYOUT_KEY, None)
    if layout != LAYOUT_VERSION:
        raise ConfigError(
            f"{root}: cache built with item-naming layout {layout or 1}, in which image ids that "
            f"differ only after a dot (DICOM UIDs) can share one file; this cxrkit reads layout "
            f"{LAYOUT_VERSION}: rebuild it (delete {root}, or preprocess into a new --out)"
        )
    return stored


def recipe_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two recipes (either side may lack a key)."""
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def read_png(path: Path, *, sha256: str | None = None) -> np.ndarray:
    """Read a cache PNG as uint8 (H, W); a clear error if it is missing, corrupt, or (with
    ``sha256``) not the file the index recorded."""
    try:
        data = path.read_bytes()
    except OSError:
        raise ImageReadError(f"{path}: cache file missing (rerun `cxrkit preprocess`)") from None
    if sha256 is not None and io.sha256(data) != sha256:
        raise ImageReadError(
            f"{path}: cache file does not match the sha256 in {INDEX_FILE} (replaced or damaged "
            "after preprocessing); rerun `cxrkit preprocess` on this cache to redo it"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise ImageReadError(f"{path}: cache file is empty or corrupt (rerun `cxrkit preprocess`)")
    return image


class Cache:
    """Read-only view of a finished cache directory.

    ``load(image_id)`` returns uint8 (height, width) in cache pixels; ``geometry(image_id)`` maps
    boxes between original and cache pixels; ``load_mask(image_id, name)`` returns uint8 {0, 255}
    or None.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        recipe, index = self.root / RECIPE_FILE, self.root / INDEX_FILE
        if not recipe.is_file() or not index.is_file():
            raise MissingFileError(
                f"{self.root}: not a finished cache (no {RECIPE_FILE} or {INDEX_FILE}); "
                "build it with `cxrkit preprocess --manifest M --out CACHE_DIR`"
            )
        self.recipe: dict[str, Any] = read_recipe(self.root)
        try:
            rows = pq.read_table(index).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid is a ValueError
            raise DataError(
                f"{index}: unreadable cache index ({exc}); rerun `cxrkit preprocess` on this "
                "cache: it rebuilds the index from the finished items"
            ) from None
        self._rows: dict[str, dict[str, Any]] = {row["image_id"]: row for row in rows}
        self.store: Store | None = Store(self.root) if Store.exists(self.root) else None

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    def _row(self, image_id: str) -> dict[str, Any]:
        try:
            return self._rows[image_id]
        except KeyError:
            raise DataError(
                f"{self.root}: image {image_id!r} is not in the cache (skipped or failed in "
                f"preprocess? see {ERRORS_FILE})"
            ) from None

    def geometry(self, image_id: str) -> Geometry:
        return Geometry.from_dict(json.loads(self._row(image_id)["geometry"]))

    def load(self, image_id: str) -> np.ndarray:
        row = self._row(image_id)
        png = self.root / row["file"]
        if self.store is not None and self.store.has(image_id, png=png, png_sha256=row["sha256"]):
            return self.store.load(image_id)
        return read_png(png, sha256=row["sha256"])

    def mask_names(self, image_id: str) -> list[str]:
        return list(self._row(image_id)["masks"] or [])

    def load_mask(self, image_id: str, name: str) -> np.ndarray | None:
        if name not in self.mask_names(image_id):
            return None
        return read_png(mask_path(self.root, image_id, name))
