"""The preprocessing recipe and the parallel, resumable cache writer behind ``cxrkit preprocess``.

Recipe (ARCHITECTURE.md, "Preprocessing"; each step is a switch in
:class:`cxrkit.config.PreprocessConfig`), applied to the float32 display image from
:func:`cxrkit.data.images.read_image`:

1. clip to the ``clip_low``..``clip_high`` intensity percentiles (0.5 / 99.5): a few saturated
   pixels (labels, markers, collimator edges) must not decide the contrast;
2. min-max to [0, 255] uint8;
3. zero-pad to a square, centred (``pad_left = (side - w) // 2``), so the aspect ratio survives;
4. CLAHE (OpenCV) for local contrast;
5. resize to ``size x size`` (area interpolation when shrinking, bilinear when enlarging).

Without padding the image is resized straight to ``size x size`` and ``scale_x != scale_y``. The
returned :class:`cxrkit.data.cache.Geometry` maps boxes both ways.

The cache layout is documented in :mod:`cxrkit.data.cache`. Every file is written atomically;
each worker process appends the index row of every item it finished to its own journal, which the
end of the run merges into the index, so a killed run resumes by skipping items whose PNG still
has the size and sha256 recorded there (one read and a hash, no decode). The parent does O(1)
work per item (a dictionary lookup out, a small row back), so the pool scales with its workers.
:func:`cxrkit.io.atomic_write` gives each write a temporary name unique per process and call, so
two writers of one cache never share a temporary file.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import io
import json
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxrkit.config import PreprocessConfig
from cxrkit.data import cache, store
from cxrkit.data.cache import Geometry
from cxrkit.data.images import GreyLevels, read_image, read_levels
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, CxrkitError, DataError
from cxrkit.io import atomic_write, sha256
from cxrkit.progress import Progress

try:
    import fcntl  # journals are locked while their writer lives (POSIX)
except ImportError:  # Windows: stale journals are left in place
    fcntl = None

ON_ERROR = ("fail", "skip")

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("file", pa.string()),  # PNG path relative to the cache directory
        ("geometry", pa.string()),  # JSON of Geometry.to_dict()
        ("masks", pa.list_(pa.string())),
        ("sha256", pa.string()),  # of the PNG bytes
        ("size", pa.int64()),  # of the PNG in bytes: a resume checks it before hashing
    ]
)


# --------------------------------------------------------------------------------------------------
# The recipe on one image

# Integer images spanning at most this many grey levels get their percentiles from a histogram.
_HISTOGRAM_MAX_LEVELS = 1 << 20


def percentiles(x: np.ndarray, q: Sequence[float]) -> list[float]:
    """``np.percentile(x, q)`` (its default "linear" method), fast for integer-valued images.

    Radiographs are almost always integers (8-/16-bit files, DICOM without fractional rescale):
    counting grey levels is one pass, where ``np.percentile`` partially sorts the whole image
    (several times slower on a 2048 x 2048 image). Anything else falls back to ``np.percentile``.
    """
    low, high = float(x.min()), float(x.max())
    if high - low < _HISTOGRAM_MAX_LEVELS:
        as_int = x.astype(np.int64 if abs(low) > 2**30 or abs(high) > 2**30 else np.int32)
        # Back to float32 for the comparison: comparing int32 with float32 goes through float64.
        if np.array_equal(as_int.astype(np.float32), x):
            shifted = as_int - int(low)
            levels = int(high - low) + 1
            if levels <= 1 << 16 and x.size < 1 << 24:
                # OpenCV's histogram is ~2x faster than np.bincount; its float32 counts are exact
                # below 2**24 pixels.
                hist = cv2.calcHist([shifted.astype(np.uint16)], [0], None, [levels], [0, levels])
                counts = hist.ravel().astype(np.int64)
            else:
                counts = np.bincount(shifted.ravel())
            cumulative = np.cumsum(counts)
            n = x.size
            values = []
            for p in q:
                # Linear interpolation between order statistics k and k + 1 at rank p% of (n - 1).
                rank = p / 100.0 * (n - 1)
                k = int(np.floor(rank))
                below = int(np.searchsorted(cumulative, k, side="right"))
                above = int(np.searchsorted(cumulative, min(k + 1, n - 1), side="right"))
                values.append(low + below + (rank - k) * (above - below))
            return values
    return [float(v) for v in np.percentile(x, list(q))]


def level_percentiles(levels: GreyLevels, q: Sequence[float]) -> list[float]:
    """:func:`percentiles` of ``levels.to_image()``, from the histogram of its grey levels.

    The same numbers as :func:`percentiles` on the expanded image (its histogram formula when the
    values are integers spanning fewer than 2**20, ``np.percentile``'s "linear" method otherwise),
    found among at most 65,536 distinct values instead of every pixel.
    """
    counts = levels.counts()
    present = counts > 0
    values, counts = levels.values[present], counts[present]
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    n = int(cumulative[-1])

    def order_statistic(k: int) -> np.float32:  # the k-th smallest pixel value, 0-based
        return values[int(np.searchsorted(cumulative, k, side="right"))]

    low, high = float(values[0]), float(values[-1])
    if high - low < _HISTOGRAM_MAX_LEVELS:
        as_int = values.astype(np.int64 if abs(low) > 2**30 or abs(high) > 2**30 else np.int32)
        if np.array_equal(as_int.astype(np.float32), values):  # as percentiles() decides
            out = []
            for p in q:
                rank = p / 100.0 * (n - 1)
                k = int(np.floor(rank))
                below = int(float(order_statistic(k)) - low)
                above = int(float(order_statistic(min(k + 1, n - 1))) - low)
                out.append(low + below + (rank - k) * (above - below))
            return out
    # np.percentile(x, q, method="linear") step by step (numpy's _quantile and _lerp), on the
    # two order statistics around each virtual index, in the same dtypes.
    virtual = (n - 1) * np.true_divide(np.asanyarray(list(q)), 100)
    previous = np.floor(virtual)
    gamma = virtual - previous
    last = virtual >= n - 1
    prev_idx = np.where(last, n - 1, np.maximum(previous, 0)).astype(np.int64)
    next_idx = np.where(last, n - 1, np.maximum(previous + 1, 0)).astype(np.int64)
    a = np.array([order_statistic(int(k)) for k in prev_idx], dtype=values.dtype)
    b = np.array([order_statistic(int(k)) for k in next_idx], dtype=values.dtype)
    diff_b_a = b - a
    result = np.add(a, diff_b_a * gamma)
    np.subtract(b, diff_b_a * (1 - gamma), out=result, where=gamma >= 0.5, casting="unsafe")
    return [float(v) for v in result]


def _stretch(x: np.ndarray, *, clip: tuple[float, float] | None, shown: np.ndarray | None = None):
    """Steps 1-2 of the recipe, elementwise on float32 ``x``: clip to ``clip``, then min-max to
    uint8 over the values in ``shown`` (a mask of ``x``; all of ``x`` when None)."""
    if clip is not None:
        x = np.clip(x, *clip)
    seen = x if shown is None else x[shown]
    low, high = float(seen.min()), float(seen.max())
    if high <= low:  # a constant image carries no contrast to stretch
        return np.zeros(x.shape, dtype=np.uint8)
    scaled = x - np.float32(low)  # a new array: the caller's image is never modified
    scaled *= np.float32(255.0 / (high - low))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _stretch_levels(image: GreyLevels, recipe: PreprocessConfig) -> np.ndarray:
    """Steps 1-2 on grey levels: the recipe maps each level's value on its own, so it runs once
    per level (a lookup table) and the image is looked up, the same uint8 pixels as on
    ``image.to_image()``."""
    clip = None
    if recipe.clip_percentiles:
        low, high = level_percentiles(image, (recipe.clip_low, recipe.clip_high))
        clip = (low, high)
    table = _stretch(image.values, clip=clip, shown=image.counts() > 0)
    if image.levels.dtype == np.uint8:
        table = np.pad(table, (0, 256 - len(table)))
        return cv2.LUT(image.levels, table)
    return _lookup(table, image.levels)


# cxrkit's choice, measured: 64 Ki pixels a block keeps the int64 copy of the indices that numpy
# makes in the CPU cache; a 2048 x 2048 16-bit lookup takes ~10 ms instead of ~18 ms at once.
_LOOKUP_BLOCK = 1 << 16


def _lookup(table: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``table[levels]`` for 16-bit (or wider) integer levels, block by block."""
    flat = levels.reshape(-1)
    out = np.empty(flat.shape, dtype=table.dtype)
    for start in range(0, flat.size, _LOOKUP_BLOCK):
        stop = start + _LOOKUP_BLOCK
        np.take(table, flat[start:stop], out=out[start:stop])
    return out.reshape(levels.shape)


def apply_recipe(
    image: np.ndarray | GreyLevels, *, recipe: PreprocessConfig
) -> tuple[np.ndarray, Geometry]:
    """Turn a display image into a cache image.

    Args:
        image: (H, W) real-valued, higher = brighter (as from :func:`read_image`), any range; or the
            same image as :class:`GreyLevels` (from :func:`read_levels`), which gives the same
            output faster.
        recipe: which steps run, and the output ``size``.

    Returns:
        ``out``: uint8 (size, size). ``geometry``: maps x1y1x2y2 boxes between original (W x H) and
        cache pixels, ``x_cache = (x_orig + pad_left) * scale_x``.

    Raises:
        DataError: not a 2-D image, empty, or containing NaN/inf.
    """
    if len(image.shape) != 2 or 0 in image.shape:
        raise DataError(f"expected a non-empty 2-D image, got shape {image.shape}")
    height, width = image.shape
    if isinstance(image, GreyLevels):
        present = image.counts() > 0
        finite = np.isfinite(image.values)
        if not finite[present].all():
            raise DataError("image contains NaN or infinite values")
        if not finite.all():  # only levels no pixel has: give them a harmless value
            values = np.where(finite, image.values, image.values[present][0])
            image = GreyLevels(levels=image.levels, values=values, _counts=image.counts())
        out = _stretch_levels(image, recipe)
    else:
        x = np.asarray(image, dtype=np.float32)
        if not np.isfinite(x).all():
            raise DataError("image contains NaN or infinite values")
        clip = None
        if recipe.clip_percentiles:
            low, high = percentiles(x, (recipe.clip_low, recipe.clip_high))
            clip = (low, high)
        out = _stretch(x, clip=clip)

    if recipe.pad_square and height != width:
        side = max(height, width)
        pad_left, pad_top = (side - width) // 2, (side - height) // 2
        out = cv2.copyMakeBorder(
            out,
            pad_top,
            side - height - pad_top,
            pad_left,
            side - width - pad_left,
            cv2.BORDER_CONSTANT,
            value=0,
        )
        side_w = side_h = side
    else:  # no padding asked for, or none needed
        pad_left = pad_top = 0
        side_w, side_h = width, height

    if recipe.clahe:
        clahe = cv2.createCLAHE(
            clipLimit=recipe.clahe_clip_limit,
            tileGridSize=(recipe.clahe_tile_grid, recipe.clahe_tile_grid),
        )
        out = clahe.apply(out)

    size = recipe.size
    if (side_w, side_h) != (size, size):
        # Area averaging when any axis shrinks avoids aliasing; bilinear when only enlarging.
        shrinking = size < max(side_w, side_h)
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        out = cv2.resize(out, (size, size), interpolation=interpolation)

    geometry = Geometry(
        orig_width=width,
        orig_height=height,
        pad_left=float(pad_left),
        pad_top=float(pad_top),
        scale_x=size / side_w,
        scale_y=size / side_h,
        width=size,
        height=size,
    )
    return np.ascontiguousarray(out), geometry


def transform_mask(mask: np.ndarray, *, geometry: Geometry) -> np.ndarray:
    """Map a mask from original pixels into cache pixels with the image's padding and scale.

    Args:
        mask: (orig_height, orig_width), any dtype; nonzero = inside.
        geometry: the image's geometry from :func:`apply_recipe`.

    Returns:
        uint8 (geometry.height, geometry.width) with values {0, 255}.

    Raises:
        DataError: the mask's shape differs from the original image's.
    """
    expected = (geometry.orig_height, geometry.orig_width)
    if mask.shape != expected:
        raise DataError(
            f"mask has shape {mask.shape} but its image is {geometry.orig_width}x"
            f"{geometry.orig_height} (W x H)"
        )
    binary = np.where(mask != 0, 255, 0).astype(np.uint8)
    side_w = int(round(geometry.width / geometry.scale_x))
    side_h = int(round(geometry.height / geometry.scale_y))
    left, top = int(geometry.pad_left), int(geometry.pad_top)
    padded = cv2.copyMakeBorder(
        binary,
        top,
        side_h - geometry.orig_height - top,
        left,
        side_w - geometry.orig_width - left,
        cv2.BORDER_CONSTANT,
        value=0,
    )
    # NEAREST_EXACT samples at pixel centres (cv2.INTER_NEAREST is shifted by half a source pixel),
    # so the mask stays aligned with the image resized by the same scale.
    resized = cv2.resize(
        padded, (geometry.width, geometry.height), interpolation=cv2.INTER_NEAREST_EXACT
    )
    return np.ascontiguousarray(resized)


# --------------------------------------------------------------------------------------------------
# One cache item


def _encode_png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise DataError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return buffer.tobytes()


def _mask_names(record: Record) -> list[str]:
    return sorted(record.mask_paths)


def _intact(entry: dict[str, Any], record: Record, out_dir: Path) -> bool:
    """True when ``entry`` (an index row, from the index or a journal) still describes ``record``
    and its files are on disk as recorded: the PNG's size and sha256 (one read, no decode), and
    every mask file present."""
    try:
        geometry = json.loads(entry["geometry"])
        masks = list(entry["masks"] or [])
        if (
            entry["image_id"] != record.image_id
            or entry["file"] != cache.image_file(record.image_id)
            or (geometry["orig_width"], geometry["orig_height"]) != (record.width, record.height)
            or masks != _mask_names(record)
        ):
            return False
        data = (out_dir / entry["file"]).read_bytes()
        # size is None in an index written before it had the column: the hash decides alone
        if entry.get("size") not in (None, len(data)) or sha256(data) != entry["sha256"]:
            return False
    except (OSError, ValueError, KeyError, TypeError):  # missing PNG, damaged entry
        return False
    return all(cache.mask_path(out_dir, record.image_id, name).is_file() for name in masks)


def _check_size(found: tuple[int, int], record: Record, what: str) -> None:
    if found != (record.width, record.height):
        raise DataError(
            f"{what} is {found[0]}x{found[1]} pixels but the manifest says "
            f"{record.width}x{record.height}; its boxes would be misplaced "
            "(re-run `cxrkit prepare`)"
        )


def _build_item(
    record: Record, *, out_dir: Path, recipe: PreprocessConfig
) -> tuple[dict[str, Any], np.ndarray]:
    """Preprocess one record and write its PNG and masks. Returns its index row and the cache
    image (uint8, size x size)."""
    image, _ = read_levels(record.path, apply_voi_lut=recipe.apply_voi_lut)
    _check_size((image.shape[1], image.shape[0]), record, f"{record.path}: decoded image")
    out, geometry = apply_recipe(image, recipe=recipe)
    png = _encode_png(out)
    file = cache.image_file(record.image_id)
    atomic_write(out_dir / file, png)

    for name in _mask_names(record):
        mask_file = record.mask_paths[name]
        mask, _ = read_image(mask_file, apply_voi_lut=False)
        _check_size((mask.shape[1], mask.shape[0]), record, f"{mask_file}: mask {name!r}")
        cached = transform_mask(mask, geometry=geometry)
        atomic_write(cache.mask_path(out_dir, record.image_id, name), _encode_png(cached))

    entry = {
        "image_id": record.image_id,
        "file": file,
        "geometry": json.dumps(geometry.to_dict(), sort_keys=True),
        "masks": _mask_names(record),
        "sha256": sha256(png),  # of the bytes in hand: the file is never read back
        "size": len(png),
    }
    return entry, out


class _Journal:
    """One process's record of the items it finished in one run: ``journal/<run>-<pid>.jsonl``
    (one index row per line) and, when the store is packed, ``.u8`` (their raw pixels).

    A line is appended after the item's PNG has landed (renamed into place), so a killed run
    leaves lines only for items whose files were complete; a torn last line does not parse and is
    ignored. Lines are flushed to the OS per item (a write, ~2 us) but never fsynced: a process
    killed at any point loses nothing the OS has, and after a power loss a line may survive its
    PNG's data (neither is fsynced), which the next run's check of the PNG's size and sha256
    catches and redoes. An fsync per item (or per chunk) would buy only fewer redone items after a
    machine crash, for a disk round trip each time. The file is flock-ed while its writer lives,
    so a later run removes only journals whose writers are gone.
    """

    def __init__(self, out_dir: Path, run: str, *, pixels: bool) -> None:
        folder = out_dir / cache.JOURNAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{run}-{os.getpid()}"
        self.lines = (folder / f"{stem}.jsonl").open("ab")
        if fcntl is not None:
            fcntl.flock(self.lines.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.spool_name = f"{stem}.u8"
        self.spool = (folder / self.spool_name).open("ab") if pixels else None

    def add(self, entry: dict[str, Any], pixels: np.ndarray) -> tuple[str, int] | None:
        """Record a finished item; returns where its pixels are in the spool (None: no spool)."""
        where = None
        if self.spool is not None:
            where = (self.spool_name, self.spool.tell())
            self.spool.write(np.ascontiguousarray(pixels).data)
            self.spool.flush()  # the parent reads the spool while this process may still live
        self.lines.write(json.dumps(entry).encode() + b"\n")
        self.lines.flush()
        return where

    def close(self) -> None:
        self.lines.close()
        if self.spool is not None:
            self.spool.close()


_JOURNALS: dict[tuple[Path, str], _Journal] = {}  # this process's, per (cache, run)


def _journal(out_dir: Path, run: str, *, pixels: bool) -> _Journal:
    journal = _JOURNALS.get((out_dir, run))
    if journal is None:
        journal = _JOURNALS[(out_dir, run)] = _Journal(out_dir, run, pixels=pixels)
    return journal


@dataclass(frozen=True)
class _Outcome:
    image_id: str
    path: str
    status: str  # done | skipped | failed
    entry: dict[str, Any] | None = None  # the index row of a done or skipped item
    pixels: tuple[str, int] | None = None  # (spool file, offset) of a done item's raw pixels
    error: Exception | None = None


def _process_chunk(
    items: list[tuple[Record, dict[str, Any] | None]],
    *,
    out_dir: Path,
    recipe: PreprocessConfig,
    run: str,
    on_error: str,
) -> tuple[list[_Outcome], int, float]:
    """Skip or build each ``(record, known index row or None)``. Runs in a worker process (or in
    the caller's with one worker). User-caused errors come back as outcomes; bugs propagate with
    their traceback unless ``on_error`` is ``"skip"``; with ``"fail"`` the chunk stops at its first
    failure. Returns the outcomes, this process's id and its CPU seconds so far."""
    global _busy
    journal = _journal(out_dir, run, pixels=recipe.size <= store.MAX_SIDE)
    outcomes = []
    for record, known in items:
        with _ITEM_LOCK:  # see _leave: a worker whose parent died finishes this item first
            if _leaving:
                os._exit(_PARENT_GONE)
            _busy = True
        try:
            if known is not None and _intact(known, record, out_dir):
                outcomes.append(_Outcome(record.image_id, record.path, "skipped", entry=known))
                continue
            try:
                entry, pixels = _build_item(record, out_dir=out_dir, recipe=recipe)
            except Exception as exc:
                if not isinstance(exc, CxrkitError) and on_error == "fail":
                    raise  # a bug, not bad input: keep its traceback
                outcomes.append(_Outcome(record.image_id, record.path, "failed", error=exc))
                if on_error == "fail":
                    break
                continue
            where = journal.add(entry, pixels)
            outcomes.append(_Outcome(record.image_id, record.path, "done", entry, where))
        finally:
            with _ITEM_LOCK:
                _busy = False
                if _leaving:
                    os._exit(_PARENT_GONE)
    return outcomes, os.getpid(), time.process_time()


# --------------------------------------------------------------------------------------------------
# Worker processes, and their end when the run's main process dies

_PARENT_GONE = 143  # the exit status of a process ended by SIGTERM (128 + 15)
# cxrkit's choice: a worker notices a dead main process within a second, for one cheap check.
_WATCH_SECONDS = 1.0
_ITEM_LOCK = threading.RLock()  # reentrant: the SIGTERM handler runs on the thread it interrupts
_busy = False  # an item is being written
_leaving = False  # the parent died during that item: exit once it is complete


def _leave(*_: object) -> None:
    """The run's main process is gone: exit now, or right after the item in hand (so that no
    temporary file and no half-recorded item is left behind)."""
    global _leaving
    with _ITEM_LOCK:
        if not _busy:
            os._exit(_PARENT_GONE)
        _leaving = True


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or gone meanwhile
        return True
    return stat[stat.rindex(")") + 2 :].split(maxsplit=1)[0] != "Z"


def _watch_parent(main: int, parent: int) -> None:
    # The pool's own pipes never tell an idle worker that the main process died (each worker
    # holds both ends), so without this it would wait on them forever.
    while True:
        time.sleep(_WATCH_SECONDS)
        if os.getppid() != parent or not _alive(main):
            _leave()


def _init_worker(main: int) -> None:
    """Set up a pool worker of the run whose main process is ``main``.

    Workers must not outlive a main process killed with ``kill -9`` (no cleanup runs there). A
    worker's parent is the forkserver, which lives as long as any worker does (they hold its
    pipe), so the main process's death reaches no worker by itself: a daemon thread checks every
    second that the main process still runs (portable: ``os.kill(pid, 0)``). On Linux
    ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` also covers the forkserver dying first. Either way
    :func:`_leave` ends the worker, after the item it is writing.
    """
    # One OpenCV thread per process: the pool already uses every core, and OpenCV's own thread
    # pool on top of it oversubscribes the CPU and runs slower.
    cv2.setNumThreads(1)
    signal.signal(signal.SIGTERM, _leave)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watcher thread alone
            pass
        _keep_freed_buffers()
    parent = os.getppid()
    threading.Thread(
        target=_watch_parent, args=(main, parent), name="cxrkit-parent-watch", daemon=True
    ).start()
    if not _alive(main):  # died before the watcher started
        _leave()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h> (glibc)


def _keep_freed_buffers() -> None:
    """Have glibc's malloc keep the image-sized buffers a worker frees for its next item.

    A fresh pool process maps every megabyte-sized array anew and page-faults it in, then returns
    it to the OS on free; a long-lived process has raised those thresholds by then. Measured on
    the 2-core CPU (1024 px PNG -> 256, 24 items, 7 interleaved runs, medians): 24.5 ms of CPU per
    item in a pool process as started, 22.4 ms with these settings, 22.5 ms in the main process.
    cxrkit's choice: arrays under 64 MB come from the heap, and up to 128 MB of freed heap stays
    with the process. Only pool processes are changed, never the caller's.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): malloc as it is
        pass


# --------------------------------------------------------------------------------------------------
# The whole cache


@dataclass(frozen=True)
class ItemError:
    """One record that could not be cached (a row of ``errors.csv``)."""

    image_id: str
    path: str
    reason: str


@dataclass
class CacheSummary:
    """What :func:`build_cache` did. ``images_per_second`` counts newly processed images only.

    ``cpu_seconds`` is the CPU time of this process and of every pool process during the run
    (a figure that other people's load on the machine does not change, unlike ``seconds``);
    ``worker_cpu_seconds`` is the part spent on items, here and in the pool, the rest is this
    process's bookkeeping; ``pool_cpu_seconds`` is the pool processes' part (they are not this
    process's children, so ``resource.RUSAGE_CHILDREN`` never sees it).
    """

    done: int
    skipped_existing: int
    failed: int
    seconds: float
    images_per_second: float
    errors: list[ItemError] = field(default_factory=list)
    errors_file: Path | None = None
    cpu_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0
    pool_cpu_seconds: float = 0.0


def _recipe_dict(recipe: PreprocessConfig) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


def _check_or_write_recipe(out_dir: Path, recipe: PreprocessConfig) -> None:
    path = out_dir / cache.RECIPE_FILE
    wanted = _recipe_dict(recipe)
    if path.is_file():
        existing = cache.read_recipe(out_dir)  # refuses the old, colliding item-naming layout
        changed = cache.recipe_differences(existing, wanted)
        if changed:
            details = ", ".join(f"{k}: {existing.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{out_dir} holds a cache built with a different recipe ({details}); "
                f"pick another --out or delete {out_dir}"
            )
        return
    record = cache.recipe_record(wanted)
    atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())


def _known_entries(out_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[Path, set[str]]]:
    """Index rows of items an earlier (or concurrent) run finished: from ``index.parquet``, then
    every journal in modification order (later lines win). Also the ids each journal names.
    Unreadable files and torn lines are skipped: their items are redone."""
    known: dict[str, dict[str, Any]] = {}
    try:
        columns = pq.read_table(out_dir / cache.INDEX_FILE).to_pydict()
    except (OSError, ValueError):  # none yet, or damaged: the journals and the files decide
        columns = {}
    if columns:
        sizes = columns.get("size") or [None] * len(columns["image_id"])
        for image_id, file, geometry, masks, sha, size in zip(
            columns["image_id"], columns["file"], columns["geometry"], columns["masks"],
            columns["sha256"], sizes, strict=True,
        ):  # fmt: skip
            known[image_id] = {
                "image_id": image_id, "file": file, "geometry": geometry, "masks": masks,
                "sha256": sha, "size": size,
            }  # fmt: skip
    journals: dict[Path, set[str]] = {}
    folder = out_dir / cache.JOURNAL_DIR
    paths = list(folder.glob("*.jsonl")) if folder.is_dir() else []
    for path in sorted(paths, key=_mtime):
        ids = journals[path] = set()
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                known[entry["image_id"]] = entry
            except (ValueError, KeyError, TypeError):
                continue
            ids.add(entry["image_id"])
    return known, journals


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _remove_journal(path: Path, *, live_check: bool) -> None:
    """Remove a journal and its spool; with ``live_check`` only when no process holds its lock."""
    if live_check:
        if fcntl is None:  # no way to tell a live writer here: leave it to a later run
            return
        try:
            with path.open("rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # locked by a live run, or gone already
            return
    path.unlink(missing_ok=True)
    path.with_suffix(".u8").unlink(missing_ok=True)


def _write_index(out_dir: Path, entries: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pydict(
        {name: [entry.get(name) for entry in entries] for name in INDEX_SCHEMA.names},
        schema=INDEX_SCHEMA,
    )
    path = out_dir / cache.INDEX_FILE
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


class _SpoolReader:
    """Reads a cache image for :func:`store.pack` from the raw pixels a worker spooled when it
    wrote the PNG (one copy), falling back to decoding the PNG (items finished by an earlier
    run, or a spool removed by a concurrent run)."""

    def __init__(self, out_dir: Path, spooled: dict[str, tuple[str, int]], side: int) -> None:
        self.out_dir, self.spooled, self.side = out_dir, spooled, side
        self.maps: dict[str, np.ndarray | None] = {}

    def _map(self, name: str) -> np.ndarray | None:
        if name not in self.maps:
            try:
                self.maps[name] = np.memmap(self.out_dir / cache.JOURNAL_DIR / name, mode="r")
            except (OSError, ValueError):  # gone, or empty
                self.maps[name] = None
        return self.maps[name]

    def close(self) -> None:
        self.maps.clear()  # unmapped before the spools are removed

    def __call__(self, path: Path, sha: str) -> np.ndarray:
        where = self.spooled.get(path.relative_to(self.out_dir).as_posix())
        if where is not None:
            spool, offset = self._map(where[0]), where[1]
            size = self.side * self.side
            if spool is not None and spool.size >= offset + size:
                return spool[offset : offset + size].reshape(self.side, self.side)
        return cache.read_png(path, sha256=sha)


def _reason(error: Exception, path: str) -> str:
    """The error message without the file-name prefix (errors.csv has a path column)."""
    text = str(error)
    if not isinstance(error, CxrkitError):  # a bug surfaced by this item, kept with on_error=skip
        return f"unexpected {type(error).__name__}: {text}"
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _write_errors(out_dir: Path, errors: list[ItemError]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image_id", "path", "reason"])
    writer.writerows([e.image_id, e.path, e.reason] for e in errors)
    path = out_dir / cache.ERRORS_FILE
    atomic_write(path, buffer.getvalue().encode())
    return path


def _chunks(items: list, workers: int) -> list[list]:
    """``items`` cut into chunks that shrink towards the end (guided self-scheduling).

    cxrkit's choice: each chunk is a quarter of an even share of what is left, at most 32 items
    (about a second of work at 1024 px: the progress bar moves, and a failure with
    ``on_error="fail"`` stops the run promptly) and at least one, so the last chunks are single
    items and no process waits long for another to finish. One item per task all along cost
    ~0.2 ms of parent time per image.
    """
    chunks, start = [], 0
    while start < len(items):
        size = max(1, min(32, (len(items) - start) // (4 * max(1, workers))))
        chunks.append(items[start : start + size])
        start += size
    return chunks


def build_cache(
    *,
    records: Sequence[Record],
    out_dir: Path,
    recipe: PreprocessConfig,
    workers: int = 1,
    on_error: str = "fail",
    progress: bool = True,
) -> CacheSummary:
    """Preprocess every record into the cache at ``out_dir`` (layout: :mod:`cxrkit.data.cache`).

    Resumable: items in the index or a journal whose PNG still has the recorded size and sha256
    (and whose masks exist) are skipped; anything else is redone. ``index.parquet`` is rebuilt at
    the end from the finished items of ``records``, then this run's journals are removed. Runs
    into one cache at the same time write the same bytes.

    Args:
        records: the images to cache; each decoded image must be ``record.width x record.height``.
        out_dir: the cache directory (created if needed).
        recipe: the preprocessing recipe; must equal the one in an existing ``recipe.json``.
        workers: processes working on items: this one and ``workers - 1`` pool processes;
            ``<= 1`` runs in this process alone.
        on_error: ``"fail"`` raises on the first bad item; ``"skip"`` records it in ``errors.csv``
            and carries on.
        progress: show progress: a bar on a terminal, else a line every 30 s with rate and ETA.

    Raises:
        ConfigError: bad ``on_error``, or ``out_dir`` holds a cache built with another recipe.
        DataError: duplicate image ids; with ``on_error="fail"``, the first bad item (an
            ImageReadError for an unreadable file), naming its image id and file.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    out_dir = Path(out_dir)
    seen: set[str] = set()
    for record in records:
        if record.image_id in seen:
            raise DataError(f"duplicate image_id {record.image_id!r} in the records to cache")
        seen.add(record.image_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_recipe(out_dir, recipe)

    start, cpu_start = time.perf_counter(), time.process_time()
    known, old_journals = _known_entries(out_dir)
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    outcomes: dict[str, _Outcome] = {}
    job = partial(_process_chunk, out_dir=out_dir, recipe=recipe, run=run, on_error=on_error)
    chunks = _chunks([(r, known.get(r.image_id)) for r in records], workers)
    items_cpu = 0.0  # CPU seconds on items in this process
    pool_cpu: dict[int, float] = {}  # pid -> CPU seconds so far, of each pool process
    # a bar on a terminal; count, rate and ETA lines in a job log (tqdm alone prints nothing)
    bar = Progress(total=len(records), desc="preprocess", unit="img", enabled=progress)

    def collect(chunk: list[tuple[Record, Any]], results: list[_Outcome]) -> None:
        for (record, _), outcome in zip(chunk, results, strict=False):
            if outcome.status == "failed" and on_error == "fail" and outcome.error is not None:
                error = outcome.error
                reason = _reason(error, record.path)
                message = f"image {record.image_id!r} ({record.path}): {reason}"
                raise type(error)(message) from error
            outcomes[record.image_id] = outcome
            bar.update(1)

    def run_here(chunk: list[tuple[Record, Any]]) -> None:
        nonlocal items_cpu
        before = time.process_time()
        results, _, after = job(chunk)
        items_cpu += after - before
        collect(chunk, results)

    queue = deque(chunks)
    threads = cv2.getNumThreads()
    try:
        if workers <= 1:
            while queue:
                run_here(queue.popleft())
        else:
            # This process works on items too, beside workers - 1 pool processes: it starts at
            # once, while the pool starts (a new interpreter importing OpenCV and pyarrow, ~0.8 s
            # on a CLI run), and no core is left to a parent that only waits. One OpenCV thread
            # here as in the pool (see _init_worker), restored afterwards.
            cv2.setNumThreads(1)
            # forkserver, not fork: a child forked after OpenCV has started its thread pool in this
            # process can deadlock inside cv2 (the pool's locks are copied mid-use).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            children = workers - 1
            with ProcessPoolExecutor(
                max_workers=children,
                mp_context=context,
                initializer=_init_worker,
                initargs=(os.getpid(),),
            ) as pool:
                running: dict[Future, list] = {}  # two chunks per pool process in flight: one
                # running, one queued, so none waits while this process works on a chunk of its own
                in_flight = 2 * children
                failed: list[BaseException] = []

                def fill() -> None:
                    """Hand the pool chunks until ``in_flight`` are there or none is left."""
                    while len(running) < in_flight:
                        try:
                            chunk = queue.popleft()  # atomic: this process may take one meanwhile
                        except IndexError:
                            return
                        running[pool.submit(job, chunk)] = chunk

                def start_pool() -> None:
                    # The first submit waits for the forkserver to start and import this module;
                    # this process works on items meanwhile.
                    try:
                        fill()
                    except BaseException as exc:  # no pool: raised here, after the join
                        failed.append(exc)

                starter = threading.Thread(target=start_pool, name="cxrkit-pool-start", daemon=True)
                starter.start()
                try:
                    while queue and starter.is_alive():
                        run_here(queue.popleft())
                    starter.join()
                    if failed:
                        raise failed[0]
                    while queue or running:
                        for future in [f for f in running if f.done()]:
                            results, pid, cpu = future.result()
                            pool_cpu[pid] = max(cpu, pool_cpu.get(pid, 0.0))
                            collect(running.pop(future), results)
                        fill()
                        if queue:
                            run_here(queue.popleft())
                        elif running:
                            wait(running, return_when=FIRST_COMPLETED)
                except BaseException:
                    queue.clear()  # the starter submits nothing more
                    starter.join()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        cv2.setNumThreads(threads)
        bar.close()
        journal = _JOURNALS.pop((out_dir, run), None)  # this process's
        if journal is not None:
            journal.close()
    seconds = time.perf_counter() - start

    finished = [
        outcomes[r.image_id] for r in records if outcomes[r.image_id].status in ("done", "skipped")
    ]
    entries = [o.entry for o in finished if o.entry is not None]
    _write_index(out_dir, entries)
    if recipe.size <= store.MAX_SIDE:  # training sizes: the loader reads raw shards, not PNGs
        spooled = {o.entry["file"]: o.pixels for o in finished if o.pixels and o.entry}
        reader = _SpoolReader(out_dir, spooled, recipe.size)
        store.pack(out_dir, rows=entries, read=reader)
        reader.close()
    # The index now holds every item this run's journals name, and every item of an older journal
    # whose ids all belong to this run; those journals go (an older one only once its writer is
    # gone), the others stay for a run that covers them.
    for path in (out_dir / cache.JOURNAL_DIR).glob(f"{run}-*.jsonl"):
        _remove_journal(path, live_check=False)
    for path, ids in old_journals.items():
        if ids <= seen:
            _remove_journal(path, live_check=True)
    errors = [
        ItemError(o.image_id, o.path, _reason(o.error, o.path) if o.error else "unknown error")
        for o in (outcomes[r.image_id] for r in records)
        if o.status == "failed"
    ]
    errors_file = None
    if errors:
        errors_file = _write_errors(out_dir, errors)
    else:  # an errors.csv from an earlier run no longer describes this cache
        (out_dir / cache.ERRORS_FILE).unlink(missing_ok=True)
    done = sum(o.status == "done" for o in outcomes.values())
    parent_cpu = time.process_time() - cpu_start
    children_cpu = sum(pool_cpu.values())
    return CacheSummary(
        done=done,
        skipped_existing=sum(o.status == "skipped" for o in outcomes.values()),
        failed=len(errors),
        seconds=seconds,
        images_per_second=done / seconds if seconds > 0 else 0.0,
        errors=errors,
        errors_file=errors_file,
        cpu_seconds=parent_cpu + children_cpu,
        worker_cpu_seconds=items_cpu + children_cpu,
        pool_cpu_seconds=children_cpu,
    )
