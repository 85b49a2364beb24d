"""NIH ChestX-ray14 (Wang et al., "ChestX-ray8", CVPR 2017) -> records.

Files, as NIH releases them (all in ``--root``):

- ``Data_Entry_2017.csv`` (2017) or ``Data_Entry_2017_v2020.csv`` (2020 re-release), optionally
  gzipped: one row per image. The 2017 file has CRLF line ends and a trailing comma in its header;
  in both, the header cell ``OriginalImage[Width,Height]`` splits at its comma into two columns
  (``OriginalImage[Width`` and ``Height]``), likewise ``OriginalImagePixelSpacing[x,y]``.
- ``BBox_List_2017.csv`` (optional): boxes as x, y, w, h in the 1024 x 1024 PNG's pixels; it spells
  ``Infiltrate`` where Data_Entry says ``Infiltration`` (mapped through :data:`classes.NIH`).
- ``train_val_list.txt`` / ``test_list.txt`` (optional): the official patient-level split.
- images: ``images_001/images/*.png`` ... ``images_012/images/*.png`` as unpacked from NIH's
  archives, or a flat ``images/`` folder; every folder whose name starts with ``images`` is
  searched.

Record contract: ``image_id`` is the file name without ``.png``; ``labels`` has all 14 findings and
``"No Finding"``, each 0 or 1 (NIH labels are complete per image: text-mined, so noisy, but never
missing); ``width``/``height`` are the pixel size of the file on disk (1024 x 1024 in the release);
boxes are scaled from the 1024 space to that size. ``meta`` keeps age, sex, follow-up number, and
the original (pre-downscaling) size and pixel spacing from the CSV.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cxrkit.data.records import Box, Record, check_box
from cxrkit.data.sources.common import (
    DEFAULT_FRACTIONS,
    Issues,
    Prepared,
    index_files,
    is_blank,
    line_of,
    parse_float,
    read_csv,
    read_many,
    resolve_input,
    split_fractions,
)
from cxrkit.data.vocab import (
    NIH,
    NIH_FINDINGS,
    NIH_NO_FINDING,
    VIEW_UNRECOGNISED,
    normalize_view,
    unrecognised_view,
)
from cxrkit.errors import DataError, ImageReadError, MissingFileError

SOURCE = "nih"
NIH_SIZE = 1024  # side of the released PNGs; BBox_List coordinates are in this space
DATA_ENTRY_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
BBOX_LIST_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

LABEL_NAMES = (*NIH_FINDINGS, NIH_NO_FINDING)
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")
_OPTIONAL = (
    "Follow-up #",
    "Patient Age",
    "Patient Gender",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
_BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")


def image_folders(root: Path) -> list[Path]:
    """Folders under ``root`` whose name starts with ``images`` (images/, images_001/, ...)."""
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset folder not found")
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("images"))


def find_split_lists(
    root: Path, *, train_val_list: str | Path | None = None, test_list: str | Path | None = None
) -> tuple[Path, Path] | None:
    """The official split lists: both given or both found in ``root``; None when there are none.

    One list without the other is an error: half an official split cannot be applied.
    """
    if train_val_list is not None or test_list is not None:
        return (
            resolve_input(root, train_val_list, (TRAIN_VAL_LIST,), "NIH train_val_list"),
            resolve_input(root, test_list, (TEST_LIST,), "NIH test_list"),
        )
    have = [(root / n).is_file() for n in (TRAIN_VAL_LIST, TEST_LIST)]
    if all(have):
        return root / TRAIN_VAL_LIST, root / TEST_LIST
    if any(have):
        missing = TEST_LIST if have[0] else TRAIN_VAL_LIST
        raise MissingFileError(f"{root}: found one official split list but not {missing}")
    return None


@functools.lru_cache(maxsize=65536)  # few distinct ages, sizes and spacings over 112k rows
def _number(text: str) -> int | float | str | None:
    """An int or float from a metadata cell, the text itself if it is neither, None if empty."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def load_nih(
    *,
    root: str | Path,
    data_entry: str | Path | None = None,
    bbox_list: str | Path | None = None,
    metadata_only: bool = False,
    issues: Issues | None = None,
) -> list[Record]:
    """Read NIH ChestX-ray14 under ``root`` into records with ``split="unassigned"``.

    Args:
        root: the dataset folder (CSV files and ``images*/`` folders).
        data_entry: the Data_Entry CSV (absolute, or relative to ``root``); default: the first of
            :data:`DATA_ENTRY_NAMES` found in ``root``.
        bbox_list: the box list CSV; default: ``BBox_List_2017.csv`` in ``root`` if present.
        metadata_only: keep rows whose image is absent, with a 1024 x 1024 size assumed and
            ``meta["size_assumed"] = True``; image headers are not read at all.
        issues: where row problems go (default: raised).

    Raises:
        MissingFileError: no Data_Entry CSV, or no images at all without ``metadata_only``.
        DataError: malformed CSV, unknown class, bad box, listed image missing (unless skipped).
    """
    from cxrkit.data.images import image_size

    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    entry_path = resolve_input(root, data_entry, DATA_ENTRY_NAMES, "NIH Data_Entry CSV")
    df = read_csv(entry_path, required=_REQUIRED, optional=_OPTIONAL, what="NIH Data_Entry CSV")

    folders = image_folders(root)
    files = index_files(folders, suffixes=(".png",))
    for name, path in index_files([root], suffixes=(".png",), recursive=False).items():
        files.setdefault(name, path)
    if not files and not metadata_only:
        raise MissingFileError(
            f"{root}: no NIH images found (looked in images*/ folders, e.g. images_001/images/ or "
            f"images/); to build a manifest from {entry_path.name} alone, pass --metadata-only "
            "(1024x1024 assumed)"
        )

    n = len(df)
    col = {
        c: (df[c].str.strip().tolist() if c in df.columns else [""] * n)
        for c in (*_REQUIRED, *_OPTIONAL)
    }
    meta_columns = {  # parsed once per distinct value (see _number)
        key: list(map(_number, col[c]))
        for key, c in (
            ("age", "Patient Age"),
            ("follow_up", "Follow-up #"),
            ("original_width", "OriginalImage[Width"),
            ("original_height", "Height]"),
            ("spacing_x", "OriginalImagePixelSpacing[x"),
            ("spacing_y", "y]"),
        )
    }
    rows = zip(
        col["Image Index"],
        col["Finding Labels"],
        col["Patient ID"],
        col["View Position"],
        strict=True,
    )
    assumed_dir = f"{root / 'images'}{os.sep}"  # where a metadata-only row's image would be
    records: dict[str, Record] = {}
    for i, (name, text, patient, view) in enumerate(rows):
        if not (name or text or patient or view) and not any(v[i] for v in col.values()):
            continue  # blank line
        try:
            image_id = _stem(name)
            if not name:
                raise DataError(f"{entry_path}:line {line_of(i)}: empty 'Image Index'")
            labels = _labels(
                text, where=lambda i=i, name=name: f"{entry_path}:line {line_of(i)}: image {name}"
            )
            if not patient:
                raise DataError(f"{entry_path}:line {line_of(i)}: image {name}: empty 'Patient ID'")
            if image_id in records:
                raise DataError(f"{entry_path}:line {line_of(i)}: image {name!r} is listed twice")
            path = files.get(name)
            if path is None and not metadata_only:
                raise ImageReadError(
                    f"{entry_path}:line {line_of(i)}: image {name} is listed but not found under "
                    f"{root}/images*/ (pass --metadata-only to keep rows without images)"
                )
        except DataError as exc:
            issues.add(exc, image_id=_stem(name))
            continue
        meta = {
            "age": meta_columns["age"][i],
            "sex": col["Patient Gender"][i] or None,
            "follow_up": meta_columns["follow_up"][i],
            "original_width": meta_columns["original_width"][i],
            "original_height": meta_columns["original_height"][i],
            "original_pixel_spacing": [meta_columns["spacing_x"][i], meta_columns["spacing_y"][i]],
        }
        if metadata_only:
            meta["size_assumed"] = True
        if unrecognised_view(view):
            meta[VIEW_UNRECOGNISED] = view
        records[image_id] = Record(
            image_id=image_id,
            source=SOURCE,
            path=str(path) if path is not None else f"{assumed_dir}{name}",
            patient_id=patient,
            view=normalize_view(view),
            labels=labels,
            width=NIH_SIZE,
            height=NIH_SIZE,
            meta=meta,
        )

    if not metadata_only:
        todo = list(records.values())
        for record, size in zip(
            todo, read_many(image_size, [Path(r.path) for r in todo]), strict=True
        ):
            if isinstance(size, tuple):
                record.width, record.height = size
            else:
                issues.add(size, image_id=record.image_id)
                del records[record.image_id]

    bbox_path = (
        resolve_input(root, bbox_list, BBOX_LIST_NAMES, "NIH box list")
        if bbox_list is not None or any((root / n).is_file() for n in BBOX_LIST_NAMES)
        else None
    )
    if bbox_path is not None:
        _add_boxes(bbox_path, records, issues)
    return list(records.values())


