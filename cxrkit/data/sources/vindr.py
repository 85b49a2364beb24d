"""VinDr-CXR (Nguyen et al., Sci Data 2022) -> records, in its two published layouts.

PhysioNet (``vindr-cxr/1.0.0``)::

    annotations/annotations_{train,test}.csv    image_id, rad_id, class_name,
                                                x_min, y_min, x_max, y_max
    annotations/image_labels_{train,test}.csv   image_id, rad_id, one 0/1 column per label
    train/<image_id>.dicom, test/<image_id>.dicom

22 local labels (boxes) and 6 global labels (:data:`classes.VINDR_LOCAL`,
:data:`classes.VINDR_GLOBAL`).
Each training image was read by 3 radiologists, each test image by a consensus of 5 (its files may
have no ``rad_id``; the reader is then ``""``). The CSVs may also sit directly in the root folder.

Kaggle VinBigData::

    train.csv    image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
    train/<image_id>.dicom

14 classes plus ``class_id`` 14 = ``"No finding"`` with empty coordinates
(:data:`classes.VINDR_KAGGLE_IDS`). Kaggle's test labels are private, so only train is read.

Record contract:

- ``labels``: a finding is 1 if ANY reader marked it (a box, an image-level label, or a
  "No finding" row), else 0, for every class the files cover; per-reader evidence stays in
  ``meta["votes"]`` (finding -> number of readers who marked it) and ``meta["readers"]``. So an
  image can carry both "No finding" = 1 and a finding = 1 when its readers disagreed; consensus
  rules (majority, fusion) are applied downstream, where they belong to a method.
- ``boxes``: every reader's box, ``reader`` = its ``rad_id``, in original DICOM pixels.
- ``width``/``height`` (Columns/Rows), ``view`` (ViewPosition) and ``patient_id`` come from the
  DICOM header. VinDr-CXR is de-identified: PatientID is usually empty, and the image_id is used
  instead, so images of one patient cannot be grouped (none are known to repeat).
- ``split``: PhysioNet's train/test files give the split; the Kaggle layout leaves it unassigned.

Metadata only (``metadata_only=True``, ``cxrkit prepare vindr --metadata-only``): the DICOMs that
are there are read for their headers only (``stop_before_pixels``: size, ViewPosition, PatientID,
as always), and a listed image that is absent is kept instead of refused, so that the 67,914-row
Kaggle ``train.csv`` can be checked without its 200 GB of images. An absent image's size is
unknown: the record holds the smallest size containing its boxes (1 x 1 without boxes) with
``meta["size_assumed"] = True``, its view is ``unknown`` and its patient id its image id. Such a
manifest is for checking labels, boxes and splits; ``cxrkit preprocess`` refuses its absent images
(the decoded size never matches), so prepare again once the images are there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrkit.data.records import Box, Record, check_box
from cxrkit.data.sources.common import (
    DEFAULT_FRACTIONS,
    Issues,
    Prepared,
    assign_unless_official,
    index_files,
    parse_float,
    probe_image,
    read_csv,
    read_many,
    rows_of,
    size_only_header,
    split_fractions,
)
from cxrkit.data.vocab import (
    VIEW_UNRECOGNISED,
    VINDR,
    VINDR_GLOBAL,
    VINDR_KAGGLE,
    VINDR_KAGGLE_IDS,
    VINDR_LOCAL,
    VINDR_NO_FINDING,
    ClassTable,
    unrecognised_view,
)
from cxrkit.errors import DataError, ImageReadError, MissingFileError

SOURCE = "vindr"
LAYOUTS = ("auto", "physionet", "kaggle")
_COORDS = ("x_min", "y_min", "x_max", "y_max")
_IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
# Classes that may be given without a box: image-level labels.
_IMAGE_LEVEL = frozenset(VINDR_GLOBAL)


@dataclass
class _Image:
    """What the files say about one image, before its header is read."""

    image_id: str
    split: str
    where: str  # file:line of its first row, for errors about the image itself
    votes: dict[str, set[str]] = field(default_factory=dict)  # finding -> readers who marked it
    readers: set[str] = field(default_factory=set)
    boxes: list[tuple[Box, str]] = field(default_factory=list)  # (box, file:line)
    covered: set[str] = field(default_factory=set)  # classes the files state 0/1 for
    failed: bool = False  # a row about it was bad and skipped: the image is left out

    def mark(self, finding: str, reader: str) -> None:
        self.votes.setdefault(finding, set()).add(reader)


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / "annotations" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def detect_layout(root: Path) -> str:
    """``"physionet"`` or ``"kaggle"`` from the files present in ``root``."""
    physionet = any(
        _find(root, f"{kind}_{split}.csv")
        for kind in ("annotations", "image_labels")
        for split in ("train", "test")
    )
    kaggle = (root / "train.csv").is_file()
    if physionet and kaggle:
        raise DataError(
            f"{root}: holds both PhysioNet (annotations/*.csv) and Kaggle (train.csv) files; "
            "choose one with --layout physionet or --layout kaggle"
        )
    if physionet:
        return "physionet"
    if kaggle:
        return "kaggle"
    raise MissingFileError(
        f"{root}: no VinDr-CXR files found (PhysioNet: annotations/annotations_train.csv, "
        "annotations/image_labels_train.csv, ...; Kaggle: train.csv)"
    )


def load_vindr(
    *,
    root: str | Path,
    layout: str = "auto",
    metadata_only: bool = False,
    issues: Issues | None = None,
) -> tuple[list[Record], bool]:
    """Read VinDr-CXR under ``root``.

    Args:
        root: the dataset folder (see the module docstring for both layouts).
        layout: ``"physionet"``, ``"kaggle"`` or ``"auto"`` (detected from the files).
        metadata_only: keep listed images that are absent, size assumed (module docstring).
        issues: where row problems go (default: raised).

    Returns:
        The records, and whether their ``split`` is the official one (PhysioNet train/test: True;
        Kaggle: False, every record ``unassigned``).

    Raises:
        MissingFileError: no VinDr files, or no image folder.
        DataError: missing column, malformed CSV, unknown class, bad box, missing image.
    """
    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset folder not found")
    if layout not in LAYOUTS:
        raise DataError(f"unknown VinDr layout {layout!r} (use one of {LAYOUTS})")
    if layout == "auto":
        layout = detect_layout(root)
    images: dict[str, _Image] = {}
    if layout == "physionet":
        found = False
        for split in ("train", "test"):
            ann = _find(root, f"annotations_{split}.csv")
            lab = _find(root, f"image_labels_{split}.csv")
            if ann is not None:
                _read_boxes(
                    ann, split=split, table=VINDR, kaggle=False, images=images, issues=issues
                )
            if lab is not None:
                _read_image_labels(lab, split=split, images=images, issues=issues)
            found = found or ann is not None or lab is not None
        if not found:
            raise MissingFileError(
                f"{root}: no annotations_{{train,test}}.csv or image_labels_{{train,test}}.csv "
                "in annotations/ or the root folder"
            )
        table = VINDR
    elif layout == "kaggle":
        train_csv = root / "train.csv"
        if not train_csv.is_file():
            raise MissingFileError(f"{train_csv}: Kaggle VinBigData train.csv not found")
        _read_boxes(
            train_csv,
            split="unassigned",
            table=VINDR_KAGGLE,
            kaggle=True,
            images=images,
            issues=issues,
        )
        table = VINDR_KAGGLE
    records = _to_records(root, images, table=table, metadata_only=metadata_only, issues=issues)
    return records, layout == "physionet"


def prepare_vindr(
    *,
    root: str | Path,
    layout: str = "auto",
    fractions: str | Mapping[str, float] = DEFAULT_FRACTIONS,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "fail",
    abnormal_only: bool = False,
    split_from: Mapping[str, str | Path] | None = None,
    metadata_only: bool = False,
) -> Prepared:
    """VinDr-CXR as split records (``cxrkit prepare vindr``): PhysioNet's train/test kept with
    ``val_fraction`` of the train patients moved to val; Kaggle's images split by patient with
    ``fractions``. Other arguments: :func:`load_vindr`; ``on_error``: ``"fail"`` or ``"skip"``.

    Args:
        abnormal_only: keep only images with at least one reader's box (BarlowTwins-CXR trained
            and tested on the 4,394 such images of Kaggle's train set), before splitting.
        split_from: split -> a COCO JSON or id-list file whose images go to that split
            (:func:`cxrkit.data.splits.splits_from_files`); the other images are split by patient
            with ``fractions`` among the splits without a file. Replaces the official split.
        metadata_only: see :func:`load_vindr`; the summary says how many sizes are assumed.
    """
    from cxrkit.data import splits

    issues = Issues(on_error=on_error)
    records, official = load_vindr(
        root=root, layout=layout, metadata_only=metadata_only, issues=issues
    )
    warnings: list[str] = []
    assumed = sum(bool(r.meta.get("size_assumed")) for r in records)
    if assumed:
        warnings.append(
            f"metadata only: {assumed} of {len(records)} images are absent; their size is the "
            "extent of their boxes (meta['size_assumed']), their view unknown and their patient "
            "id their image id; prepare again with the images before preprocessing"
        )
    if abnormal_only:
        kept = abnormal_records(records)
        warnings.append(
            f"abnormal only: kept {len(kept)} of {len(records)} images (those with a box)"
        )
        records = kept
    if split_from:
        records, found = splits.splits_from_files(
            records, split_from, fractions=split_fractions(fractions), seed=seed
        )
        warnings += found
    else:
        records = assign_unless_official(
            records, official=official, fractions=fractions, val_fraction=val_fraction, seed=seed
        )
    return Prepared(records=records, issues=issues, warnings=warnings)


def abnormal_records(records: Sequence[Record]) -> list[Record]:
    """The records with at least one box (any reader): VinDr's "abnormal" images."""
    return [r for r in records if r.boxes]


