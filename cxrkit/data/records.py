"""The record every stage reads, and the manifest (a Parquet file of records).

One record per image. Boxes are in **original pixel coordinates** of the file at ``path``
(``0 <= x1 < x2 <= width``, ``0 <= y1 < y2 <= height``); the cache maps them to cache pixels.

``labels`` maps a finding name to 0 or 1; a finding absent from the dict is *unknown* for that image
(not negative). ``boxes`` keeps every reader's box separately (``reader`` is the radiologist id, or
``""`` when the source has none); fusion happens in the detector stage.

:func:`read_manifest` reads column by column (one Arrow-to-Python conversion per column, repeated
strings such as finding names shared, not copied) and leaves each record's ``meta`` as its JSON text
until it is first read: a training run over 112,120 records reads ``meta`` of almost none.

**Paths move with the data.** :func:`write_manifest` stores image and mask paths relative to a
*root* recorded in the Parquet metadata: the dataset folder ``cxrkit prepare --root`` names, by
default the deepest folder holding every image. Paths outside the root stay absolute; when the
images share no folder below the filesystem root (different drives or mounts) every path stays
absolute and the manifest's warnings say so. A record whose paths were given relative (to the
working directory) keeps them as given, and then no root is recorded.

:func:`read_manifest` returns absolute paths: the relative ones joined to ``root`` (an override:
``--root``, ``data.root``) or else to the recorded root. When the recorded root does not exist (the
manifest was copied to a cluster with its images) the folder at the same place relative to the
manifest, then the manifest's own folder, is tried: the first one that holds the first image is
used, with a warning naming it and ``--root``; if none does, the recorded root stays and the warning
says to pass ``--root`` (reading labels needs no image, so this is not an error). A manifest of
absolute paths (written before roots were recorded) reads as before; with ``root`` its paths are
rebased from their deepest common folder onto ``root``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cxrkit.errors import DataError, MissingFileError
from cxrkit.io import atomic_write

VIEWS = ("PA", "AP", "LL", "unknown")
SPLITS = ("train", "val", "test", "unassigned")
MANIFEST_VERSION = "1"
WARNINGS_KEY = "cxrkit_warnings"  # Parquet metadata: JSON list of what users must know
ROOT_KEY = "cxrkit_root"  # Parquet metadata: the folder relative paths are relative to
# Parquet metadata: the root relative to the manifest's folder when written, to find it after a move
ROOT_FROM_MANIFEST_KEY = "cxrkit_root_from_manifest"

log = logging.getLogger(__name__)

_BOX_TYPE = pa.struct(
    [
        ("finding", pa.string()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("x2", pa.float64()),
        ("y2", pa.float64()),
        ("reader", pa.string()),
    ]
)
SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("patient_id", pa.string()),
        ("view", pa.string()),
        ("split", pa.string()),
        ("labels", pa.map_(pa.string(), pa.int8())),
        ("boxes", pa.list_(_BOX_TYPE)),
        ("mask_paths", pa.map_(pa.string(), pa.string())),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("meta", pa.string()),  # JSON object: free-form (age, sex, pixel spacing, ...)
    ]
)


@dataclass(frozen=True, kw_only=True)
class Box:
    """One reader's box. Coordinates are original pixels, x1y1x2y2, x1 < x2 and y1 < y2."""

    finding: str
    x1: float
    y1: float
    x2: float
    y2: float
    reader: str = ""

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class _MetaJSON(str):
    """A record's ``meta`` as the manifest stores it: JSON text, parsed on first access."""


class _NoMeta:
    def __repr__(self) -> str:
        return "{}"


_NO_META = _NoMeta()  # the dataclass default of ``meta``: a fresh {} for every record


