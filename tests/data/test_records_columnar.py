"""The columnar manifest reader against the row-by-row reference (``Table.to_pylist`` per row),
and ``Record.meta``'s lazy JSON behaving as a plain dict field."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cxrkit.data.records import (
    SCHEMA,
    Box,
    Record,
    manifest_root,
    read_manifest,
    write_manifest,
)


def reference_read(path: Path) -> list[Record]:
    """What read_manifest did before: every row through Table.to_pylist, parsed eagerly; relative
    paths joined to the recorded root (issue 14: the Parquet stores paths relative to it)."""
    root = manifest_root(path)

    def resolved(p: str) -> str:
        return p if root is None or Path(p).is_absolute() else str(root / p)

    return [
        Record(
            image_id=row["image_id"],
            source=row["source"],
            path=resolved(row["path"]),
            patient_id=row["patient_id"],
            view=row["view"],
            split=row["split"],
            labels={k: int(v) for k, v in (row["labels"] or [])},
            boxes=[Box(**b) for b in (row["boxes"] or [])],
            mask_paths={k: resolved(v) for k, v in (row["mask_paths"] or [])},
            width=int(row["width"]),
            height=int(row["height"]),
            meta=json.loads(row["meta"]) if row["meta"] else {},
        )
        for row in pq.read_table(path).select(SCHEMA.names).to_pylist()
    ]


def varied_records() -> list[Record]:
    records = []
    for i in range(40):
        records.append(
            Record(
                image_id=f"img{i}",
                source=("nih", "vindr")[i % 2],
                path=f"/data/{i}.png",
                patient_id=f"p{i // 3}",
                width=100 + i,
                height=90,
                view=("PA", "AP", "LL", "unknown")[i % 4],
                split=("train", "val", "test", "unassigned")[i % 4],
                labels={} if i % 5 == 0 else {"Mass": i % 2, "Nodule": 1 - i % 2, f"F{i % 3}": 1},
                boxes=[
                    Box(finding="Mass", x1=1.5, y1=2.0, x2=10.25, y2=20.0, reader=f"R{j}")
                    for j in range(i % 3)
                ],  # fmt: skip
                mask_paths={"lung": f"/m/{i}.png"} if i % 4 == 1 else {},
                meta={} if i % 6 == 0 else {"age": i, "sex": "F", "spacing": [0.1, 0.2]},
            )
        )
    return records


def test_columnar_read_equals_row_by_row(tmp_path: Path) -> None:
    records = varied_records()
    path = write_manifest(records, tmp_path / "m.parquet")
    got = read_manifest(path)
    assert got == reference_read(path) == records
    assert [type(r.width) for r in got] == [int] * len(got)
    assert all(type(v) is int for r in got for v in r.labels.values())


def test_chunked_and_null_columns_read_like_the_reference(tmp_path: Path) -> None:
    rows = pq.read_table(write_manifest(varied_records(), tmp_path / "m.parquet")).to_pylist()
    for i in (3, 7):  # nulls where a hand-written or older file may have them
        rows[i]["labels"] = rows[i]["boxes"] = rows[i]["mask_paths"] = rows[i]["meta"] = None
    path = tmp_path / "chunked.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=7)
    got = read_manifest(path)
    assert got == reference_read(path)
    assert got[3].labels == {} and got[3].boxes == [] and got[3].meta == {}
    assert got[0].boxes is not got[5].boxes  # every record owns its lists and dicts


def test_lazy_meta_is_a_plain_dict_field(tmp_path: Path) -> None:
    path = write_manifest(varied_records(), tmp_path / "m.parquet")
    record = read_manifest(path)[1]
    assert record.meta == {"age": 1, "sex": "F", "spacing": [0.1, 0.2]}
    record.meta["age"] = 99  # parsed once: the change sticks
    assert record.meta["age"] == 99
    fresh = read_manifest(path)[1]
    for copied in (
        pickle.loads(pickle.dumps(fresh)),
        copy.deepcopy(fresh),
        dataclasses.replace(fresh),
        Record(**fresh.__dict__),
    ):
        assert copied == fresh and copied.meta == {"age": 1, "sex": "F", "spacing": [0.1, 0.2]}
    assert dataclasses.asdict(fresh)["meta"] == {"age": 1, "sex": "F", "spacing": [0.1, 0.2]}
    # the default is a new dict for every record, as with field(default_factory=dict)
    a = Record(image_id="a", source="s", path="p", patient_id="p", width=1, height=1)
    b = Record(image_id="b", source="s", path="p", patient_id="p", width=1, height=1)
    a.meta["x"] = 1
    assert b.meta == {} and "meta={}" in repr(b)
