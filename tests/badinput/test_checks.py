"""The checks behind the corpus's "a finding no record has" cases, as functions."""

from __future__ import annotations

import pytest

from cxrkit.data.findings import check_labelled
from cxrkit.data.records import Box, Record
from cxrkit.errors import DataError


def record(image_id: str, labels: dict[str, int], boxes: list[Box] | None = None) -> Record:
    return Record(image_id=image_id, source="t", path=f"{image_id}.png", patient_id=image_id,
                  width=64, height=64, labels=labels, boxes=boxes or [])  # fmt: skip


RECORDS = [
    record("a", {"Effusion": 0, "Mass": 1}),
    record("b", {}, [Box(finding="Pneumothorax", x1=1, y1=1, x2=9, y2=9)]),
]


@pytest.mark.parametrize(
    "entries",
    [
        ["Effusion"],  # labelled 0 everywhere still counts: the name is known
        ["Nodule/Mass=Nodule|Mass"],  # a group through one labelled member
        ["Pneumothorax"],  # a box alone
    ],
)
def test_known_findings_pass(entries: list[str]) -> None:
    check_labelled(RECORDS, entries, what="findings", where="m.parquet")


def test_unknown_findings_are_named_with_those_present() -> None:
    with pytest.raises(DataError) as info:
        check_labelled(RECORDS, ["Effusion", "Efusion", "Nod=Nodule"], what="findings", where="m")
    assert str(info.value) == (
        "m: findings names 'Efusion', 'Nod', which no record has a label or box for "
        "(the records have: 'Effusion', 'Mass', 'Pneumothorax')"
    )
