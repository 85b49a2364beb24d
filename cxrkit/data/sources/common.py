"""What the dataset adapters share: CSV reading whose errors name file, line and column; the
skip-and-report collector (:class:`Issues`); the one-pass image index; parallel header reads; the
patient-level split rule; and writing a prepared manifest with its errors file.

Row-level problems (unknown class, box outside its image, listed image missing) raise a
:class:`~cxrkit.errors.DataError` by default; with ``on_error="skip"`` the image is left out of the
manifest and listed in ``<out_stem>_errors.csv`` beside it. File-level problems (missing file or
column, malformed CSV) always stop.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cxrkit.errors import CxrkitError, DataError, ImageReadError, MissingFileError
from cxrkit.io import atomic_write

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from cxrkit.data.records import Record

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
ON_ERROR = ("fail", "skip")
#: train,val,test fractions of images for sources without an official split
DEFAULT_FRACTIONS = "0.8,0.1,0.1"


@dataclass(frozen=True)
class Issue:
    """One skipped image: its id (may be empty), where the problem is (file:line) and why."""

    image_id: str
    reason: str


@dataclass
class Issues:
    """Row problems: raised at once (``on_error="fail"``) or collected for ``<out>_errors.csv``."""

    on_error: str = "fail"
    items: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def add(self, error: CxrkitError, *, image_id: str = "") -> None:
        """Re-raise ``error`` unless skipping; else remember it (the caller drops the image)."""
        if self.on_error == "fail":
            raise error
        self.items.append(Issue(image_id=image_id, reason=str(error)))

    def drop(
        self, error: CxrkitError, *, image_id: str, records: dict[str, Any], dropped: set[str]
    ) -> None:
        """:meth:`add`, then leave the image out: removed from ``records`` and remembered in
        ``dropped`` so that its later rows are ignored."""
        self.add(error, image_id=image_id)
        dropped.add(image_id)
        records.pop(image_id, None)

    def __len__(self) -> int:
        return len(self.items)

    def write_csv(self, path: str | Path) -> Path:
        """Write ``image_id,reason`` rows atomically."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["image_id", "reason"])
        writer.writerows([i.image_id, i.reason] for i in self.items)
        return atomic_write(path, buffer.getvalue())


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
        DataError: not readable as CSV, a row with fewer or more fields than the header (the
            message names its line: pandas would silently fill it with empty cells, or shift a
            whole file into an index column), or a required column is missing (the message names
            the file and the column and lists the columns that are there).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():
            # index_col=False drops the fields past the header, with a warning; the row check
            # below refuses every row whose dropped fields are not empty.
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=False,
                encoding="utf-8-sig",
                index_col=False,  # rows ending in a comma would otherwise shift into an index
            )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: {what} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: malformed {what} ({str(exc).strip()})") from exc
    _check_row_lengths(path, what=what)
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


def _open_text(path: Path) -> io.TextIOBase:
    """``path`` as text, decompressed by its suffix as pandas does (.gz, .bz2, .xz, .zip)."""
    import bz2
    import gzip
    import lzma
    import zipfile

    suffix = path.suffix.lower()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix)
    if opener is not None:
        return opener(path, "rt", encoding="utf-8-sig", newline="")
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        return io.TextIOWrapper(archive.open(archive.namelist()[0]), "utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _check_row_lengths(path: Path, *, what: str) -> None:
    """Every non-blank row has as many fields as the header names.

    Trailing empty header cells (NIH's 2017 header ends in a comma) are not counted, and a row
    may omit them; a row may carry empty extra fields (a trailing comma).
    """
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, [])
        named = len(header)
        while named and not header[named - 1].strip():
            named -= 1
        for row in reader:
            if not row or is_blank(row):
                continue
            if len(row) < named or any(v.strip() for v in row[len(header) :]):
                problem = (
                    "a short row: a missing field shifts the columns after it"
                    if len(row) < named
                    else "a long row: an unquoted comma or a field too many"
                )
                raise DataError(
                    f"{path}:line {reader.line_num}: {len(row)} fields where the header has "
                    f"{named} ({problem}; fix the {what})"
                )


