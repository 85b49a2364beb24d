"""The record schema and the manifest file: round trip, validation errors, unreadable manifests."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxrkit.data.records import (
    SCHEMA,
    Box,
    Record,
    check_box,
    findings_of,
    read_manifest,
    write_manifest,
)
from cxrkit.errors import DataError, MissingFileError


def _record(**kw) -> Record:
    base = dict(
        image_id="img1",
        source="test",
        path="/data/img1.png",
        patient_id="p1",
        width=100,
        height=80,
    )
    base.update(kw)
    return Record(**base)


def test_round_trip_keeps_every_field(tmp_path):
    records = [
        _record(
            view="AP",
            split="val",
            labels={"Effusion": 1, "Nodule": 0},
            boxes=[
                Box(finding="Effusion", x1=1.5, y1=2.0, x2=50.25, y2=79.0, reader="R8"),
                Box(finding="Effusion", x1=0.0, y1=0.0, x2=100.0, y2=80.0, reader="R9"),
            ],
            mask_paths={"Effusion": "/m/img1.Effusion.png", "Left lung": "/m/l.png"},
            meta={"age": 61, "sex": "F", "pixel_spacing": [0.143, 0.143], "nested": {"a": [1]}},
        ),
        _record(image_id="img2", patient_id="p2"),  # defaults: unknown view, unassigned, empty
    ]
    path = write_manifest(records, tmp_path / "sub" / "m.parquet")
    assert path == tmp_path / "sub" / "m.parquet"
    assert read_manifest(path) == records
    # atomic write: nothing but the manifest is left in the folder
    assert [p.name for p in path.parent.iterdir()] == ["m.parquet"]


def test_round_trip_empty_manifest(tmp_path):
    path = write_manifest([], tmp_path / "empty.parquet")
    assert read_manifest(path) == []
    assert pq.read_table(path).schema.equals(SCHEMA, check_metadata=False)


def test_manifest_records_its_version(tmp_path):
    path = write_manifest([_record()], tmp_path / "m.parquet")
    metadata = pq.read_table(path).schema.metadata
    assert metadata[b"cxrkit_manifest_version"] == b"1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(image_id=""), "empty image_id"),
        (dict(view="lateral"), "view 'lateral' is not one of"),
        (dict(split="training"), "split 'training' is not one of"),
        (dict(width=0), "image size 0x80 is not positive"),
        (dict(height=-3), "image size 100x-3 is not positive"),
        (dict(labels={"Effusion": 2}), "label 'Effusion' = 2, expected 0 or 1"),
        (dict(labels={"Effusion": -1}), "label 'Effusion' = -1"),
    ],
)
def test_write_rejects_invalid_record(tmp_path, change, message):
    records = [_record(image_id="ok"), _record(**change)]
    with pytest.raises(DataError, match="record 1") as info:
        write_manifest(records, tmp_path / "m.parquet")
    assert message in str(info.value)
    assert not (tmp_path / "m.parquet").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("box", "message"),
    [
        (Box(finding="Mass", x1=10, y1=10, x2=5, y2=20), "empty or inverted"),
        (Box(finding="Mass", x1=10, y1=10, x2=10, y2=20), "empty or inverted"),
        (Box(finding="Mass", x1=10, y1=30, x2=20, y2=20), "empty or inverted"),
        (Box(finding="Mass", x1=-1, y1=10, x2=20, y2=20), "outside the 100x80 image"),
        (Box(finding="Mass", x1=10, y1=10, x2=100.5, y2=20), "outside the 100x80 image"),
        (Box(finding="Mass", x1=10, y1=10, x2=20, y2=81), "outside the 100x80 image"),
        (Box(finding="Mass", x1=math.nan, y1=10, x2=20, y2=20), "non-finite"),
        (Box(finding="Mass", x1=1, y1=1, x2=math.inf, y2=20), "non-finite"),
    ],
)
def test_write_rejects_bad_box_naming_image(tmp_path, box, message):
    with pytest.raises(DataError, match="record 0: image 'img1'") as info:
        write_manifest([_record(boxes=[box])], tmp_path / "m.parquet")
    assert message in str(info.value)
    assert "'Mass'" in str(info.value)


def test_box_on_the_image_border_is_valid():
    check_box(Box(finding="Mass", x1=0, y1=0, x2=100, y2=80), width=100, height=80, where="w")


def test_write_rejects_duplicate_image_id(tmp_path):
    with pytest.raises(DataError, match="record 2: duplicate image_id 'a'"):
        write_manifest(
            [_record(image_id="a"), _record(image_id="b"), _record(image_id="a")],
            tmp_path / "m.parquet",
        )


def test_read_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(MissingFileError, match="cxrkit prepare"):
        read_manifest(tmp_path / "nope.parquet")


def test_read_non_parquet_file(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_text("image_id,path\n1,a.png\n")
    with pytest.raises(DataError, match="not a readable Parquet manifest"):
        read_manifest(path)


def test_read_parquet_lacking_columns_names_them(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "path": ["a.png"]}), path)
    with pytest.raises(DataError, match="lacks columns") as info:
        read_manifest(path)
    assert "'patient_id'" in str(info.value) and "'labels'" in str(info.value)


def test_findings_of_collects_labels_and_boxes():
    records = [
        _record(labels={"Nodule": 0, "Effusion": 1}),
        _record(image_id="b", boxes=[Box(finding="Mass", x1=0, y1=0, x2=1, y2=1)]),
    ]
    assert findings_of(records) == ["Effusion", "Mass", "Nodule"]
