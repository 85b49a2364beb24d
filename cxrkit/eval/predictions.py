"""Predictions files: the one format every stage writes and :mod:`cxrkit.eval` reads.

A predictions file is CSV or Parquet (chosen by the suffix: ``.csv``, ``.parquet``, ``.pq``), one
row per score, in one of three kinds:

- ``classification``: ``image_id, finding, score``. One row per (image, finding); ``score`` is any
  real number that ranks images (a probability or a logit). Duplicated pairs are an error. An
  optional fourth column ``members`` says which labels a group finding is scored from
  (``Nodule/Mass`` with members ``Nodule|Mass``; empty for a plain finding), so that eval scores a
  group against the label it was trained on (:mod:`cxrkit.data.findings`); ``cxrkit multitask``
  writes it.
- ``detection``: ``image_id, finding, score, x1, y1, x2, y2``. One row per box, in **original pixel
  coordinates** of the manifest image (x1 < x2, y1 < y2). An image with no row had no detection.
- ``screening``: ``image_id, score`` with ``score`` the probability (or any monotone score) of
  *abnormal*; ``image_id, finding, score`` with every ``finding`` equal to ``abnormal`` is accepted
  too and normalised to the two-column form. One row per image.

:func:`read_predictions` and :func:`validate_predictions` check the columns and values and raise
:class:`cxrkit.errors.DataError` naming the file, the rows and the problem. Rows with a NaN score or
an invalid box are an error unless ``allow_missing=True``; then they are dropped and counted in the
returned :class:`Issues`, which every report prints. :func:`match_ids` compares the image ids of the
predictions with those of the manifest in the same spirit, and :func:`check_split` refuses a
predictions file written for another split than the one asked for (:class:`WrongSplitError`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit import io
from cxrkit.data import findings as finding_groups
from cxrkit.errors import ConfigError, DataError, MissingFileError

KINDS = ("classification", "detection", "screening")
COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("image_id", "finding", "score"),
    "detection": ("image_id", "finding", "score", "x1", "y1", "x2", "y2"),
    "screening": ("image_id", "score"),
}
MEMBERS = "members"  # optional classification column: a group finding's labels, "A|B"
SCREENING_FINDING = "abnormal"
PARQUET_SUFFIXES = (".parquet", ".pq")
N_EXAMPLES = 5  # how many offending ids or rows an error message quotes
# cxrkit's choice: below half of the predicted ids in the requested split, the file was written for
# another split (or manifest); a few stray ids above it are set aside and reported instead.
MIN_IN_SPLIT = 0.5
NOT_IN_MANIFEST = "not in the manifest"


class WrongSplitError(DataError):
    """Most image ids of a predictions file belong to another split than the one evaluated: the
    message counts them per split and names the ``--split`` to pass."""


@dataclass
class Issues:
    """Problems found while matching predictions to a manifest, kept for the report.

    ``counts`` maps a problem name (``nan_scores``, ``ids_not_in_manifest``, ...) to how many rows
    or images had it; ``examples`` to a few of them. Under ``allow_missing`` the rows are dropped
    and the problem is only recorded here; otherwise the first problem raises :class:`DataError`.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, items: Sequence[object]) -> None:
        if len(items) == 0:
            return
        self.counts[name] = self.counts.get(name, 0) + len(items)
        self.examples.setdefault(name, [])
        room = N_EXAMPLES - len(self.examples[name])
        self.examples[name].extend(str(x) for x in list(items)[: max(room, 0)])

    def merge(self, other: Issues) -> None:
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
            self.examples.setdefault(name, []).extend(other.examples.get(name, []))
            self.examples[name] = self.examples[name][:N_EXAMPLES]

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {
            name: {"count": count, "examples": self.examples.get(name, [])}
            for name, count in self.counts.items()
        }


def _examples(items: Iterable[object]) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:N_EXAMPLES])
    more = f", ... ({len(items)} in all)" if len(items) > N_EXAMPLES else ""
    return shown + more