def _reader_of(row: dict[str, str]) -> str:
    return row.get("rad_id", "").strip()


def _read_boxes(
    path: Path,
    *,
    split: str,
    table: ClassTable,
    kaggle: bool,
    images: dict[str, _Image],
    issues: Issues,
) -> None:
    """annotations_*.csv or Kaggle train.csv: one row per reader mark (a box, or a no-box label)."""
    required = ("image_id", "class_name", *_COORDS) + (("class_id", "rad_id") if kaggle else ())
    df = read_csv(path, required=required, optional=("rad_id",), what="VinDr annotation file")
    # Local classes are covered by a box file: each reader looked for every one of them.
    covered = set(table.names) if kaggle else {*VINDR_LOCAL, VINDR_NO_FINDING}
    for where, row in rows_of(df, path=path):
        image_id = row["image_id"].strip()
        try:
            _box_row(
                row,
                where=where,
                table=table,
                kaggle=kaggle,
                covered=covered,
                split=split,
                images=images,
            )
        except DataError as exc:
            issues.add(exc, image_id=image_id)
            if image_id in images:
                images[image_id].failed = True


def _box_row(
    row: dict[str, str],
    *,
    where: str,
    table: ClassTable,
    kaggle: bool,
    covered: set[str],
    split: str,
    images: dict[str, _Image],
) -> None:
    image_id = row["image_id"].strip()
    if not image_id:
        raise DataError(f"{where}: empty image_id")
    image = _image(images, image_id, split=split, where=where)
    image.covered |= covered
    reader = _reader_of(row)
    image.readers.add(reader)
    at = f"{where}: image {image_id}"
    finding = table.canonical(row["class_name"], where=at)
    if kaggle:
        _check_class_id(row["class_id"], finding, where=at)
    coords = [row[c].strip() for c in _COORDS]
    if not any(coords):
        if finding in VINDR_LOCAL:
            raise DataError(f"{at}: {finding!r} has no box coordinates (x_min..y_max empty)")
        image.mark(finding, reader)
        return
    if not all(coords):
        raise DataError(f"{at}: some of x_min, y_min, x_max, y_max are empty")
    if finding == VINDR_NO_FINDING or finding in _IMAGE_LEVEL:
        raise DataError(f"{at}: {finding!r} is an image-level label but the row has a box")
    x1, y1, x2, y2 = (
        parse_float(v, where=at, column=c) for v, c in zip(coords, _COORDS, strict=True)
    )
    image.boxes.append((Box(finding=finding, x1=x1, y1=y1, x2=x2, y2=y2, reader=reader), at))
    image.mark(finding, reader)


