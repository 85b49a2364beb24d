"""Dataset adapters: ``cxrkit prepare {nih,vindr,chestxdet,csv}`` turns a dataset's own layout
into a manifest of :class:`cxrkit.data.records.Record` (see :mod:`cxrkit.data.records`).

Each adapter module (:mod:`.nih`, :mod:`.vindr`, :mod:`.chestxdet`, :mod:`.folder`) reads its files
into records with ``split = "unassigned"`` or the source's official split; this module holds what
they share (CSV reading whose errors name file, line and column; the skip-and-report collector;
the one-pass image index; parallel header reads) and the ``prepare`` command, which assigns
patient-level splits (:mod:`cxrkit.data.splits`) and writes the manifest with
:func:`records.write_manifest`.

Row-level problems (unknown class, box outside its image, listed image missing) raise a
:class:`~cxrkit.errors.DataError` by default; with ``--on-error skip`` the image is left out of the
manifest and listed in ``<out_stem>_errors.csv`` beside it. File-level problems (missing file or
column, malformed CSV) always stop the command.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cxrkit.errors import CxrkitError, DataError, ImageReadError, MissingFileError

if TYPE_CHECKING:
    import pandas as pd

    from cxrkit.data.records import Record

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
ON_ERROR = ("raise", "skip")


# --------------------------------------------------------------------------------- shared pieces
@dataclass(frozen=True)
class Issue:
    """One skipped image: its id (may be empty), where the problem is (file:line) and why."""

    image_id: str
    reason: str


@dataclass
class Issues:
    """Row problems: raised at once (``on_error="raise"``) or collected for ``<out>_errors.csv``."""

    on_error: str = "raise"
    items: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def add(self, error: CxrkitError, *, image_id: str = "") -> None:
        """Re-raise ``error`` unless skipping; else remember it (the caller drops the image)."""
        if self.on_error == "raise":
            raise error
        self.items.append(Issue(image_id=image_id, reason=str(error)))

    def __len__(self) -> int:
        return len(self.items)

    def write_csv(self, path: str | Path) -> Path:
        """Write ``image_id,reason`` rows atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "reason"])
            writer.writerows([i.image_id, i.reason] for i in self.items)
        os.replace(tmp, path)
        return path


def line_of(index: int) -> int:
    """1-based line number in a CSV file of the data row at 0-based ``index`` (header = line 1)."""
    return index + 2