_LABELS_CACHE: dict[str, dict[str, int]] = {}


def prepare_nih(
    *,
    root: str | Path,
    data_entry: str | Path | None = None,
    bbox_list: str | Path | None = None,
    train_val_list: str | Path | None = None,
    test_list: str | Path | None = None,
    metadata_only: bool = False,
    fractions: str | Mapping[str, float] = DEFAULT_FRACTIONS,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "fail",
) -> Prepared:
    """NIH ChestX-ray14 as split records (``cxrkit prepare nih``).

    The official lists (given, or ``train_val_list.txt`` and ``test_list.txt`` in ``root``) decide
    the split, with ``val_fraction`` of the train_val patients moved to val; without them the
    split is by patient with ``fractions`` (train,val,test). Other arguments: :func:`load_nih`.

    Args:
        on_error: ``"fail"`` at the first bad row, or ``"skip"`` the image and report it.
    """
    from cxrkit.data import splits

    issues = Issues(on_error=on_error)
    records = load_nih(
        root=root,
        data_entry=data_entry,
        bbox_list=bbox_list,
        metadata_only=metadata_only,
        issues=issues,
    )
    lists = find_split_lists(Path(root), train_val_list=train_val_list, test_list=test_list)
    if lists is not None:
        records = splits.official_nih_split(
            records, lists[0], lists[1], val_fraction=val_fraction, seed=seed
        )
    else:
        records = splits.assign_splits(records, fractions=split_fractions(fractions), seed=seed)
    return Prepared(records=records, issues=issues, official_lists=lists)