def _check_class_id(text: str, finding: str, *, where: str) -> None:
    try:
        class_id = int(float(text))
    except ValueError:
        raise DataError(f"{where}: class_id {text!r} is not an integer") from None
    expected = VINDR_KAGGLE_IDS.get(class_id)
    if expected != finding:
        raise DataError(
            f"{where}: class_id {class_id} is {expected!r} in the VinBigData table, "
            f"but class_name says {finding!r}"
        )


def _read_image_labels(
    path: Path, *, split: str, images: dict[str, _Image], issues: Issues
) -> None:
    """image_labels_*.csv: one row per reader (or one consensus row), one 0/1 column per label."""
    df = read_csv(path, required=("image_id",), optional=("rad_id",), what="VinDr image-label file")
    label_columns = [c for c in df.columns if c not in ("image_id", "rad_id")]
    if not label_columns:
        raise DataError(f"{path}: no label columns after image_id/rad_id")
    finding_of: dict[str, str] = {}
    for column in label_columns:
        finding = VINDR.canonical(column, where=f"{path}: column {column!r}")
        if finding in finding_of.values():
            raise DataError(f"{path}: two columns name the class {finding!r}")
        finding_of[column] = finding
    for where, row in rows_of(df, path=path):
        image_id = row["image_id"].strip()
        try:
            if not image_id:
                raise DataError(f"{where}: empty image_id")
            image = _image(images, image_id, split=split, where=where)
            reader = _reader_of(row)
            image.readers.add(reader)
            for column, finding in finding_of.items():
                value = row[column].strip()
                if value in ("1", "1.0"):
                    image.mark(finding, reader)
                elif value not in ("0", "0.0", ""):
                    raise DataError(
                        f"{where}: image {image_id}: column {column!r} = {value!r}, expected 0 or 1"
                    )
                if value:
                    image.covered.add(finding)
        except DataError as exc:
            issues.add(exc, image_id=image_id)
            if image_id in images:
                images[image_id].failed = True