def report_or_raise(
    issues: Issues,
    name: str,
    items: Sequence[object],
    *,
    message: str,
    allow_missing: bool,
    source: str,
) -> None:
    """Record ``items`` under ``name`` when ``allow_missing``, else raise a :class:`DataError`.

    ``message`` says what is wrong in a few words, e.g. ``"image ids are not in the manifest"``.
    """
    if len(items) == 0:
        return
    if not allow_missing:
        raise DataError(
            f"{source}: {len(items)} {message} (examples: {_examples(items)}); pass "
            "--allow-missing (allow_missing=True) to score the rest and report them"
        )
    issues.add(name, items)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"predictions kind {kind!r} is not one of {KINDS}")


def _row_names(df: pd.DataFrame, mask: np.ndarray, *, csv: bool) -> list[str]:
    # CSV line numbers count the header as line 1; Parquet rows count from 0 like pandas.
    positions = np.flatnonzero(mask)
    return [f"line {p + 2}" if csv else f"row {p}" for p in positions]


def _refuse_rows(
    df: pd.DataFrame, bad: np.ndarray, *, problem: str, source: str, csv_lines: bool
) -> None:
    if bad.any():
        raise DataError(f"{source}: {problem} at {_examples(_row_names(df, bad, csv=csv_lines))}")


def _droppable_rows(df: pd.DataFrame, *, kind: str) -> list[tuple[str, np.ndarray, str]]:
    """The row problems ``allow_missing`` drops instead of raising, in the order they are checked:
    ``(issue name, row mask, message)``."""
    problems = [
        ("nan_scores", ~np.isfinite(df["score"].to_numpy()), "rows have a NaN or infinite score")
    ]
    if kind == "detection":
        xyxy = df[["x1", "y1", "x2", "y2"]].to_numpy()
        finite = np.isfinite(xyxy).all(axis=1)
        with np.errstate(invalid="ignore"):
            ordered = (xyxy[:, 0] < xyxy[:, 2]) & (xyxy[:, 1] < xyxy[:, 3])
        message = "rows have a non-finite, empty or inverted box (needs x1 < x2, y1 < y2)"
        problems.append(("invalid_boxes", ~(finite & ordered), message))
    return problems


def validate_predictions(
    df: pd.DataFrame,
    *,
    kind: str,
    allow_missing: bool = False,
    source: str = "predictions",
    csv_lines: bool = False,
) -> tuple[pd.DataFrame, Issues]:
    """Check a predictions table and return it in canonical form, with the problems found.

    Args:
        df: the table; extra columns are ignored.
        kind: ``classification``, ``detection`` or ``screening`` (see the module docstring).
        allow_missing: drop rows with a NaN score or an invalid box and record them instead of
            raising.
        source: the file name (or a description) used in messages.
        csv_lines: number offending rows as CSV lines (header = line 1) rather than row indices.

    Returns:
        The table with exactly :data:`COLUMNS` ``[kind]`` (plus ``members`` when a classification
        table has it): ``image_id``, ``finding`` and ``members`` as ``str``, ``score`` and box
        coordinates as ``float64``, index reset; and the :class:`Issues`.

    Raises:
        DataError: a missing column, a non-numeric value, an empty id, a NaN score or an invalid
            box (the last two unless ``allow_missing``), a screening finding other than
            ``abnormal``, or a duplicated (image, finding) pair in a classification table.
    """
    _check_kind(kind)
    issues = Issues()
    df = df.copy()
    if kind == "screening" and "finding" in df.columns:
        others = sorted({str(f) for f in df["finding"].dropna().unique()} - {SCREENING_FINDING})
        if others:
            raise DataError(
                f"{source}: screening predictions carry one score per image; the column "
                f"'finding' must be {SCREENING_FINDING!r} everywhere, found {_examples(others)}"
            )
    columns = COLUMNS[kind]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: {kind} predictions need columns {list(columns)}; missing {missing} "
            f"(found {list(df.columns)})"
        )
    members = kind == "classification" and MEMBERS in df.columns
    df = df.loc[:, [*columns, *([MEMBERS] if members else [])]].reset_index(drop=True)
    if members:
        df[MEMBERS] = df[MEMBERS].fillna("").astype(str)
        _check_members(df, source=source)
    for name in ("image_id", "finding"):
        if name not in columns:
            continue
        empty = df[name].isna().to_numpy() | (df[name].astype(str).str.strip() == "").to_numpy()
        _refuse_rows(df, empty, problem=f"empty {name}", source=source, csv_lines=csv_lines)
        df[name] = df[name].astype(str)
    for name in columns[2 if kind != "screening" else 1 :]:
        numeric = pd.to_numeric(df[name], errors="coerce")
        bad = numeric.isna().to_numpy() & df[name].notna().to_numpy()
        problem = f"column {name!r} is not numeric"
        _refuse_rows(df, bad, problem=problem, source=source, csv_lines=csv_lines)
        df[name] = numeric.astype("float64")

    drop = np.zeros(len(df), dtype=bool)
    for name, bad, message in _droppable_rows(df, kind=kind):
        bad &= ~drop  # a row is reported under its first problem only
        report_or_raise(
            issues,
            name,
            _row_names(df, bad, csv=csv_lines),
            message=message,
            allow_missing=allow_missing,
            source=source,
        )
        drop |= bad
    df = df.loc[~drop].reset_index(drop=True)

    if kind in ("classification", "screening"):
        keys = ["image_id", "finding"] if kind == "classification" else ["image_id"]
        dup = df.duplicated(keys, keep=False).to_numpy()
        if dup.any():
            pairs = df.loc[dup, keys].drop_duplicates().astype(str).agg("/".join, axis=1)
            raise DataError(
                f"{source}: {len(pairs)} {'/'.join(keys)} keys appear more than once "
                f"(examples: {_examples(pairs.tolist())}); keep one score per key"
            )
    return df, issues


