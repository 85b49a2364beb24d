"""Private data -> records: a CSV manifest (``prepare csv --csv``) or a bare folder of images.

The CSV has one row per image. Columns, by key (rename with ``--column key=name``):

- ``path`` (required): the image file, relative to ``--root`` or absolute; PNG, JPEG or DICOM.
- ``image_id``: default the path relative to the root without its extension.
- ``patient_id``: default the DICOM PatientID. An image with neither is refused by
  :func:`prepare_csv` unless ``patient_ids=False`` (``--no-patient-ids``): then its image_id
  stands in, flagged in ``meta["patient_id_from"]``, and images of one patient cannot be kept
  together (give the column when you have it).
- ``view``: any common spelling (``PA``, ``AP supine``, ``LATERAL`` ...; see
  :func:`classes.normalize_view`); default the DICOM ViewPosition, else ``unknown``.
- ``split``: train / val / test; when present the split is kept as given.
- ``labels``: findings separated by ``|`` (``"Effusion|Nodule"``, ``"No Finding"``); an empty cell
  means the image is not labeled. Or, with ``--label-columns a,b,c``, one 0/1 column per finding
  (an empty cell: that finding unknown).
- ``mask:<name>`` columns: a mask file (relative to the root or absolute) for finding/organ <name>.

A labeled image gets 0/1 for every class: the ``--classes`` list if given (any other name is an
error), else every name in the label column(s) and the boxes file. The boxes file has columns
``image_id, finding, x1, y1, x2, y2`` and optionally ``reader``, in the image's original pixels; a
box sets its finding to 1 and contradicts a 0 label (an error).

A bare folder (no ``--csv``) is searched recursively for ``.png``, ``.jpg``, ``.jpeg``, ``.dcm`` and
``.dicom`` files; records are unlabeled (for self-supervised pretraining).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrkit.data.records import SPLITS, Box, Record, check_box
from cxrkit.data.sources.common import (
    DEFAULT_FRACTIONS,
    IMAGE_SUFFIXES,
    Issues,
    Prepared,
    index_files,
    is_blank,
    line_of,
    parse_float,
    probe_image,
    read_csv,
    read_many,
    resolve_input,
    split_fractions,
)
from cxrkit.data.vocab import (
    VIEW_UNRECOGNISED,
    ClassTable,
    normalize_view,
    open_table,
    unrecognised_view,
)
from cxrkit.errors import ConfigError, DataError, ImageReadError, MissingFileError

PATIENT_ID_FROM = "patient_id_from"  # meta key: set to "image_id" where the patient id is a guess
COLUMN_KEYS = ("path", "image_id", "patient_id", "view", "split", "labels")
MASK_PREFIX = "mask:"
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "training": "train", "": "unassigned"}
_BOX_COLUMNS = ("image_id", "finding", "x1", "y1", "x2", "y2")


def parse_columns(items: Sequence[str]) -> dict[str, str]:
    """``["path=file,patient_id=PID", "view=ViewPosition"]`` -> ``{"path": "file", ...}``."""
    columns: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, name = part.partition("=")
            key, name = key.strip(), name.strip()
            if not sep or not name:
                raise ConfigError(f"--column {part!r}: expected KEY=COLUMN (e.g. path=file)")
            if key not in COLUMN_KEYS:
                raise ConfigError(f"--column {part!r}: unknown key {key!r} (keys: {COLUMN_KEYS})")
            columns[key] = name
    return columns


def _resolve(root: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else root / path


def _default_id(root: Path, path: Path) -> str:
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return relative.with_suffix("").as_posix()


def _split(text: str, *, where: str) -> str:
    value = text.strip().lower()
    value = _SPLIT_ALIASES.get(value, value)
    if value not in SPLITS:
        raise DataError(f"{where}: split {text!r} is not one of train, val, test")
    return value


def _label_value(text: str, *, where: str, column: str) -> int | None:
    value = text.strip()
    if value in ("1", "1.0"):
        return 1
    if value in ("0", "0.0"):
        return 0
    if not value:
        return None
    raise DataError(f"{where}: column {column!r} = {text!r}, expected 0, 1 or empty")


def load_csv(
    *,
    root: str | Path,
    csv_path: str | Path,
    boxes_path: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    label_columns: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    source: str = "csv",
    issues: Issues | None = None,
) -> list[Record]:
    """Read a CSV manifest of private data (see the module docstring for its columns).

    Args:
        root: folder that relative paths (images, masks) are relative to.
        csv_path: the CSV (absolute, relative to ``root``, or relative to the working directory).
        boxes_path: optional boxes CSV ``image_id, finding, x1, y1, x2, y2[, reader]``.
        columns: key -> CSV column name for the keys in :data:`COLUMN_KEYS`; a key given here
            must exist in the CSV, a key left out is used only if a column of that name exists.
        label_columns: one 0/1 column per finding, instead of a pipe-separated ``labels`` column.
        classes: the allowed class names; default: the names the files use.
        source: the records' ``source``.
        issues: where row problems go (default: raised).
    """
    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise MissingFileError(f"{root}: folder not found")
    csv_path = resolve_input(root, csv_path, (), "CSV manifest")
    given = dict(columns or {})
    names = {key: given.get(key, key) for key in COLUMN_KEYS}
    if label_columns and "labels" in given:
        raise ConfigError("give either --label-columns or --column labels=..., not both")
    label_columns = list(label_columns or [])
    required = [names["path"], *label_columns, *(given[k] for k in given if k != "path")]
    optional = [names[k] for k in COLUMN_KEYS if k not in given]
    df = read_csv(csv_path, required=required, optional=optional, what="CSV manifest")
    has = {key: names[key] in df.columns for key in COLUMN_KEYS}
    if label_columns:
        has["labels"] = False
    mask_columns = {
        c: c[len(MASK_PREFIX) :].strip() for c in df.columns if c.startswith(MASK_PREFIX)
    }
    if boxes_path is not None:
        boxes_path = resolve_input(root, boxes_path, (), "boxes CSV")
        boxes_df = read_csv(
            boxes_path, required=_BOX_COLUMNS, optional=("reader",), what="boxes CSV"
        )
    else:
        boxes_df = None
    table = _class_table(
        df=df,
        boxes_df=boxes_df,
        labels_column=names["labels"] if has["labels"] else None,
        label_columns=label_columns,
        classes=classes,
        source=source,
    )
    label_finding = {
        c: table.canonical(c, where=f"{csv_path}: column {c!r}") for c in label_columns
    }

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    cells = df.to_dict("records")
    for i, row in enumerate(cells):
        if is_blank(row.values()):
            continue
        where = f"{csv_path}:line {line_of(i)}"
        try:
            item = _row(
                row,
                root=root,
                where=where,
                names=names,
                has=has,
                table=table,
                label_finding=label_finding,
                mask_columns=mask_columns,
            )
            if item["image_id"] in seen:
                raise DataError(f"{where}: image_id {item['image_id']!r} is listed twice")
        except DataError as exc:
            issues.add(exc, image_id=str(row.get(names["image_id"], "") or ""))
            continue
        seen.add(item["image_id"])
        rows.append(item)

    records = _records(rows, source=source, issues=issues)
    if boxes_df is not None:
        _add_boxes(boxes_df, path=boxes_path, records=records, table=table, issues=issues)
    return list(records.values())


def _class_table(
    *,
    df: Any,
    boxes_df: Any,
    labels_column: str | None,
    label_columns: Sequence[str],
    classes: Sequence[str] | None,
    source: str,
) -> ClassTable:
    if classes:
        return open_table(source=source or "csv", names=classes)
    names: list[str] = list(label_columns)
    if labels_column is not None:
        for cell in df[labels_column]:
            names.extend(t.strip() for t in cell.split("|") if t.strip())
    if boxes_df is not None:
        names.extend(f.strip() for f in boxes_df["finding"] if f.strip())
    if not names:  # nothing labeled: an empty vocabulary is fine
        return ClassTable(source=source or "csv", names=())
    return open_table(source=source or "csv", names=sorted(set(names), key=str.casefold))


def _row(
    row: dict[str, str],
    *,
    root: Path,
    where: str,
    names: dict[str, str],
    has: dict[str, bool],
    table: ClassTable,
    label_finding: dict[str, str],
    mask_columns: dict[str, str],
) -> dict[str, Any]:
    """One CSV row checked and parsed; the image header is read later, in parallel."""

    def cell(key: str) -> str:
        return row[names[key]].strip() if has[key] else ""

    text = cell("path")
    if not text:
        raise DataError(f"{where}: empty {names['path']!r}")
    path = _resolve(root, text)
    if not path.is_file():
        raise ImageReadError(f"{where}: image {path} not found")
    image_id = cell("image_id") or _default_id(root, path)
    at = f"{where}: image {image_id}"
    labels: dict[str, int] = {}
    if has["labels"] and cell("labels"):
        present = {table.canonical(t, where=at) for t in cell("labels").split("|") if t.strip()}
        labels = {name: int(name in present) for name in table.names}
    for column, finding in label_finding.items():
        value = _label_value(row[column], where=at, column=column)
        if value is not None:
            labels[finding] = value
    masks = {}
    for column, name in mask_columns.items():
        if row[column].strip():
            mask = _resolve(root, row[column].strip())
            if not mask.is_file():
                raise ImageReadError(f"{at}: mask {mask} (column {column!r}) not found")
            masks[name] = str(mask)
    return {
        "image_id": image_id,
        "path": path,
        "patient_id": cell("patient_id"),
        "view": normalize_view(cell("view")) if cell("view") else None,
        "view_text": cell("view"),
        "split": _split(cell("split"), where=at) if has["split"] else "unassigned",
        "labels": labels,
        "mask_paths": masks,
        "where": where,
    }


def _records(rows: list[dict[str, Any]], *, source: str, issues: Issues) -> dict[str, Record]:
    """Read every image's header (in parallel) and build the records."""
    headers = read_many(probe_image, [row["path"] for row in rows])
    records: dict[str, Record] = {}
    for row, header in zip(rows, headers, strict=True):
        if not isinstance(header, dict):
            if row["where"]:  # name the CSV line too, not only the image file
                header = type(header)(f"{row['where']}: {header}")
            issues.add(header, image_id=row["image_id"])
            continue
        meta: dict[str, Any] = {}
        if header["pixel_spacing"]:
            meta["pixel_spacing"] = header["pixel_spacing"]
        text = row["view_text"] if row["view"] else header["view_position"]
        if unrecognised_view(text):
            meta[VIEW_UNRECOGNISED] = text.strip()
        patient_id = row["patient_id"] or header["patient_id"]
        if not patient_id:  # nothing says whose image this is: one patient per image, flagged
            patient_id = row["image_id"]
            meta[PATIENT_ID_FROM] = "image_id"
        records[row["image_id"]] = Record(
            image_id=row["image_id"],
            source=source,
            path=str(row["path"]),
            patient_id=patient_id,
            view=row["view"] or header["view"],
            split=row["split"],
            labels=row["labels"],
            mask_paths=row["mask_paths"],
            width=header["width"],
            height=header["height"],
            meta=meta,
        )
    return records