def rows_of(df: pd.DataFrame, *, path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` for every non-blank row of a :func:`read_csv` frame; ``where`` is
    ``"<path>:line <n>"`` for messages."""
    names = list(df.columns)
    for i, values in enumerate(df.itertuples(index=False, name=None)):
        if not is_blank(values):
            yield f"{path}:line {line_of(i)}", dict(zip(names, values, strict=True))


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
    ``view_position`` (the DICOM tag as written, ``""`` otherwise), ``patient_id`` (``""`` when
    unknown) and ``pixel_spacing`` ([row, col] mm or None).

    DICOM (by name or by its ``DICM`` marker) gives all of them; PNG/JPEG only the size.

    Raises:
        ImageReadError: missing, empty or unreadable file, an image under
            :data:`cxrkit.data.limits.MIN_SIDE` px a side, or a multi-frame DICOM
            (DicomReadError for DICOM).
    """
    from cxrkit.data.dicom import check_single_frame, read_dicom_header
    from cxrkit.data.images import image_size, is_dicom
    from cxrkit.data.limits import check_min_size
    from cxrkit.data.vocab import normalize_view
    from cxrkit.errors import DicomReadError

    if is_dicom(path):
        header = read_dicom_header(path)
        if not header["rows"] or not header["columns"]:
            raise ImageReadError(f"{path}: DICOM header has no Rows/Columns")
        check_single_frame(header, path=path)
        check_min_size(int(header["columns"]), int(header["rows"]), path=path, error=DicomReadError)
        view = header["view"]
        if view == "unknown":
            view = normalize_view(header.get("view_position"))
        return {
            "width": int(header["columns"]),
            "height": int(header["rows"]),
            "view": view,
            "view_position": header.get("view_position") or "",
            "patient_id": header.get("patient_id") or "",
            "pixel_spacing": header.get("pixel_spacing"),
        }
    width, height = image_size(path)
    check_min_size(width, height, path=path)
    return size_only_header(width, height)


def size_only_header(width: int, height: int) -> dict[str, Any]:
    """:func:`probe_image`'s fields for an image that has nothing but a size (PNG/JPEG, or an
    absent image's assumed size): view unknown, no patient id, no pixel spacing."""
    return {
        "width": width,
        "height": height,
        "view": "unknown",
        "view_position": "",
        "patient_id": "",
        "pixel_spacing": None,
    }


def write_png(path: Path, pixels: np.ndarray, *, what: str) -> Path:
    """Encode uint8 or uint16 (H, W) ``pixels`` as PNG and write ``path`` atomically.

    Raises:
        DataError: the encoder or the write failed (the message names the file and ``what``).
    """
    import cv2

    ok, encoded = cv2.imencode(".png", pixels)
    try:
        if not ok:
            raise OSError("PNG encoding failed")
        return atomic_write(path, encoded.tobytes())
    except OSError as exc:
        raise DataError(f"{path}: cannot write {what} ({exc})") from exc


def masks_dir_for(out: Path) -> Path:
    """Where mask PNGs of a manifest go: ``<out_stem>_masks/`` beside it."""
    return out.with_name(f"{out.stem}_masks")


def errors_csv_for(out: Path) -> Path:
    """Where the skipped images of a manifest are listed: ``<out_stem>_errors.csv`` beside it."""
    return out.with_name(f"{out.stem}_errors.csv")


def write_errors(issues: Issues, *, out: Path) -> Path | None:
    """Write the skipped items of the file ``out`` to ``<out_stem>_errors.csv`` and return it; with
    nothing skipped, remove a stale one (it would describe another run) and return None."""
    errors = errors_csv_for(out)
    if issues:
        return issues.write_csv(errors)
    errors.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------------- splits, writing
@dataclass
class Prepared:
    """What an adapter's ``prepare_*`` function returns.

    Attributes:
        records: the usable records, splits assigned.
        issues: the images left out (``on_error="skip"``), written by :func:`write_prepared`.
        official_lists: NIH's ``train_val_list.txt`` and ``test_list.txt`` when they decided the
            split, else None.
        warnings: what the user must know about these records (e.g. patient ids that are only
            image ids); printed in the summary and kept in the manifest's metadata.
        notes: what the summary also says (e.g. how many images were matched to NIH).
    """

    records: list[Record]
    issues: Issues
    official_lists: tuple[Path, Path] | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def split_fractions(fractions: str | Mapping[str, float]) -> dict[str, float]:
    """``"0.8,0.1,0.1"`` or ``{"train": 0.8, ...}`` as a checked train/val/test mapping."""
    from cxrkit.data import splits

    if isinstance(fractions, str):
        return splits.parse_fractions(fractions)
    return dict(fractions)


def assign_unless_official(
    records: list[Record],
    *,
    official: bool,
    fractions: str | Mapping[str, float],
    val_fraction: float,
    seed: int,
) -> list[Record]:
    """The split rule of every adapter: an official split keeps its test part and gives
    ``val_fraction`` of its training patients to val; otherwise patient-level ``fractions``."""
    from cxrkit.data import splits

    if official:
        return splits.carve_validation(records, val_fraction=val_fraction, seed=seed)
    return splits.assign_splits(records, fractions=split_fractions(fractions), seed=seed)


@dataclass(frozen=True)
class ManifestSummary:
    """What :func:`write_prepared` wrote: counts for the console and the files' paths.

    Attributes:
        leaked: patients whose images the given split put in more than one split.
        errors_file: ``<out_stem>_errors.csv`` when images were skipped, else None.
    """

    path: Path
    records: int
    patients: int
    boxes: int
    views: dict[str, int]
    splits: dict[str, int]
    leaked: list[str]
    skipped: int
    errors_file: Path | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_prepared(
    prepared: Prepared,
    *,
    out: Path,
    root: Path,
    strict_views: bool = False,
    manifest_root: Path | None = None,
) -> ManifestSummary:
    """Write the manifest ``out`` and, when images were skipped, ``<out_stem>_errors.csv`` beside
    it (a stale errors file of an earlier run is removed: it would describe another manifest).

    View strings no table knows (``meta["view_unrecognised"]``) are counted in one warning, kept
    in the manifest's metadata and the summary; with ``strict_views`` they are an error instead.

    Args:
        root: the dataset folder, named when there is nothing to write.
        strict_views: refuse records whose view string is not PA/AP/LL or a known spelling.
        manifest_root: the root the manifest records, its paths relative to it
            (:func:`cxrkit.data.records.write_manifest`; None: the images' deepest common folder).

    Raises:
        DataError: no usable records (the errors file, if any, is written first), or, with
            ``strict_views``, an unrecognised view (naming the image, its file and the string).
    """
    from cxrkit.data.records import write_manifest
    from cxrkit.data.splits import patients_in_several_splits
    from cxrkit.data.vocab import VIEW_UNRECOGNISED, view_warning

    records, issues = prepared.records, prepared.issues
    errors = errors_csv_for(out)
    if not records:
        if issues:
            issues.write_csv(errors)
        raise DataError(
            f"{root}: no usable images"
            + (f" ({len(issues)} skipped, see {errors})" if issues else "")
        )
    warnings = list(prepared.warnings)
    odd = [r for r in records if r.meta.get(VIEW_UNRECOGNISED)]
    if odd and strict_views:
        first = odd[0]
        raise DataError(
            f"{first.path}: image {first.image_id!r} has view "
            f"{first.meta[VIEW_UNRECOGNISED]!r}, not PA, AP or LL or a known spelling of them"
            + (f" ({len(odd) - 1} more images too)" if len(odd) > 1 else "")
            + "; correct it at the source, or drop --strict-views to keep such views as 'unknown'"
        )
    unrecognised = view_warning(r.meta[VIEW_UNRECOGNISED] for r in odd)
    if unrecognised is not None:
        warnings.append(unrecognised)
    write_manifest(records, out, warnings=warnings, root=manifest_root)
    write_errors(issues, out=out)
    return ManifestSummary(
        path=out,
        records=len(records),
        patients=len({r.patient_id for r in records}),
        boxes=sum(len(r.boxes) for r in records),
        views=dict(Counter(r.view for r in records)),
        splits=dict(Counter(r.split for r in records)),
        leaked=patients_in_several_splits(records),
        skipped=len(issues),
        errors_file=errors if issues else None,
        warnings=warnings,
        notes=list(prepared.notes),
    )