def read_csv(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    optional: Sequence[str] = (),
    what: str = "CSV file",
) -> pd.DataFrame:
    """Read a CSV (``.gz``/``.zip`` too) as text, with every column a string and no NaN.

    Column names are stripped; ``required`` and ``optional`` names are matched ignoring case and
    renamed to the spelling given here. Row ``i`` of the result is line :func:`line_of` ``(i)`` of
    the file (blank lines are kept as empty rows so the numbering holds; callers skip them).

    Raises:
        MissingFileError: no such file.
        DataError: not readable as CSV, or a required column is missing (the message names the
            file and the column and lists the columns that are there).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: {what} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: malformed {what} ({str(exc).strip()})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    by_key = {c.casefold(): c for c in df.columns}
    renames = {}
    for name in (*required, *optional):
        found = by_key.get(name.casefold())
        if found is None:
            if name in required:
                present = ", ".join(repr(c) for c in df.columns if not c.startswith("Unnamed:"))
                raise DataError(f"{path}: missing column {name!r} (columns present: {present})")
            continue
        renames[found] = name
    return df.rename(columns=renames)


def is_blank(values: Iterable[str]) -> bool:
    """True for a row whose cells are all empty (a blank line in the CSV)."""
    return all(not str(v).strip() for v in values)


def parse_float(text: str, *, where: str, column: str) -> float:
    """A float from a CSV cell; :class:`DataError` naming ``where`` and ``column`` otherwise."""
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} = {text!r} is not a number") from None


def resolve_input(root: Path, given: str | Path | None, defaults: Sequence[str], what: str) -> Path:
    """The file named ``given`` (absolute, relative to ``root``, or relative to the working
    directory, in that order), or the first of ``defaults`` found in ``root``."""
    if given is not None:
        given = Path(given)
        for candidate in (given,) if given.is_absolute() else (root / given, given):
            if candidate.is_file():
                return candidate
        raise MissingFileError(
            f"{root / given if not given.is_absolute() else given}: {what} not found"
        )
    for name in defaults:
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root}: no {what} found (looked for {', '.join(defaults)})")


def index_files(
    folders: Iterable[Path],
    *,
    suffixes: Collection[str] = IMAGE_SUFFIXES,
    key: Callable[[Path], str] = lambda p: p.name,
    recursive: bool = True,
) -> dict[str, Path]:
    """Map ``key(path)`` -> path for every file under ``folders`` with one of ``suffixes``.

    One directory listing per folder (``os.scandir``), no per-file ``stat`` calls: listing the
    112k NIH images this way takes about a second where checking each listed image would take
    minutes on a network file system. Two files with the same key are ambiguous and raise
    :class:`DataError`.
    """
    found: dict[str, Path] = {}
    suffixes = {s.lower() for s in suffixes}
    stack = [Path(f) for f in folders]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DataError(f"{folder}: cannot list folder ({exc.strerror})") from exc
        for entry in entries:
            if entry.is_dir():
                if recursive and not entry.name.startswith("."):
                    stack.append(Path(entry.path))
                continue
            path = Path(entry.path)
            if path.suffix.lower() not in suffixes or entry.name.startswith("."):
                continue
            k = key(path)
            if k in found and found[k] != path:
                raise DataError(
                    f"two image files with the same name {k!r}: {found[k]} and {path} "
                    "(remove one so the manifest points at a single file)"
                )
            found[k] = path
    return found


def read_many(fn: Callable[[Path], T], paths: Sequence[Path]) -> list[T | CxrkitError]:
    """``fn(path)`` for every path, in parallel threads (header reads wait on the disk, not the
    CPU); an error a user can cause is returned in place of the result instead of raised."""

    def one(path: Path) -> T | CxrkitError:
        try:
            return fn(path)
        except CxrkitError as exc:
            return exc

    if len(paths) < 64:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
        return list(pool.map(one, paths))


def probe_image(path: Path) -> dict[str, Any]:
    """What a file's header says, without decoding pixels: ``width``, ``height``, ``view``,
    ``patient_id`` (``""`` when unknown) and ``pixel_spacing`` ([row, col] mm or None).

    DICOM (by name or by its ``DICM`` marker) gives all of them; PNG/JPEG only the size.

    Raises:
        ImageReadError: missing, empty or unreadable file (DicomReadError for DICOM).
    """
    from cxrkit.data.dicom import read_dicom_header
    from cxrkit.data.images import image_size, is_dicom
    from cxrkit.data.vocab import normalize_view

    if is_dicom(path):
        header = read_dicom_header(path)
        if not header["rows"] or not header["columns"]:
            raise ImageReadError(f"{path}: DICOM header has no Rows/Columns")
        view = header["view"]
        if view == "unknown":
            view = normalize_view(header.get("view_position"))
        return {
            "width": int(header["columns"]),
            "height": int(header["rows"]),
            "view": view,
            "patient_id": header.get("patient_id") or "",
            "pixel_spacing": header.get("pixel_spacing"),
        }
    width, height = image_size(path)
    return {
        "width": width,
        "height": height,
        "view": "unknown",
        "patient_id": "",
        "pixel_spacing": None,
    }


# --------------------------------------------------------------------------------- the command
_COMMON_EPILOG = """
Every subcommand writes one Parquet manifest (--out) and, with --on-error skip, a CSV of the
images it left out beside it (<out_stem>_errors.csv). Splits are by patient: the source's
official split when it has one (validation carved from its training part, --val-fraction),
otherwise --split-fractions train,val,test stratified by label. The result depends only on the
inputs and --seed.
"""

_NIH_EPILOG = """examples:
  # the full release: images_001/images/*.png ... images_012/images/*.png, Data_Entry_2017.csv,
  # BBox_List_2017.csv, train_val_list.txt and test_list.txt in one folder (official split used)
  cxrkit prepare nih --root /data/ChestX-ray14 --out nih.parquet

  # metadata only (no images on this machine): 1024x1024 assumed, 112,120 rows in seconds
  cxrkit prepare nih --root /data/nih-meta --data-entry Data_Entry_2017.csv.gz \\
      --metadata-only --out nih-meta.parquet

  # a sample with renamed CSVs and a flat images/ folder, random patient split 70/10/20
  cxrkit prepare nih --root sample --data-entry Data_Entry_2017_subset.csv \\
      --bbox-list BBox_List_2017_subset.csv --split-fractions 0.7,0.1,0.2 --out sample.parquet