def _add_boxes(
    df: Any, *, path: Path, records: dict[str, Record], table: ClassTable, issues: Issues
) -> None:
    """Attach the boxes CSV's rows to their records (original pixels, x1 < x2, y1 < y2)."""
    dropped: set[str] = set()
    skipped = {item.image_id for item in issues.items}
    reader_column = "reader" in df.columns
    for i, row in enumerate(df.to_dict("records")):
        if is_blank(row.values()):
            continue
        where = f"{path}:line {line_of(i)}"
        image_id = row["image_id"].strip()
        if image_id in dropped or image_id in skipped:
            continue
        try:
            record = records.get(image_id)
            if record is None:
                raise DataError(f"{where}: image_id {image_id!r} is not in the CSV manifest")
            at = f"{where}: image {image_id}"
            finding = table.canonical(row["finding"], where=at)
            x1, y1, x2, y2 = (parse_float(row[c], where=at, column=c) for c in _BOX_COLUMNS[2:])
            box = Box(
                finding=finding,
                x1=x1,
                y1=y1,
                x2=x2,
                y2=y2,
                reader=row["reader"].strip() if reader_column else "",
            )
            check_box(box, width=record.width, height=record.height, where=at)
            if record.labels.get(finding) == 0:
                raise DataError(f"{at}: box of {finding!r} but its label in the CSV is 0")
        except DataError as exc:
            issues.drop(exc, image_id=image_id, records=records, dropped=dropped)
            continue
        record.boxes.append(box)
        record.labels[finding] = 1


