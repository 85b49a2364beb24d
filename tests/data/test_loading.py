"""Records and cache for a stage: the manifest read once, a split taken from it."""

from __future__ import annotations

import pytest

from cxrkit.data import loading
from cxrkit.errors import ConfigError


def test_open_records_reads_the_manifest_once(monkeypatch, split_data) -> None:
    reads = []
    real = loading.read_manifest
    monkeypatch.setattr(loading, "read_manifest", lambda p, **kw: reads.append(p) or real(p, **kw))
    cache, records = loading.open_records(split_data, progress=False)
    assert len(reads) == 1 and len(records) == 4 and "i3" in cache
    assert [r.image_id for r in loading.in_split(records, "train")] == ["i0", "i1"]
    assert loading.in_split(records, "all") == loading.in_split(records, None) == records


def test_a_misspelt_split_is_named() -> None:
    loading.check_split("val")
    loading.check_split("all")
    with pytest.raises(ConfigError, match=r"split 'tset' is not one of"):
        loading.check_split("tset")
    with pytest.raises(ConfigError, match=r"split 'tset' is not one of"):
        loading.in_split([], "tset")