"""

_VINDR_EPILOG = """examples:
  # PhysioNet VinDr-CXR 1.0.0: annotations/{annotations,image_labels}_{train,test}.csv,
  # train/*.dicom, test/*.dicom; official train/test kept, 10% of train patients -> val
  cxrkit prepare vindr --root /data/vindr-cxr/1.0.0 --out vindr.parquet

  # Kaggle VinBigData: train.csv (14 classes + "No finding") and train/*.dicom
  cxrkit prepare vindr --root /data/vinbigdata --layout kaggle --out vinbig.parquet

A finding is 1 for an image if ANY reader marked it; meta["votes"] keeps how many readers did.
Every reader's box is kept with its rad_id as the box's reader (fusion happens in finetune).
VinDr is de-identified: patient_id is the DICOM PatientID when present, else the image_id.
"""

_CHESTXDET_EPILOG = """examples:
  # ChestX_Det_train.json, ChestX_Det_test.json and the images in train/ and test/ under --root;
  # polygons become masks in chestxdet_masks/<image_id>.<finding>.png beside the manifest
  cxrkit prepare chestxdet --root /data/ChestX-Det --out chestxdet.parquet

  # annotations only (no images here): 1024x1024 assumed; views from a CSV (file_name,view)
  cxrkit prepare chestxdet --root /data/ChestX-Det --metadata-only --views views.csv \\
      --out chestxdet.parquet
"""

_CSV_EPILOG = """examples:
  # a hospital export: paths relative to --root, pipe-separated labels ("Effusion|Nodule",
  # "No Finding"), boxes in original pixels (image_id,finding,x1,y1,x2,y2[,reader])
  cxrkit prepare csv --root /data/hospital --csv labels.csv --boxes boxes.csv \\
      --column path=file,patient_id=PatientID,view=ViewPosition,labels=Findings \\
      --out hospital.parquet

  # one 0/1 column per finding (checked against a fixed class list); mask files in columns
  # named like "mask:Left lung" are picked up by themselves
  cxrkit prepare csv --root /data/h2 --csv h2.csv --label-columns Effusion,Nodule,Mass \\
      --classes Effusion,Nodule,Mass --out h2.parquet

  # a bare folder of PNG/JPEG/DICOM (recursive) for unlabeled pretraining
  cxrkit prepare csv --root /data/unlabeled --out unlabeled.parquet