def load_folder(
    *, root: str | Path, source: str = "folder", issues: Issues | None = None
) -> list[Record]:
    """Every PNG/JPEG/DICOM under ``root`` (recursive) as an unlabeled record.

    ``image_id`` is the path relative to ``root`` without extension (``patient7/img2``);
    ``patient_id`` is the DICOM PatientID when there is one, else the image_id; ``view`` comes from
    the DICOM header when available. DICOM files without an extension are not found (name them
    ``.dcm``, or list them in a CSV).
    """
    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise MissingFileError(f"{root}: folder not found")
    files = index_files([root], suffixes=IMAGE_SUFFIXES, key=lambda p: _default_id(root, p))
    if not files:
        raise DataError(
            f"{root}: no {', '.join(IMAGE_SUFFIXES)} files found (searched recursively)"
        )
    rows = [
        {
            "image_id": image_id,
            "path": path,
            "patient_id": "",
            "view": None,
            "view_text": "",
            "split": "unassigned",
            "labels": {},
            "mask_paths": {},
            "where": "",
        }
        for image_id, path in sorted(files.items())
    ]
    return list(_records(rows, source=source, issues=issues).values())


def prepare_csv(
    *,
    root: str | Path,
    csv_path: str | Path | None = None,
    boxes_path: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    label_columns: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    source: str = "",
    fractions: str | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    on_error: str = "fail",
    patient_ids: bool = True,
) -> Prepared:
    """Private data as split records (``cxrkit prepare csv``): a CSV manifest (:func:`load_csv`),
    or without ``csv_path`` a bare folder of images (:func:`load_folder`).

    A ``split`` column in the CSV is kept; when no record has a split, they are split by patient
    with ``fractions`` (train,val,test).

    Args:
        source: the records' ``source``; default ``"csv"``, or ``"folder"`` without ``csv_path``.
        on_error: ``"fail"`` at the first bad row, or ``"skip"`` the image and report it.
        patient_ids: every image must have a patient id (a ``patient_id`` column or a DICOM
            PatientID). ``False`` accepts images without one as one patient each (their records
            carry ``meta["patient_id_from"] = "image_id"``) and adds a warning to the result,
            which the manifest's metadata and the summary repeat: splits by patient are then only
            splits by image, and one patient's images can land in two of them.

    Raises:
        DataError: ``boxes_path``, ``columns``, ``label_columns`` or ``classes`` without
            ``csv_path``; images without a patient id while ``patient_ids``; and see
            :func:`load_csv` / :func:`load_folder`.
    """
    from cxrkit.data import splits

    issues = Issues(on_error=on_error)
    source = source or ("csv" if csv_path is not None else "folder")
    if csv_path is None:
        if boxes_path or columns or label_columns or classes:
            raise DataError(
                "--boxes, --column, --label-columns and --classes need --csv "
                "(without --csv, --root is read as a bare folder of images)"
            )
        records = load_folder(root=root, source=source, issues=issues)
    else:
        records = load_csv(
            root=root,
            csv_path=csv_path,
            boxes_path=boxes_path,
            columns=columns,
            label_columns=label_columns,
            classes=classes,
            source=source,
            issues=issues,
        )
    guessed = [r for r in records if r.meta.get(PATIENT_ID_FROM) == "image_id"]
    warnings = []
    if guessed:
        what = (
            f"{len(guessed)} of {len(records)} images have no patient id (no patient_id column"
            f"{'' if csv_path is None else ' mapped'} and no DICOM PatientID; e.g. "
            f"{guessed[0].image_id!r})"
        )
        if patient_ids:
            raise DataError(
                f"{root}: {what}, so each would count as its own patient and one patient's images "
                "could land in two splits: map the column with --column patient_id=COLUMN, or "
                "pass --no-patient-ids to accept one patient per image"
            )
        warnings.append(f"{what}: each is its own patient, so splits are by image, not patient")
    if not any(r.split != "unassigned" for r in records):
        records = splits.assign_splits(records, fractions=split_fractions(fractions), seed=seed)
    return Prepared(records=records, issues=issues, warnings=warnings)