def _check_members(df: pd.DataFrame, *, source: str) -> None:
    per_finding = df.groupby("finding")[MEMBERS].unique()
    mixed = [f for f, values in per_finding.items() if len(values) > 1]
    if mixed:
        raise DataError(
            f"{source}: findings {_examples(mixed)} have more than one {MEMBERS!r} value; a "
            "finding is scored from one set of labels"
        )
    for finding, values in per_finding.items():
        try:
            finding_groups.parse(f"{finding}={values[0]}" if values[0] else finding)
        except ValueError as exc:
            raise DataError(f"{source}: column {MEMBERS!r}: {exc}") from None


def finding_entries(df: pd.DataFrame) -> list[str]:
    """The finding entries of a validated classification table, in first-seen order: a group as
    ``"Nodule/Mass=Nodule|Mass"`` (from its ``members`` column), a plain finding as its name."""
    if MEMBERS not in df.columns:
        return list(dict.fromkeys(df["finding"]))
    pairs = df[["finding", MEMBERS]].drop_duplicates("finding")
    return [f"{f}={m}" if m else f for f, m in zip(pairs["finding"], pairs[MEMBERS], strict=True)]


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def check_output(path: str | Path) -> Path:
    """Check a predictions file to be written (suffix, folder) before the work that fills it.

    Raises:
        DataError: a suffix that is neither CSV nor Parquet. ConfigError: see
            :func:`cxrkit.io.check_output_file`.
    """
    path = io.check_output_file(path)  # a directory named --out is the likelier slip: first
    _check_suffix(path)
    return path


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in (".csv", *PARQUET_SUFFIXES):
        raise DataError(
            f"{path}: predictions files are CSV (.csv) or Parquet (.parquet, .pq); "
            f"cannot tell the format of suffix {path.suffix!r}"
        )


def read_predictions(
    path: str | Path, *, kind: str, allow_missing: bool = False
) -> tuple[pd.DataFrame, Issues]:
    """Read and validate a predictions file (CSV or Parquet by suffix).

    ``image_id`` and ``finding`` are read as text (ids such as ``00012`` keep their zeros). See
    :func:`validate_predictions` for the checks and the returned table.

    Raises:
        MissingFileError: ``path`` does not exist.
        DataError: unreadable file or invalid content, naming the file and the rows.
    """
    path = Path(path)
    _check_kind(kind)
    if not path.is_file():
        raise MissingFileError(f"{path}: predictions file not found")
    _check_suffix(path)
    try:
        if _is_parquet(path):
            df = pd.read_parquet(path)
        else:
            # ids and findings stay text ("00012", even "NA"); only numbers may be missing
            numeric = ("score", "x1", "y1", "x2", "y2")
            df = pd.read_csv(
                path,
                dtype={"image_id": str, "finding": str, MEMBERS: str},
                keep_default_na=False,
                na_values={c: ["", "nan", "NaN", "NA", "null", "None"] for c in numeric},
            )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read predictions ({exc})") from exc
    return validate_predictions(
        df,
        kind=kind,
        allow_missing=allow_missing,
        source=str(path),
        csv_lines=not _is_parquet(path),
    )