CSV columns (rename with --column key=name): path (required; relative to --root or absolute),
image_id (default: path without extension), patient_id (default: the DICOM PatientID, else
image_id), view (PA/AP/LL/..., default: the DICOM header, else unknown), split (train/val/test;
if present it is kept, rows left empty stay unassigned, and --split-fractions is not used), labels
(pipe-separated; an empty cell means not labeled), mask:<name> (a mask file per image).
Boxes (--boxes) are in original pixels.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare {nih,vindr,chestxdet,csv}`` to the ``cxrkit`` command."""
    parser = subparsers.add_parser(
        "prepare",
        help="turn a dataset (NIH, VinDr-CXR, ChestX-Det, CSV/folder) into a manifest",
        description="Turn a dataset's own files into a cxrkit manifest (Parquet) with "
        "patient-level splits.",
        epilog=_COMMON_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, required=True, help="the dataset folder")
    common.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
    common.add_argument(
        "--split-fractions",
        default="0.8,0.1,0.1",
        help="train,val,test fractions of images for sources without an official split "
        "(default 0.8,0.1,0.1)",
    )
    common.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of an official training split moved to val, by patient (default 0.1)",
    )
    common.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    common.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="raise",
        help="raise: stop at the first bad row (default); skip: leave the image out and list it "
        "in <out_stem>_errors.csv",
    )

    def add(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return sources.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=epilog + _COMMON_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    nih = add("nih", "NIH ChestX-ray14 (Data_Entry_2017.csv, BBox_List_2017.csv)", _NIH_EPILOG)
    nih.add_argument(
        "--data-entry",
        help="Data_Entry CSV (default: Data_Entry_2017_v2020.csv or Data_Entry_2017.csv, "
        "optionally .gz, in --root)",
    )
    nih.add_argument("--bbox-list", help="box list CSV (default: BBox_List_2017.csv if present)")
    nih.add_argument("--train-val-list", help="official list (default: train_val_list.txt)")
    nih.add_argument("--test-list", help="official list (default: test_list.txt)")
    nih.add_argument(
        "--metadata-only",
        action="store_true",
        help="build the manifest from the CSV alone: images need not exist, 1024x1024 assumed",
    )
    nih.set_defaults(func=_prepare_nih)

    vindr = add("vindr", "VinDr-CXR (PhysioNet) or VinBigData (Kaggle)", _VINDR_EPILOG)
    vindr.add_argument(
        "--layout",
        choices=("auto", "physionet", "kaggle"),
        default="auto",
        help="file layout (default: detected from the files in --root)",
    )
    vindr.set_defaults(func=_prepare_vindr)

    det = add("chestxdet", "ChestX-Det (ChestX_Det_{train,test}.json)", _CHESTXDET_EPILOG)
    det.add_argument("--train-json", help="default: ChestX_Det_train.json in --root")
    det.add_argument("--test-json", help="default: ChestX_Det_test.json in --root")
    det.add_argument("--views", type=Path, help="CSV with columns file_name,view")
    det.add_argument(
        "--metadata-only",
        action="store_true",
        help="images need not exist: 1024x1024 assumed",
    )
    det.add_argument("--no-masks", action="store_true", help="keep boxes, do not draw masks")
    det.set_defaults(func=_prepare_chestxdet)

    own = add("csv", "your own data: a CSV manifest, or a bare folder of images", _CSV_EPILOG)
    own.add_argument("--csv", type=Path, help="CSV with one row per image (omit: bare folder)")
    own.add_argument("--boxes", type=Path, help="CSV image_id,finding,x1,y1,x2,y2[,reader]")
    own.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="KEY=NAME[,KEY=NAME...]",
        help="CSV column of path, image_id, patient_id, view, split or labels (repeatable)",
    )
    own.add_argument(
        "--label-columns",
        help="comma-separated 0/1 columns, one per finding (instead of a pipe-separated column)",
    )
    own.add_argument(
        "--classes",
        help="comma-separated class list; any other name in labels or boxes is an error",
    )
    own.add_argument("--source", default="", help="source name stored in each record")
    own.set_defaults(func=_prepare_csv)


def _prepare_nih(args: argparse.Namespace) -> int:
    from cxrkit.data import splits
    from cxrkit.data.sources import nih

    issues = Issues(on_error=args.on_error)
    records = nih.load_nih(
        root=args.root,
        data_entry=args.data_entry,
        bbox_list=args.bbox_list,
        metadata_only=args.metadata_only,
        issues=issues,
    )
    lists = nih.find_split_lists(
        args.root, train_val_list=args.train_val_list, test_list=args.test_list
    )
    if lists is not None:
        print(f"official split: {lists[0].name}, {lists[1].name}")
        records = splits.official_nih_split(
            records, lists[0], lists[1], val_fraction=args.val_fraction, seed=args.seed
        )
    else:
        records = splits.assign_splits(
            records, fractions=splits.parse_fractions(args.split_fractions), seed=args.seed
        )
    return _finish(records, issues, args)


def _prepare_vindr(args: argparse.Namespace) -> int:
    from cxrkit.data import splits
    from cxrkit.data.sources import vindr

    issues = Issues(on_error=args.on_error)
    records, official = vindr.load_vindr(root=args.root, layout=args.layout, issues=issues)
    if official:
        records = splits.carve_validation(records, val_fraction=args.val_fraction, seed=args.seed)
    else:
        records = splits.assign_splits(
            records, fractions=splits.parse_fractions(args.split_fractions), seed=args.seed
        )
    return _finish(records, issues, args)


def _prepare_chestxdet(args: argparse.Namespace) -> int:
    from cxrkit.data import splits
    from cxrkit.data.sources import chestxdet

    issues = Issues(on_error=args.on_error)
    records = chestxdet.load_chestxdet(
        root=args.root,
        train_json=args.train_json,
        test_json=args.test_json,
        views=args.views,
        masks_dir=None if args.no_masks else masks_dir_for(args.out),
        metadata_only=args.metadata_only,
        issues=issues,
    )
    records = splits.carve_validation(records, val_fraction=args.val_fraction, seed=args.seed)
    return _finish(records, issues, args)


def _prepare_csv(args: argparse.Namespace) -> int:
    from cxrkit.data import splits
    from cxrkit.data.sources import folder

    issues = Issues(on_error=args.on_error)
    source = args.source or ("csv" if args.csv else "folder")
    if args.csv is None:
        if args.boxes or args.column or args.label_columns or args.classes:
            raise DataError(
                "--boxes, --column, --label-columns and --classes need --csv "
                "(without --csv, --root is read as a bare folder of images)"
            )
        records = folder.load_folder(root=args.root, source=source, issues=issues)
    else:
        records = folder.load_csv(
            root=args.root,
            csv_path=args.csv,
            boxes_path=args.boxes,
            columns=folder.parse_columns(args.column),
            label_columns=_split_list(args.label_columns),
            classes=_split_list(args.classes),
            source=source,
            issues=issues,
        )
    if not any(r.split != "unassigned" for r in records):
        records = splits.assign_splits(
            records, fractions=splits.parse_fractions(args.split_fractions), seed=args.seed
        )
    return _finish(records, issues, args)


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def masks_dir_for(out: Path) -> Path:
    """Where mask PNGs of a manifest go: ``<out_stem>_masks/`` beside it."""
    return out.with_name(f"{out.stem}_masks")


def errors_csv_for(out: Path) -> Path:
    """Where the skipped images of a manifest are listed: ``<out_stem>_errors.csv`` beside it."""
    return out.with_name(f"{out.stem}_errors.csv")


def _finish(records: list[Record], issues: Issues, args: argparse.Namespace) -> int:
    from cxrkit.data import records as records_module
    from cxrkit.data.splits import patients_in_several_splits

    out: Path = args.out
    errors = errors_csv_for(out)
    if not records:
        if issues:
            issues.write_csv(errors)
        raise DataError(
            f"{args.root}: no usable images"
            + (f" ({len(issues)} skipped, see {errors})" if issues else "")
        )
    records_module.write_manifest(records, out)
    views = Counter(r.view for r in records)
    split_counts = Counter(r.split for r in records)
    patients = len({r.patient_id for r in records})
    n_boxes = sum(len(r.boxes) for r in records)
    print(
        f"wrote {len(records)} records ({patients} patients, {n_boxes} boxes) to {out}\n"
        f"  views: " + ", ".join(f"{v} {views[v]}" for v in ("PA", "AP", "LL", "unknown")) + "\n"
        "  splits: "
        + ", ".join(f"{s} {split_counts[s]}" for s in ("train", "val", "test", "unassigned"))
    )
    leaked = patients_in_several_splits(records)
    if leaked:
        print(
            f"  note: {len(leaked)} patients have images in more than one split of the "
            f"given split (first: {leaked[0]})"
        )
    if issues:
        issues.write_csv(errors)
        print(f"skipped {len(issues)} images; reasons in {errors}")
    elif errors.exists():
        errors.unlink()  # a stale list from an earlier run would describe a different manifest
    return 0
