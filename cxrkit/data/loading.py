"""A stage's data: the manifest's records and the preprocessed cache, built on first use.

:func:`load_records` reads a manifest (optionally one split, checked against a cache);
:func:`open_cache` opens ``data.cache``, building it from the manifest on first use (under DDP only
global rank 0 builds; the other ranks wait). Both honour ``data.on_error``: records missing from the
cache fail, or are dropped with a warning under ``skip``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableSequence, Sequence
from dataclasses import asdict
from pathlib import Path

from cxrkit.config import DataConfig, PreprocessConfig
from cxrkit.data import cache as cache_layout
from cxrkit.data.cache import ERRORS_FILE, INDEX_FILE, RECIPE_FILE, Cache
from cxrkit.data.records import SPLITS, Record, read_manifest
from cxrkit.errors import ConfigError, DataError, MissingFileError

log = logging.getLogger(__name__)

CACHE_WAIT_ENV = "CXRKIT_CACHE_WAIT_S"
"""Seconds a non-zero rank waits for rank 0 to build the cache (default :data:`CACHE_WAIT_S`)."""

CACHE_WAIT_S = 6 * 3600.0

_EXAMPLES = 5  # ids quoted in an error message about many images


def load_records(
    data: DataConfig, *, split: str | None = None, cache: Cache | None = None
) -> list[Record]:
    """The records of ``data.manifest``, optionally of one split and checked against a cache.

    Args:
        data: its ``manifest`` is read (relative paths joined to ``root`` when set, else to the
            root the manifest records); ``on_error`` applies when ``cache`` is given.
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
    records = read_manifest(data.manifest, root=data.root or None)
    if split is not None:
        records = [r for r in records if r.split == split]
    if cache is not None:
        _check_in_cache(records, cache, on_error=data.on_error)
    return records


def open_records(data: DataConfig, *, progress: bool = True) -> tuple[Cache, list[Record]]:
    """The cache and every record of the manifest, the manifest read once.

    The cache is opened (built on first use) and checked against all records as
    :func:`open_cache` does; under ``data.on_error="skip"`` records missing from it are dropped.
    Take a split's part with :func:`in_split`.
    """
    records = load_records(data)
    return open_cache(data, records=records, progress=progress), records


def in_split(records: Sequence[Record], split: str | None) -> list[Record]:
    """The records of ``split``; ``None`` or ``"all"`` keeps every record.

    Raises:
        ConfigError: ``split`` is not one of ``records.SPLITS`` (nor ``"all"``).
    """
    check_split(split)
    if split is None or split == "all":
        return list(records)
    return [r for r in records if r.split == split]


def check_split(split: str | None) -> None:
    """Raise :class:`ConfigError` unless ``split`` is None, ``"all"`` or one of ``SPLITS``."""
    if split is not None and split != "all" and split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {SPLITS}")


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
        records
        if records is not None
        else (read_manifest(data.manifest, root=data.root or None) if data.manifest else [])
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

    to_build = read_manifest(data.manifest, root=data.root or None) if data.manifest else []
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