class _JSONObjectField:
    """Data descriptor behind ``Record.meta``: a dict, kept as :class:`_MetaJSON` text until first
    read. The value lives in the instance ``__dict__`` under the field's own name, so
    ``Record(**other.__dict__)`` still copies a record."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return _NO_META
        value = obj.__dict__[self.name]
        if type(value) is _MetaJSON:
            value = json.loads(value) if value else {}
            obj.__dict__[self.name] = value
        return value

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.name] = {} if value is _NO_META else value


@dataclass(kw_only=True)
class Record:
    """One image and everything known about it. See the module docstring for the contracts."""

    image_id: str
    source: str
    path: str
    patient_id: str
    width: int
    height: int
    view: str = "unknown"
    split: str = "unassigned"
    labels: dict[str, int] = field(default_factory=dict)
    boxes: list[Box] = field(default_factory=list)
    mask_paths: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = _JSONObjectField()  # default: a new {} (see _JSONObjectField)

    def validate(self, *, where: str = "") -> None:
        """Raise :class:`DataError` naming ``where`` (file and row) if a contract is broken."""
        at = f"{where}: " if where else ""
        name = f"image {self.image_id!r}"
        if not self.image_id:
            raise DataError(f"{at}empty image_id")
        if self.view not in VIEWS:
            raise DataError(f"{at}{name}: view {self.view!r} is not one of {VIEWS}")
        if self.split not in SPLITS:
            raise DataError(f"{at}{name}: split {self.split!r} is not one of {SPLITS}")
        if self.width <= 0 or self.height <= 0:
            raise DataError(f"{at}{name}: image size {self.width}x{self.height} is not positive")
        for finding, value in self.labels.items():
            if value not in (0, 1):
                raise DataError(f"{at}{name}: label {finding!r} = {value!r}, expected 0 or 1")
        for box in self.boxes:
            check_box(box, width=self.width, height=self.height, where=f"{at}{name}")


def check_box(box: Box, *, width: int, height: int, where: str) -> None:
    """Raise :class:`DataError` if ``box`` is degenerate, non-finite or outside the image."""
    coords = box.xyxy
    if not all(math.isfinite(c) for c in coords):
        raise DataError(f"{where}: box {coords} of {box.finding!r} has a non-finite coordinate")
    if not (box.x1 < box.x2 and box.y1 < box.y2):
        raise DataError(
            f"{where}: box {coords} of {box.finding!r} is empty or inverted "
            "(needs x1 < x2 and y1 < y2)"
        )
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        raise DataError(
            f"{where}: box {coords} of {box.finding!r} lies outside the {width}x{height} image"
        )


def _to_row(record: Record) -> dict[str, Any]:
    return {
        "image_id": record.image_id,
        "source": record.source,
        "path": str(record.path),
        "patient_id": str(record.patient_id),
        "view": record.view,
        "split": record.split,
        "labels": list(record.labels.items()),
        "boxes": [
            {
                "finding": b.finding,
                "x1": b.x1,
                "y1": b.y1,
                "x2": b.x2,
                "y2": b.y2,
                "reader": b.reader,
            }
            for b in record.boxes
        ],
        "mask_paths": list(record.mask_paths.items()),
        "width": int(record.width),
        "height": int(record.height),
        "meta": json.dumps(record.meta, sort_keys=True, default=str),
    }


def write_manifest(
    records: Iterable[Record],
    path: str | Path,
    *,
    warnings: Sequence[str] = (),
    root: str | Path | None = None,
) -> Path:
    """Validate and write records as Parquet, atomically, paths relative to a recorded root.

    Args:
        records: the records; their paths as the sources found them (absolute, normally).
        path: the manifest to write.
        warnings: what a user of the manifest must know (e.g. guessed patient ids), kept in the
            file's metadata; :func:`manifest_warnings` reads them back.
        root: the folder to record and store paths relative to (``cxrkit prepare --root``;
            relative record paths are then taken as relative to the working directory); default
            the deepest folder holding every image. See the module docstring.

    Raises :class:`DataError` on an invalid record or a duplicate ``image_id``.
    """
    path = Path(path)
    rows, seen = [], set()
    for i, record in enumerate(records):
        record.validate(where=f"record {i}")
        if record.image_id in seen:
            raise DataError(f"record {i}: duplicate image_id {record.image_id!r}")
        seen.add(record.image_id)
        rows.append(_to_row(record))
    metadata = {"cxrkit_manifest_version": MANIFEST_VERSION}
    warnings = list(warnings)
    base, why_absolute = _root_for(rows, root)
    if base is not None:
        _relative_rows(rows, base)
        metadata[ROOT_KEY] = base
        with contextlib.suppress(ValueError):  # another drive: only the absolute root applies
            relative = os.path.relpath(base, os.path.abspath(path.parent))
            metadata[ROOT_FROM_MANIFEST_KEY] = Path(relative).as_posix()
    elif why_absolute and why_absolute not in warnings:  # a manifest rewritten keeps one copy
        warnings.append(why_absolute)
        log.warning("%s: %s", path, why_absolute)
    if warnings:
        metadata[WARNINGS_KEY] = json.dumps(warnings)
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(metadata)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _root_for(rows: list[dict[str, Any]], root: str | Path | None) -> tuple[str | None, str]:
    """The root to store ``rows``' paths under (absolute, normalised), or None and why not."""
    if root is not None:  # paths the sources made relative to the working directory, absolute
        for row in rows:
            row["path"] = os.path.abspath(row["path"])
            row["mask_paths"] = [(k, os.path.abspath(v)) for k, v in row["mask_paths"]]
        return os.path.abspath(root), ""
    if not rows:
        return None, ""
    paths = [r["path"] for r in rows]
    masks = [p for r in rows for _, p in r["mask_paths"]]
    if not all(os.path.isabs(p) for p in itertools.chain(paths, masks)):
        return None, ""  # paths relative to the working directory: kept as given, no root
    try:
        common = os.path.commonpath([os.path.dirname(os.path.normpath(p)) for p in paths])
    except ValueError:  # Windows: images on different drives
        common = ""
    if not common or os.path.dirname(common) == common:  # "" or the filesystem root itself
        return None, (
            "image paths are absolute: the images share no folder below the filesystem root, so "
            "the manifest cannot store them relative to one (it will not move with its data)"
        )
    return common, ""