def write_predictions(df: pd.DataFrame, path: str | Path, *, kind: str) -> Path:
    """Validate ``df`` strictly and write it atomically (temp file + rename) as CSV or Parquet.

    The format follows the suffix of ``path``; the columns written are exactly
    :data:`COLUMNS` ``[kind]`` (and ``members`` when ``df`` has it), in that order.
    """
    path = Path(path)
    _check_suffix(path)
    clean, _ = validate_predictions(df, kind=kind, allow_missing=False, source=str(path))
    if _is_parquet(path):
        return io.atomic_write(path, lambda tmp: clean.to_parquet(tmp, index=False))
    return io.atomic_write(path, lambda tmp: clean.to_csv(tmp, index=False))


def match_ids(
    predicted_ids: Iterable[str],
    manifest_ids: Iterable[str],
    *,
    allow_missing: bool,
    issues: Issues,
    source: str = "predictions",
    require_all: bool = True,
) -> set[str]:
    """Compare the image ids of predictions and manifest; return the ids to evaluate.

    Ids predicted but absent from the manifest are always a problem (a wrong file or split). With
    ``require_all``, manifest ids without any prediction are one too; detection passes ``False``
    because an image without a row is an image without detections.
    """
    predicted = set(predicted_ids)
    manifest = set(manifest_ids)
    report_or_raise(
        issues,
        "ids_not_in_manifest",
        sorted(predicted - manifest),
        message="predicted image ids are not in the manifest (wrong manifest or predictions?)",
        allow_missing=allow_missing,
        source=source,
    )
    if require_all:
        report_or_raise(
            issues,
            "manifest_ids_without_prediction",
            sorted(manifest - predicted),
            message="manifest images have no prediction (restrict the manifest with --split?)",
            allow_missing=allow_missing,
            source=source,
        )
        return predicted & manifest
    return manifest


def check_split(
    predicted_ids: Iterable[str],
    split_of: Mapping[str, str],
    *,
    split: str,
    source: str = "predictions",
    min_fraction: float = MIN_IN_SPLIT,
) -> dict[str, int]:
    """Refuse predictions made for another split; return where the predicted ids lie.

    Args:
        predicted_ids: the image ids of the predictions (repeats count once).
        split_of: image id -> split, for every record of the manifest.
        split: the split being evaluated.
        source: the file name used in the message.
        min_fraction: the least fraction of predicted ids that must be in ``split``.

    Returns:
        Distinct predicted ids per split, plus :data:`NOT_IN_MANIFEST` for ids the manifest lacks.

    Raises:
        WrongSplitError: fewer than ``min_fraction`` of the predicted ids are in ``split``; the
            message names the split holding most of the others.
    """
    where = Counter(split_of.get(i, NOT_IN_MANIFEST) for i in set(predicted_ids))
    total = sum(where.values())
    inside = where.get(split, 0)
    if total == 0 or inside >= min_fraction * total:
        return dict(where)
    others = [(s, n) for s, n in where.most_common() if s != split]
    listed = ", ".join(f"{s!r} ({n})" if s != NOT_IN_MANIFEST else f"{s} ({n})" for s, n in others)
    best = next((s for s, _ in others if s != NOT_IN_MANIFEST), None)
    hint = f" — pass --split {best}" if best else " — wrong manifest or predictions file?"
    raise WrongSplitError(
        f"{source}: {total - inside} of {total} prediction ids are not in split {split!r}; "
        f"they are in split {listed}{hint}"
    )
