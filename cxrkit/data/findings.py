"""Findings and finding groups: ``"Nodule/Mass=Nodule|Mass"`` scores one finding from two labels.

A finding entry is a plain label name (``"Pneumothorax"``) or a group ``"Name=Member|Member"``:
KCR's "nodule/mass" is NIH's ``Nodule`` or ``Mass``. A group's label is 1 if any labelled member is
1, 0 if every labelled member is 0, and unknown when no member is labelled. This module is the one
place that parses entries and labels records with them; training datasets, the multi-task stage and
the evaluation all go through it, so a predictions file written for a group is scored against the
same label it was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from cxrkit.data.records import Record
from cxrkit.errors import DataError


class Finding(NamedTuple):
    """One finding entry: the name scored, and the label names it is derived from."""

    name: str
    members: tuple[str, ...]

    @property
    def is_group(self) -> bool:
        return self.members != (self.name,)


def parse(entry: str) -> Finding:
    """``"Nodule/Mass=Nodule|Mass"`` -> ``Finding("Nodule/Mass", ("Nodule", "Mass"))``; ``"X"`` ->
    ``Finding("X", ("X",))``.

    Raises:
        ValueError: an empty name or member (config loading reports it as a ConfigError).
    """
    if not isinstance(entry, str):
        raise ValueError(f"finding entry {entry!r} is not a string")
    name, sep, members = entry.partition("=")
    name = name.strip()
    parts = tuple(m.strip() for m in members.split("|")) if sep else (name,)
    if not name or not all(parts):
        raise ValueError(f"finding entry {entry!r} is not 'Name' or 'Name=Member|Member'")
    return Finding(name, parts)


def parse_all(entries: Sequence[str], *, what: str) -> list[Finding]:
    """Parse a list of entries; ``what`` names the list in errors.

    Raises:
        ValueError: a string instead of a list, a malformed entry, or a name listed twice.
    """
    if isinstance(entries, str):
        raise ValueError(f"{what} must be a list of names, got the string {entries!r}")
    out: list[Finding] = []
    seen: set[str] = set()
    for entry in entries:
        try:
            finding = parse(entry)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if finding.name in seen:
            raise ValueError(f"{what}: {finding.name!r} is listed twice")
        seen.add(finding.name)
        out.append(finding)
    return out


def names(entries: Sequence[str]) -> list[str]:
    """The names scored: ``["Nodule/Mass=Nodule|Mass", "X"]`` -> ``["Nodule/Mass", "X"]``."""
    return [parse(e).name for e in entries]


def label(labels: Mapping[str, int], finding: Finding) -> int | None:
    """The finding's label from a record's labels: max over labelled members, None if none is."""
    values = [labels[m] for m in finding.members if m in labels]
    return max(values) if values else None


def expand_records(records: Sequence[Record], entries: Sequence[str]) -> list[Record]:
    """Records whose labels also hold each group's label under the group's name.

    Plain entries leave labels as they are (and the records are returned unchanged when there is
    no group); an image with no member labelled leaves the group unknown.
    """
    groups = [f for f in (parse(e) for e in entries) if f.is_group]
    if not groups:
        return list(records)
    out = []
    for record in records:
        labels = dict(record.labels)
        for group in groups:
            value = label(record.labels, group)
            if value is not None:
                labels[group.name] = value
        out.append(dataclasses.replace(record, labels=labels))
    return out


def check_labelled(
    records: Sequence[Record], entries: Sequence[str], *, what: str, where: str
) -> None:
    """Every entry is labelled (through any member) in at least one record's labels or boxes.

    A finding no record has would train an output on nothing but "unknown" and score it on
    nothing: most often a misspelling (``Efusion``) or a table of another source.

    Args:
        what: the config key listing ``entries`` (``findings``, ``classes``...), for the message.
        where: the records' origin (manifest and split), for the message.

    Raises:
        DataError: naming the findings no record has and the label names the records do have.
    """
    present: set[str] = set()
    for record in records:
        present.update(record.labels)
        present.update(box.finding for box in record.boxes)
    missing = [f.name for f in map(parse, entries) if not any(m in present for m in f.members)]
    if missing:
        shown = sorted(present)
        listed = ", ".join(repr(n) for n in shown[:20]) + (" ..." if len(shown) > 20 else "")
        raise DataError(
            f"{where}: {what} names {', '.join(repr(m) for m in missing)}, which no record has a "
            f"label or box for (the records have: {listed or 'no labels at all'})"
        )