def _labels(text: str, *, where: Callable[[], str]) -> dict[str, int]:
    """0/1 for every NIH label from a ``Finding Labels`` cell (``"Effusion|Infiltration"``).

    Memoised (a fresh dict is returned each time): 112k rows hold fewer than a thousand distinct
    cells. ``where`` builds the error location only when one is needed.
    """
    cached = _LABELS_CACHE.get(text)
    if cached is None:
        if not text:
            raise DataError(f"{where()}: empty 'Finding Labels' (NIH writes 'No Finding')")
        present = {NIH.canonical(t, where=where()) for t in text.split("|")}
        cached = {n: int(n in present) for n in LABEL_NAMES}
        _LABELS_CACHE[text] = cached
    return dict(cached)


def _stem(name: str) -> str:
    if name.endswith(".png") and "/" not in name:  # the usual case, 112k times: skip os.path
        return name[:-4]
    return os.path.splitext(os.path.basename(name))[0]


def _add_boxes(path: Path, records: dict[str, Record], issues: Issues) -> None:
    """Attach BBox_List boxes (x, y, w, h in 1024 space) to their records, scaled to file pixels.

    A bad box drops its whole image when skipping: an image with one of its lesions removed would
    teach a detector that the lesion is background.
    """
    df = read_csv(path, required=_BBOX_COLUMNS, what="NIH box list")
    columns = [df[c].tolist() for c in _BBOX_COLUMNS]
    dropped: set[str] = set()
    skipped = {item.image_id for item in issues.items}  # Data_Entry rows already reported
    for i, row in enumerate(zip(*columns, strict=True)):
        if is_blank(row):
            continue
        where = f"{path}:line {line_of(i)}"
        name, finding_text, *xywh = (c.strip() for c in row)
        image_id = _stem(name)
        if image_id in dropped:
            continue
        try:
            record = records.get(image_id)
            if record is None:
                if image_id in skipped:
                    continue
                raise DataError(f"{where}: image {name!r} is not in the Data_Entry CSV")
            finding = NIH.canonical(finding_text, where=f"{where}: image {name}")
            if record.labels.get(finding) != 1:
                raise DataError(
                    f"{where}: image {name}: box of {finding!r} but Data_Entry does not list "
                    f"{finding!r} for this image"
                )
            x, y, w, h = (
                parse_float(v, where=where, column=c)
                for v, c in zip(xywh, _BBOX_COLUMNS[2:], strict=True)
            )
            sx, sy = record.width / NIH_SIZE, record.height / NIH_SIZE
            box = Box(finding=finding, x1=x * sx, y1=y * sy, x2=(x + w) * sx, y2=(y + h) * sy)
            check_box(box, width=record.width, height=record.height, where=f"{where}: image {name}")
        except DataError as exc:
            issues.drop(exc, image_id=image_id, records=records, dropped=dropped)
            continue
        record.boxes.append(box)