def _relative_to(path: str, base: str) -> str:
    """``path`` relative to ``base`` (POSIX separators) when it lies under it, else as given."""
    normal = os.path.normpath(path)
    prefix = base.rstrip(os.sep) + os.sep
    if not normal.startswith(prefix) or normal == prefix:
        return path
    return Path(normal[len(prefix) :]).as_posix()  # normalised: no ".." left to resolve


def _relative_rows(rows: list[dict[str, Any]], base: str) -> None:
    for row in rows:
        row["path"] = _relative_to(row["path"], base)
        if row["mask_paths"]:
            row["mask_paths"] = [(k, _relative_to(v, base)) for k, v in row["mask_paths"]]


def _metadata(path: Path) -> dict[bytes, bytes]:
    return pq.read_schema(path).metadata or {}


def manifest_warnings(path: str | Path) -> list[str]:
    """The warnings :func:`write_manifest` stored in a manifest's metadata (empty if none)."""
    raw = _metadata(Path(path)).get(WARNINGS_KEY.encode())
    return list(json.loads(raw)) if raw else []


def manifest_root(path: str | Path) -> Path | None:
    """The root a manifest records (its relative paths are relative to it), None if none."""
    raw = _metadata(Path(path)).get(ROOT_KEY.encode())
    return Path(raw.decode()) if raw else None