def _image(images: dict[str, _Image], image_id: str, *, split: str, where: str) -> _Image:
    image = images.get(image_id)
    if image is None:
        image = images[image_id] = _Image(image_id=image_id, split=split, where=where)
    elif image.split != split:
        raise DataError(
            f"{where}: image {image_id} is in both the {image.split} and the {split} files"
        )
    return image


def _to_records(
    root: Path,
    images: dict[str, _Image],
    *,
    table: ClassTable,
    metadata_only: bool,
    issues: Issues,
) -> list[Record]:
    files = index_files(
        [root / "train", root / "test"], suffixes=_IMAGE_SUFFIXES, key=lambda p: p.stem
    )
    if not files and not metadata_only:
        raise MissingFileError(
            f"{root}: no images in train/ or test/ (VinDr-CXR ships them as <image_id>.dicom); "
            "to check the CSV files alone, pass --metadata-only (sizes assumed)"
        )
    present: list[_Image] = []
    absent: dict[str, dict[str, Any]] = {}
    for image in images.values():
        if image.failed:
            continue
        if image.image_id in files:
            present.append(image)
        elif metadata_only:
            present.append(image)
            absent[image.image_id] = _assumed_header(image)
        else:
            issues.add(
                ImageReadError(
                    f"{image.where}: image {image.image_id} is listed but "
                    f"{root}/{image.split if image.split != 'unassigned' else 'train'}/"
                    f"{image.image_id}.dicom is not there (pass --metadata-only to keep it)"
                ),
                image_id=image.image_id,
            )
    on_disk = [image for image in present if image.image_id not in absent]
    read = dict(
        zip(
            (image.image_id for image in on_disk),
            read_many(probe_image, [files[image.image_id] for image in on_disk]),
            strict=True,
        )
    )
    headers = [absent.get(image.image_id) or read[image.image_id] for image in present]
    records = []
    for image, header in zip(present, headers, strict=True):
        if not isinstance(header, dict):
            issues.add(header, image_id=image.image_id)
            continue
        try:
            for box, where in image.boxes:
                check_box(box, width=header["width"], height=header["height"], where=where)
        except DataError as exc:
            issues.add(exc, image_id=image.image_id)
            continue
        labels = {name: int(name in image.votes) for name in table.names if name in image.covered}
        labels.update({name: 1 for name in image.votes})
        meta = {
            "votes": {f: len(r) for f, r in sorted(image.votes.items())},
            "readers": sorted(image.readers),
            "patient_id_from": "dicom" if header["patient_id"] else "image_id",
        }
        if image.image_id in absent:
            meta["size_assumed"] = True
        if header.get("pixel_spacing"):
            meta["pixel_spacing"] = header["pixel_spacing"]
        if unrecognised_view(header["view_position"]):
            meta[VIEW_UNRECOGNISED] = header["view_position"]
        records.append(
            Record(
                image_id=image.image_id,
                source=SOURCE,
                path=str(files.get(image.image_id) or _assumed_path(root, image)),
                patient_id=header["patient_id"] or image.image_id,
                view=header["view"],
                split=image.split,
                labels=labels,
                boxes=[box for box, _ in image.boxes],
                width=header["width"],
                height=header["height"],
                meta=meta,
            )
        )
    return records


def _assumed_path(root: Path, image: _Image) -> Path:
    """Where an absent image would be: ``<root>/<split>/<image_id>.dicom`` (Kaggle: train/)."""
    folder = image.split if image.split in ("train", "test") else "train"
    return root / folder / f"{image.image_id}.dicom"


def _assumed_header(image: _Image) -> dict[str, Any]:
    """:func:`probe_image`'s fields for an absent image: the smallest size holding its boxes."""
    return size_only_header(
        max([1, *(math.ceil(box.x2) for box, _ in image.boxes)]),
        max([1, *(math.ceil(box.y2) for box, _ in image.boxes)]),
    )
