"""The adapters' Python entry points (what `cxrkit prepare` calls): prepare_* and write_prepared."""

from __future__ import annotations

import pytest

from cxrkit.data import sources
from cxrkit.data.records import read_manifest
from cxrkit.errors import DataError

SUBSET = "Data_Entry_2017_subset.csv"
BBOX = "BBox_List_2017_subset.csv"


def test_prepare_nih_then_write_prepared(shared_data, tmp_path):
    prepared = sources.prepare_nih(
        root=shared_data / "nih", data_entry=SUBSET, bbox_list=BBOX, fractions="0.7,0.1,0.2"
    )
    assert prepared.official_lists is None and len(prepared.issues) == 0
    stale = sources.errors_csv_for(tmp_path / "m.parquet")
    stale.write_text("image_id,reason\nold,stale\n")
    summary = sources.write_prepared(prepared, out=tmp_path / "m.parquet", root=shared_data)
    records = read_manifest(summary.path)
    assert summary.records == len(records) == len(prepared.records) > 0
    assert summary.patients == len({r.patient_id for r in records})
    assert summary.boxes == sum(len(r.boxes) for r in records)
    assert sum(summary.splits.values()) == summary.records and "unassigned" not in summary.splits
    assert summary.errors_file is None and not stale.exists()  # it described another manifest


def test_write_prepared_refuses_an_empty_manifest_and_lists_the_skipped(tmp_path):
    issues = sources.Issues(on_error="skip")
    issues.add(DataError("a.png: unreadable"), image_id="a")
    prepared = sources.Prepared(records=[], issues=issues)
    with pytest.raises(DataError, match=r"no usable images \(1 skipped"):
        sources.write_prepared(prepared, out=tmp_path / "m.parquet", root=tmp_path)
    errors = sources.errors_csv_for(tmp_path / "m.parquet")
    assert errors.read_text().splitlines() == ["image_id,reason", "a,a.png: unreadable"]
    assert not (tmp_path / "m.parquet").exists()
