"""Finding groups: one parser and one labelling rule for datasets, multitask and eval."""

from __future__ import annotations

import pytest

from cxrkit.data import findings
from cxrkit.data.records import Record

FINDINGS = ["Consolidation", "Nodule/Mass=Nodule|Mass", "Effusion"]


def _record(labels: dict[str, int]) -> Record:
    return Record(
        image_id="a", source="s", path="p", patient_id="1", width=4, height=4, labels=labels
    )


def test_parse_plain_and_group_entries() -> None:
    assert findings.parse("Effusion") == ("Effusion", ("Effusion",))
    group = findings.parse(" Nodule/Mass = Nodule | Mass ")
    assert group == findings.Finding("Nodule/Mass", ("Nodule", "Mass")) and group.is_group
    assert not findings.parse("X").is_group
    assert findings.names(FINDINGS) == ["Consolidation", "Nodule/Mass", "Effusion"]


@pytest.mark.parametrize("entry", ["", "=A", "A=", "A=B|", " = "])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not 'Name' or 'Name=Member|Member'"):
        findings.parse(entry)


def test_parse_all_refuses_duplicates_and_a_bare_string() -> None:
    with pytest.raises(ValueError, match="findings: 'A' is listed twice"):
        findings.parse_all(["A", "A=B|C"], what="findings")
    with pytest.raises(ValueError, match="must be a list of names"):
        findings.parse_all("A", what="findings")


def test_label_is_the_max_of_labelled_members() -> None:
    group = findings.parse("Nodule/Mass=Nodule|Mass")
    assert findings.label({"Nodule": 0, "Mass": 1}, group) == 1
    assert findings.label({"Nodule": 0}, group) == 0
    assert findings.label({"Effusion": 1}, group) is None


def test_expand_records_take_the_max_of_labelled_members() -> None:
    records = [_record({"Nodule": 0, "Mass": 1}), _record({"Nodule": 0}), _record({"Effusion": 1})]
    out = findings.expand_records(records, FINDINGS)
    assert [r.labels.get("Nodule/Mass") for r in out] == [1, 0, None]
    assert out[2].labels == {"Effusion": 1}
    assert records[0].labels == {"Nodule": 0, "Mass": 1}  # the input is not modified
    assert findings.expand_records(records, ["Effusion"]) == records