def read_manifest(path: str | Path, *, root: str | Path | None = None) -> list[Record]:
    """Read a manifest written by :func:`write_manifest`, with absolute paths.

    Args:
        path: the Parquet manifest.
        root: where the images are now (``--root``, ``data.root``): relative paths are joined to
            it, and a manifest of absolute paths is rebased onto it. Default: the recorded root
            (see the module docstring for a root that no longer exists).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: manifest not found (make one with `cxrkit prepare ... --out {path}`)"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    table = table.select(SCHEMA.names)
    metadata = table.schema.metadata or {}
    recorded = metadata.get(ROOT_KEY.encode())
    if recorded is not None:
        base = _base(path, table, recorded.decode(), metadata, root=root)
        return _records(table, base=base)
    records = _records(table)
    if root is not None and records:
        _rebase(records, os.path.abspath(root), where=path)
    return records


# an absolute path: POSIX "/...", Windows "\\server\..." or "C:..." (matched in Arrow, in C)
_ABSOLUTE = r"^([/\\]|[A-Za-z]:)"


def _base(
    path: Path, table: pa.Table, recorded: str, metadata: dict, *, root: str | Path | None
) -> str:
    """The folder relative paths are joined to: ``root``, else the recorded root, else (moved)
    the first candidate that holds the first relative image."""
    if root is not None:
        return os.path.abspath(root)
    if os.path.isdir(recorded):
        return recorded
    paths = table.column("path")
    relative = paths.filter(pc.invert(pc.match_substring_regex(paths, _ABSOLUTE)))
    if len(relative) == 0:
        return recorded
    first = relative[0].as_py()
    candidates = []
    from_manifest = metadata.get(ROOT_FROM_MANIFEST_KEY.encode())
    if from_manifest is not None:
        candidates.append(os.path.normpath(path.parent.absolute() / from_manifest.decode()))
    candidates.append(str(path.parent.absolute()))
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, first)):
            log.warning(
                "%s: recorded root %s does not exist; its images are under %s, used instead "
                "(pass --root / data.root to choose)",
                path,
                recorded,
                candidate,
            )
            return candidate
    log.warning(
        "%s: recorded root %s does not exist and the images are not beside the manifest; pass "
        "--root DIR (data.root=DIR) where the folder now is",
        path,
        recorded,
    )
    return recorded


def _prefix(base: str) -> str:
    return base.rstrip("/" + os.sep) + os.sep


def _join(records: list[Record], base: str) -> None:
    """Relative paths of ``records`` joined to ``base``, in place."""
    prefix = _prefix(base)
    isabs = os.path.isabs
    for record in records:
        if not isabs(record.path):
            record.path = prefix + record.path
        if record.mask_paths:
            record.mask_paths = _joined_masks(record.mask_paths, prefix)


def _joined_masks(masks: dict[str, str], prefix: str) -> dict[str, str]:
    return {k: v if os.path.isabs(v) else prefix + v for k, v in masks.items()}


def _joined_paths(array: pa.Array, base: str) -> pa.Array:
    """The path column with relative paths joined to ``base``: in Arrow (112,120 paths in a few
    milliseconds), not one Python string operation per record."""
    joined = pc.binary_join_element_wise(pa.scalar(_prefix(base)), array, "")
    return pc.if_else(pc.match_substring_regex(array, _ABSOLUTE), array, joined)


def _rebase(records: list[Record], new_root: str, *, where: Path) -> None:
    """Paths of a manifest without a recorded root onto ``new_root``: relative ones joined to it,
    absolute ones moved from their deepest common folder to it (manifests written before roots
    were recorded)."""
    relative = [not os.path.isabs(r.path) for r in records]
    if all(relative):
        _join(records, new_root)
        return
    if any(relative):
        raise DataError(
            f"{where}: its image paths are partly relative, partly absolute; cannot rebase them "
            "onto --root (rewrite it with `cxrkit prepare`)"
        )
    try:
        old = os.path.commonpath([os.path.dirname(os.path.normpath(r.path)) for r in records])
    except ValueError:  # Windows: several drives
        old = os.sep
    if os.path.dirname(old) == old:
        raise DataError(
            f"{where}: its image paths share no folder below the filesystem root; cannot rebase "
            "them onto --root"
        )
    for record in records:
        record.path = _moved(record.path, old, new_root)
        if record.mask_paths:
            record.mask_paths = {k: _moved(v, old, new_root) for k, v in record.mask_paths.items()}


def _moved(path: str, old: str, new: str) -> str:
    relative = _relative_to(path, old)
    return relative if os.path.isabs(relative) else os.path.join(new, relative)


def _records(table: pa.Table, *, base: str | None = None) -> list[Record]:
    """Records from a manifest table, one Arrow-to-Python conversion per column; relative image
    and mask paths joined to ``base`` when given."""
    if table.num_rows == 0:
        return []
    table = table.combine_chunks()

    def column(name: str) -> pa.Array:
        return table.column(name).chunk(0)

    texts = {name: column(name).to_pylist() for name in ("image_id", "patient_id")}
    paths = column("path")
    texts["path"] = (paths if base is None else _joined_paths(paths, base)).to_pylist()
    shared = {name: _shared_strings(column(name)) for name in ("source", "view", "split")}
    labels = _maps(column("labels"))
    mask_paths = _maps(column("mask_paths"))
    if base is not None:
        prefix = _prefix(base)
        mask_paths = [_joined_masks(m, prefix) if m else m for m in mask_paths]
    boxes = _boxes(column("boxes"))
    metas = [_MetaJSON(text or "") for text in column("meta").to_pylist()]
    rows = zip(
        texts["image_id"],
        shared["source"],
        texts["path"],
        texts["patient_id"],
        shared["view"],
        shared["split"],
        labels,
        boxes,
        mask_paths,
        column("width").to_pylist(),
        column("height").to_pylist(),
        metas,
        strict=True,
    )
    return [
        Record(
            image_id=image_id, source=source, path=path, patient_id=patient_id, view=view,
            split=split, labels=label, boxes=box, mask_paths=masks, width=width, height=height,
            meta=meta,
        )
        for (image_id, source, path, patient_id, view, split, label, box, masks, width, height,
             meta) in rows
    ]  # fmt: skip


def _shared_strings(array: pa.Array) -> list[Any]:
    """``array.to_pylist()`` with one Python object per distinct value (views, splits and finding
    names repeat on every record: sharing them saves the memory of a string per occurrence)."""
    encoded = array.dictionary_encode()
    distinct = np.empty(len(encoded.dictionary) + 1, dtype=object)
    distinct[:-1] = encoded.dictionary.to_pylist()  # the last slot is for nulls: None
    indices = encoded.indices.fill_null(len(distinct) - 1).to_numpy()
    return distinct[indices].tolist()


def _maps(array: pa.MapArray) -> list[dict[Any, Any]]:
    """``dict`` per row of a map column; a null map is an empty dict."""
    offsets = array.offsets.to_numpy().tolist()  # absolute positions in keys/items
    keys = _shared_strings(array.keys)
    items = array.items.to_pylist()
    out = [dict(zip(keys[a:b], items[a:b], strict=True)) for a, b in itertools.pairwise(offsets)]
    if array.null_count:
        for i in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist():
            out[i] = {}
    return out


def _boxes(array: pa.ListArray) -> list[list[Box]]:
    """``Box`` objects per row of the boxes column; a null list is no boxes."""
    offsets = array.offsets.to_numpy().tolist()
    values = array.values
    fields = {name: values.field(name) for name in _BOX_TYPE.names}
    fields = {
        name: _shared_strings(f) if name in ("finding", "reader") else f.to_pylist()
        for name, f in fields.items()
    }
    nulls = set()
    if array.null_count:
        nulls = set(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist())
    out: list[list[Box]] = []
    for i, (a, b) in enumerate(itertools.pairwise(offsets)):
        if a == b or i in nulls:
            out.append([])
            continue
        out.append(
            [Box(**{name: column[j] for name, column in fields.items()}) for j in range(a, b)]
        )
    return out


def findings_of(records: Sequence[Record]) -> list[str]:
    """Every finding named in labels or boxes, sorted."""
    names = {f for r in records for f in r.labels} | {b.finding for r in records for b in r.boxes}
    return sorted(names)
