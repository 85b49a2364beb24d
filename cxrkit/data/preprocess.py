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

The cache layout is documented in :mod:`cxrkit.data.cache`. Every file is written atomically and the
sidecar last, so a killed run resumes by skipping items whose sidecar and PNG (sha256 checked) are
intact. :func:`cxrkit.io.atomic_write` gives each write a temporary name unique per process and
call, so two writers of one cache never share a temporary file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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

ON_ERROR = ("fail", "skip")

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("file", pa.string()),  # PNG path relative to the cache directory
        ("geometry", pa.string()),  # JSON of Geometry.to_dict()
        ("masks", pa.list_(pa.string())),
        ("sha256", pa.string()),  # of the PNG bytes
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
    return table[image.levels]


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


def _finished_sidecar(record: Record, out_dir: Path) -> dict[str, Any] | None:
    """The item's sidecar if the item is complete and intact on disk, else None (redo it)."""
    sidecar = cache.sidecar_path(out_dir, record.image_id)
    try:
        info = json.loads(sidecar.read_text())
        geometry = Geometry.from_dict(info["geometry"])
        png = out_dir / info["file"]
        if (
            info["image_id"] != record.image_id
            or (geometry.orig_width, geometry.orig_height) != (record.width, record.height)
            or list(info["masks"]) != _mask_names(record)
            or sha256(png) != info["sha256"]
        ):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing/corrupt sidecar or PNG
        return None
    for name in info["masks"]:
        if not cache.mask_path(out_dir, record.image_id, name).is_file():
            return None
    return info


def _check_size(found: tuple[int, int], record: Record, what: str) -> None:
    if found != (record.width, record.height):
        raise DataError(
            f"{what} is {found[0]}x{found[1]} pixels but the manifest says "
            f"{record.width}x{record.height}; its boxes would be misplaced "
            "(re-run `cxrkit prepare`)"
        )


def _build_item(record: Record, *, out_dir: Path, recipe: PreprocessConfig) -> dict[str, Any]:
    """Preprocess one record and write its PNG, masks and (last) sidecar. Returns the sidecar."""
    sidecar = cache.sidecar_path(out_dir, record.image_id)
    # Until the new sidecar lands this item is unfinished, whatever an older run left behind.
    sidecar.unlink(missing_ok=True)

    image, _ = read_levels(record.path, apply_voi_lut=recipe.apply_voi_lut)
    _check_size((image.shape[1], image.shape[0]), record, f"{record.path}: decoded image")
    out, geometry = apply_recipe(image, recipe=recipe)
    png = _encode_png(out)
    png_path = cache.image_path(out_dir, record.image_id)
    atomic_write(png_path, png)

    for name in _mask_names(record):
        mask_file = record.mask_paths[name]
        mask, _ = read_image(mask_file, apply_voi_lut=False)
        _check_size((mask.shape[1], mask.shape[0]), record, f"{mask_file}: mask {name!r}")
        cached = transform_mask(mask, geometry=geometry)
        atomic_write(cache.mask_path(out_dir, record.image_id, name), _encode_png(cached))

    info = {
        "image_id": record.image_id,
        "file": png_path.relative_to(out_dir).as_posix(),
        "geometry": geometry.to_dict(),
        "sha256": sha256(png),
        "masks": _mask_names(record),
    }
    atomic_write(sidecar, json.dumps(info, indent=1).encode())
    return info


@dataclass(frozen=True)
class _Outcome:
    image_id: str
    path: str
    status: str  # done | skipped | failed
    sidecar: dict[str, Any] | None = None
    error: Exception | None = None


def _process_item(record: Record, *, out_dir: Path, recipe: PreprocessConfig) -> _Outcome:
    """Skip a finished item or build it. Runs in a worker process; user-caused errors come back as
    outcomes, bugs propagate with their traceback."""
    finished = _finished_sidecar(record, out_dir)
    if finished is not None:
        return _Outcome(record.image_id, record.path, "skipped", sidecar=finished)
    try:
        info = _build_item(record, out_dir=out_dir, recipe=recipe)
    except CxrkitError as exc:
        return _Outcome(record.image_id, record.path, "failed", error=exc)
    return _Outcome(record.image_id, record.path, "done", sidecar=info)


def _init_worker() -> None:
    # One OpenCV thread per process: the pool already uses every core, and OpenCV's own thread
    # pool on top of it oversubscribes the CPU and runs slower.
    cv2.setNumThreads(1)


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
    """What :func:`build_cache` did. ``images_per_second`` counts newly processed images only."""

    done: int
    skipped_existing: int
    failed: int
    seconds: float
    images_per_second: float
    errors: list[ItemError] = field(default_factory=list)
    errors_file: Path | None = None


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


def _write_index(out_dir: Path, sidecars: list[dict[str, Any]]) -> None:
    rows = [
        {
            "image_id": info["image_id"],
            "file": info["file"],
            "geometry": json.dumps(info["geometry"], sort_keys=True),
            "masks": list(info["masks"]),
            "sha256": info["sha256"],
        }
        for info in sidecars
    ]
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    path = out_dir / cache.INDEX_FILE
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


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

    Resumable: items whose sidecar exists and whose PNG matches the recorded sha256 (and whose masks
    exist) are skipped; anything else is redone. ``index.parquet`` is rebuilt at the end from the
    finished items of ``records``.

    Args:
        records: the images to cache; each decoded image must be ``record.width x record.height``.
        out_dir: the cache directory (created if needed).
        recipe: the preprocessing recipe; must equal the one in an existing ``recipe.json``.
        workers: processes in the pool; ``<= 1`` runs in this process.
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

    start = time.perf_counter()
    outcomes: dict[str, _Outcome] = {}
    job = partial(_process_item, out_dir=out_dir, recipe=recipe)
    # a bar on a terminal; count, rate and ETA lines in a job log (tqdm alone prints nothing)
    bar = Progress(total=len(records), desc="preprocess", unit="img", enabled=progress)

    def collect(record: Record, run: Any) -> None:
        try:
            outcome = run()
        except BrokenProcessPool:
            raise
        except Exception as exc:  # a bug, not bad input: keep it unless told to skip
            if on_error == "fail":
                raise
            outcome = _Outcome(record.image_id, record.path, "failed", error=exc)
        if outcome.status == "failed" and on_error == "fail" and outcome.error is not None:
            error = outcome.error
            message = f"image {record.image_id!r} ({record.path}): {_reason(error, record.path)}"
            raise type(error)(message) from error
        outcomes[record.image_id] = outcome
        bar.update(1)

    try:
        if workers <= 1:
            for record in records:
                collect(record, partial(job, record))
        else:
            # forkserver, not fork: a child forked after OpenCV has started its thread pool in this
            # process can deadlock inside cv2 (the pool's locks are copied mid-use).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker
            ) as pool:
                futures = {pool.submit(job, record): record for record in records}
                try:
                    for future in as_completed(futures):
                        collect(futures[future], future.result)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    finished = [
        outcomes[r.image_id].sidecar
        for r in records
        if outcomes[r.image_id].status in ("done", "skipped")
    ]
    _write_index(out_dir, [info for info in finished if info is not None])
    if recipe.size <= store.MAX_SIDE:  # training sizes: the loader reads raw shards, not PNGs
        store.pack(out_dir, rows=[info for info in finished if info is not None])
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
    return CacheSummary(
        done=done,
        skipped_existing=sum(o.status == "skipped" for o in outcomes.values()),
        failed=len(errors),
        seconds=seconds,
        images_per_second=done / seconds if seconds > 0 else 0.0,
        errors=errors,
        errors_file=errors_file,
    )
