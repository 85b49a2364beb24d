"""The record every stage reads, and the manifest (a Parquet file of records).

One record per image. Boxes are in **original pixel coordinates** of the file at ``path``
(``0 <= x1 < x2 <= width``, ``0 <= y1 < y2 <= height``); the cache maps them to cache pixels.

``labels`` maps a finding name to 0 or 1; a finding absent from the dict is *unknown* for that image
(not negative). ``boxes`` keeps every reader's box separately (``reader`` is the radiologist id, or
``""`` when the source has none); fusion happens in the detector stage.

:func:`read_manifest` reads column by column (one Arrow-to-Python conversion per column, repeated
strings such as finding names shared, not copied) and leaves each record's ``meta`` as its JSON text
until it is first read: a training run over 112,120 records reads ``meta`` of almost none.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxrkit.errors import DataError, MissingFileError
from cxrkit.io import atomic_write

VIEWS = ("PA", "AP", "LL", "unknown")
SPLITS = ("train", "val", "test", "unassigned")
MANIFEST_VERSION = "1"
WARNINGS_KEY = "cxrkit_warnings"  # Parquet metadata: JSON list of what users must know

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
    records: Iterable[Record], path: str | Path, *, warnings: Sequence[str] = ()
) -> Path:
    """Validate and write records as Parquet, atomically.

    ``warnings`` (what a user of the manifest must know, e.g. guessed patient ids) are kept in the
    file's metadata; :func:`manifest_warnings` reads them back.

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
    if warnings:
        metadata[WARNINGS_KEY] = json.dumps(list(warnings))
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(metadata)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def manifest_warnings(path: str | Path) -> list[str]:
    """The warnings :func:`write_manifest` stored in a manifest's metadata (empty if none)."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(WARNINGS_KEY.encode())
    return list(json.loads(raw)) if raw else []


def read_manifest(path: str | Path) -> list[Record]:
    """Read a manifest written by :func:`write_manifest`."""
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
    return _records(table.select(SCHEMA.names))


def _records(table: pa.Table) -> list[Record]:
    """Records from a manifest table, one Arrow-to-Python conversion per column."""
    if table.num_rows == 0:
        return []
    table = table.combine_chunks()

    def column(name: str) -> pa.Array:
        return table.column(name).chunk(0)

    texts = {name: column(name).to_pylist() for name in ("image_id", "path", "patient_id")}
    shared = {name: _shared_strings(column(name)) for name in ("source", "view", "split")}
    labels = _maps(column("labels"))
    mask_paths = _maps(column("mask_paths"))
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
