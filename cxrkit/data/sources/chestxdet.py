"""ChestX-Det (Lian et al., "A structure-aware relation network for thoracic diseases detection and
segmentation", IEEE TMI 2021; Deepwise) -> records with boxes and per-finding masks.

Files in ``--root``: ``ChestX_Det_train.json`` and ``ChestX_Det_test.json``, each a list of::

    {"file_name": "36204.png", "syms": ["Effusion", ...], "boxes": [[x1, y1, x2, y2], ...],
     "polygons": [[[x, y], ...], ...]}

with one box and one polygon per entry of ``syms`` (13 classes, :data:`classes.CHESTXDET_FINDINGS`),
coordinates in the 1024 x 1024 images' pixels. Images are PNGs in ``train/`` and ``test/`` (any
folder whose name starts with the split name) or directly in ``--root``.

Record contract: ``image_id`` = file name without extension; ``patient_id`` = image_id (the file
names are Deepwise's own numbers, with no patient or NIH mapping); ``view`` from an optional CSV
(``file_name,view``), else unknown. ChestX-Det's images are NIH ChestX-ray14 images: with an NIH
manifest, :func:`attach_nih` finds each one's original by its pixels and takes the NIH view and
patient id (and keeps NIH's labels and image id in ``meta``); ``labels`` = 0/1 for
all 13 classes and ``"No Finding"`` (the annotation is exhaustive for its 13 classes); ``split`` =
the JSON it came from (train/test). Each finding's polygons are united into one mask, written as a
uint8 PNG (0 / 255, the image's size) ``<masks_dir>/<image_id>.<finding>.png``; ``mask_paths`` maps
the finding to that file.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.data.records import Box, Record, check_box
from cxrkit.data.sources.common import (
    Issues,
    Prepared,
    index_files,
    read_csv,
    read_many,
    resolve_input,
    write_png,
)
from cxrkit.data.vocab import (
    CHESTXDET,
    CHESTXDET_FINDINGS,
    CHESTXDET_NO_FINDING,
    VIEW_UNRECOGNISED,
    normalize_view,
    unrecognised_view,
)
from cxrkit.errors import DataError, ImageReadError, MissingFileError
from cxrkit.io import atomic_write

SOURCE = "chestxdet"
CHESTXDET_SIZE = 1024  # the JSON coordinates are in these images' pixels
JSON_NAMES = {"train": "ChestX_Det_train.json", "test": "ChestX_Det_test.json"}
LABEL_NAMES = (*CHESTXDET_FINDINGS, CHESTXDET_NO_FINDING)


def read_views(path: str | Path) -> dict[str, str]:
    """``file_name -> view`` as written (map it with :func:`normalize_view`) from a CSV with columns
    ``file_name, view``."""
    df = read_csv(path, required=("file_name", "view"), what="views CSV")
    return {
        Path(name.strip()).name: view
        for name, view in zip(df["file_name"], df["view"], strict=True)
        if name.strip()
    }


def _load_json(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ChestX-Det JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _points(value: Any, *, n: int | None, where: str, what: str) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise DataError(f"{where}: {what} {value!r} is not a list of {n} numbers")
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {value!r} holds a value that is not a number") from None


def _parse_entry(entry: Any, *, where: str) -> tuple[str, list[str], list[list[float]], list]:
    """Validate one JSON record; returns file_name, canonical findings, boxes, polygons."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, found {type(entry).__name__}")
    for key in ("file_name", "syms", "boxes"):
        if key not in entry:
            raise DataError(f"{where}: missing key {key!r} (keys: {sorted(entry)})")
    name = entry["file_name"]
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: file_name {name!r} is not a file name")
    at = f"{where} ({name})"
    syms, boxes = entry["syms"], entry["boxes"]
    polygons = entry.get("polygons") or []
    if not isinstance(syms, list) or not isinstance(boxes, list) or not isinstance(polygons, list):
        raise DataError(f"{at}: syms, boxes and polygons must be lists")
    if len(boxes) != len(syms) or (polygons and len(polygons) != len(syms)):
        raise DataError(
            f"{at}: {len(syms)} syms but {len(boxes)} boxes and {len(polygons)} polygons "
            "(one of each per finding)"
        )
    findings = [CHESTXDET.canonical(str(s), where=at) for s in syms]
    if CHESTXDET_NO_FINDING in findings:
        raise DataError(f"{at}: {CHESTXDET_NO_FINDING!r} is not a ChestX-Det box class")
    parsed_boxes = [_points(b, n=4, where=at, what="box") for b in boxes]
    parsed_polygons = []
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 3:
            raise DataError(f"{at}: polygon needs at least 3 points, found {polygon!r}")
        parsed_polygons.append([_points(p, n=2, where=at, what="polygon point") for p in polygon])
    return name.strip(), findings, parsed_boxes, parsed_polygons


def _image_index(root: Path, split: str) -> dict[str, Path]:
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith(split)]
    files = index_files(folders, suffixes=(".png", ".jpg", ".jpeg"))
    for name, path in index_files(
        [root], suffixes=(".png", ".jpg", ".jpeg"), recursive=False
    ).items():
        files.setdefault(name, path)
    return files


def load_chestxdet(
    *,
    root: str | Path,
    train_json: str | Path | None = None,
    test_json: str | Path | None = None,
    views: str | Path | None = None,
    masks_dir: str | Path | None = None,
    metadata_only: bool = False,
    issues: Issues | None = None,
) -> list[Record]:
    """Read ChestX-Det under ``root`` into records with split train/test.

    Args:
        root: folder of the JSON files and images.
        train_json, test_json: JSON files (absolute, or relative to ``root``); default: the
            standard names in ``root``. At least one must exist.
        views: optional CSV ``file_name,view``; images not in it get view ``unknown``.
        masks_dir: where per-finding mask PNGs are written; None: no masks (boxes only).
        metadata_only: images need not exist; 1024 x 1024 is assumed (``meta["size_assumed"]``).
        issues: where row problems go (default: raised).
    """
    from cxrkit.data.images import image_size

    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset folder not found")
    given = {"train": train_json, "test": test_json}
    jsons = {
        split: resolve_input(root, given[split], (JSON_NAMES[split],), f"ChestX-Det {split} JSON")
        for split in ("train", "test")
        if given[split] is not None or (root / JSON_NAMES[split]).is_file()
    }
    if not jsons:
        raise MissingFileError(f"{root}: no {' or '.join(JSON_NAMES.values())} found")
    view_of = read_views(views) if views is not None else {}

    pending: list[tuple[Record, list[tuple[str, list[float], list]], str]] = []
    seen: set[str] = set()
    for split, path in jsons.items():
        files = _image_index(root, split)
        if not files and not metadata_only:
            raise MissingFileError(
                f"{root}: no ChestX-Det images found in {split}*/ or the root folder; to build "
                "a manifest from the JSON alone, pass --metadata-only (1024x1024 assumed)"
            )
        for k, entry in enumerate(_load_json(path), start=1):
            where = f"{path}: record {k}"
            name = entry.get("file_name", "") if isinstance(entry, dict) else ""
            image_id = Path(str(name)).stem
            try:
                name, findings, boxes, polygons = _parse_entry(entry, where=where)
                image_id = Path(name).stem
                if image_id in seen:
                    raise DataError(f"{where}: image {name} appears twice")
                file = files.get(Path(name).name)
                if file is None and not metadata_only:
                    raise ImageReadError(
                        f"{where}: image {name} is listed but not found in {root}/{split}*/ "
                        f"or {root} (pass --metadata-only to keep it without the image)"
                    )
            except DataError as exc:
                issues.add(exc, image_id=image_id)
                continue
            seen.add(image_id)
            view = view_of.get(Path(name).name, "")
            meta: dict[str, Any] = {"size_assumed": True} if metadata_only else {}
            if unrecognised_view(view):
                meta[VIEW_UNRECOGNISED] = view.strip()
            record = Record(
                image_id=image_id,
                source=SOURCE,
                path=str(file) if file is not None else str(root / split / name),
                patient_id=image_id,
                view=normalize_view(view),
                split=split,
                labels={n: int(n in findings) for n in CHESTXDET_FINDINGS}
                | {CHESTXDET_NO_FINDING: int(not findings)},
                width=CHESTXDET_SIZE,
                height=CHESTXDET_SIZE,
                meta=meta,
            )
            shapes = [
                (f, b, polygons[j] if polygons else [])
                for j, (f, b) in enumerate(zip(findings, boxes, strict=True))
            ]
            pending.append((record, shapes, where))

    if not metadata_only:
        sizes = read_many(image_size, [Path(r.path) for r, _, _ in pending])
        kept = []
        for item, size in zip(pending, sizes, strict=True):
            if isinstance(size, tuple):
                item[0].width, item[0].height = size
                kept.append(item)
            else:
                issues.add(size, image_id=item[0].image_id)
        pending = kept

    records = []
    for record, shapes, where in pending:
        sx, sy = record.width / CHESTXDET_SIZE, record.height / CHESTXDET_SIZE
        try:
            for finding, (x1, y1, x2, y2), _ in shapes:
                box = Box(finding=finding, x1=x1 * sx, y1=y1 * sy, x2=x2 * sx, y2=y2 * sy)
                check_box(box, width=record.width, height=record.height, where=where)
                record.boxes.append(box)
        except DataError as exc:
            issues.add(exc, image_id=record.image_id)
            continue
        if masks_dir is not None:
            record.mask_paths = write_masks(
                record=record, shapes=shapes, scale=(sx, sy), masks_dir=Path(masks_dir)
            )
        records.append(record)
    return records


def prepare_chestxdet(
    *,
    root: str | Path,
    train_json: str | Path | None = None,
    test_json: str | Path | None = None,
    views: str | Path | None = None,
    masks_dir: str | Path | None = None,
    metadata_only: bool = False,
    nih_manifest: str | Path | None = None,
    nih_index: str | Path | None = None,
    matches_csv: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "fail",
) -> Prepared:
    """ChestX-Det as split records (``cxrkit prepare chestxdet``): its official train/test kept,
    ``val_fraction`` of the train patients moved to val. Other arguments: :func:`load_chestxdet`
    and :func:`attach_nih` (with ``nih_manifest``, before the validation patients are drawn, so
    that they are real patients); ``on_error``: ``"fail"`` or ``"skip"``."""
    from cxrkit.data import splits

    issues = Issues(on_error=on_error)
    if nih_manifest is not None and metadata_only:
        raise DataError(
            "--nih-manifest matches ChestX-Det's images by their pixels: it needs the images, "
            "not --metadata-only"
        )
    records = load_chestxdet(
        root=root,
        train_json=train_json,
        test_json=test_json,
        views=views,
        masks_dir=masks_dir,
        metadata_only=metadata_only,
        issues=issues,
    )
    notes: list[str] = []
    warnings: list[str] = []
    if nih_manifest is not None:
        records, notes, warnings = attach_nih(
            records,
            nih_manifest=nih_manifest,
            index_file=nih_index,
            matches_csv=matches_csv,
            issues=issues,
        )
    records = splits.carve_validation(records, val_fraction=val_fraction, seed=seed)
    return Prepared(records=records, issues=issues, notes=notes, warnings=warnings)


def attach_nih(
    records: list[Record],
    *,
    nih_manifest: str | Path,
    index_file: str | Path | None = None,
    matches_csv: str | Path | None = None,
    issues: Issues | None = None,
    workers: int | None = None,
) -> tuple[list[Record], list[str], list[str]]:
    """Give each ChestX-Det record what its NIH original knows (:mod:`cxrkit.data.matching`).

    A matched record takes the NIH ``view`` and ``patient_id``; its ``meta`` gains
    ``nih_image_id``, ``nih_labels`` (NIH's text-mined labels, kept apart from ChestX-Det's own
    ``labels``, which its radiologists annotated) and ``nih_match`` (``method``, ``score``). An
    unmatched or ambiguous record keeps view ``unknown`` and its image id as patient id, with
    ``meta["nih_match"]["status"]`` saying which.

    Args:
        nih_manifest: the NIH manifest (``cxrkit prepare nih``), its images on this machine.
        index_file: the NIH fingerprints (``.npz``), reused and rewritten (see
            :func:`cxrkit.data.matching.run`).
        matches_csv: where to write the matches CSV and its ``_report.json``; None: not written.
        issues: unreadable images (raised unless skipping; a skipped ChestX-Det image is dropped).

    Returns:
        The records (unreadable ones left out), notes for the summary (the match counts) and
        warnings (images without an NIH original; two ChestX-Det images of one NIH image).
    """
    import json

    from cxrkit.data import matching
    from cxrkit.data.records import read_manifest

    issues = issues if issues is not None else Issues()
    nih = {r.image_id: r for r in read_manifest(nih_manifest)}
    reuse = None
    if index_file is not None and Path(index_file).is_file():
        reuse = matching.load_index(index_file)
    index = matching.build_index(
        matching.images_of(nih_manifest), issues=issues, workers=workers, reuse=reuse
    )
    if index_file is not None:
        index.save(index_file)
    queries = [
        matching.ImageRef(key=r.image_id, path=r.path, split=r.split, source=SOURCE)
        for r in records
    ]
    matches = {m.query.key: m for m in matching.match(queries, index, issues=issues)}
    if matches_csv is not None:
        matching.write_matches(matches.values(), matches_csv)
        report = matching.report_for(list(matches.values()), index)
        atomic_write(
            matching.report_path_for(Path(matches_csv)), json.dumps(report, indent=2) + "\n"
        )
    kept = []
    for record in records:
        m = matches.get(record.image_id)
        if m is None:  # unreadable, skipped
            continue
        kept.append(record)
        if m.status != "matched":
            record.meta["nih_match"] = {"status": m.status, "candidates": list(m.candidates)}
            continue
        original = nih[m.reference]
        record.view = original.view
        record.patient_id = original.patient_id
        record.meta["nih_image_id"] = original.image_id
        record.meta["nih_labels"] = dict(original.labels)
        record.meta["nih_match"] = {"status": "matched", "method": m.method, "score": m.score}
    statuses = [m.status for m in matches.values()]
    exact = sum(m.status == "matched" and m.method == "exact" for m in matches.values())
    matched = statuses.count("matched")
    notes = [
        f"NIH originals: {matched} of {len(kept)} matched ({exact} exact, {matched - exact} by "
        f"fingerprint), {statuses.count('unmatched')} unmatched, "
        f"{statuses.count('ambiguous')} ambiguous"
        + (f"; matches in {matches_csv}" if matches_csv is not None else "")
    ]
    warnings = []
    if matched < len(kept):
        warnings.append(
            f"{len(kept) - matched} of {len(kept)} ChestX-Det images have no NIH original "
            "(unmatched or ambiguous): their view is unknown and their patient id is their "
            "image id"
        )
    by_original: dict[str, list[str]] = defaultdict(list)
    for m in matches.values():
        if m.status == "matched":
            by_original[m.reference].append(m.query.key)
    shared = {k: v for k, v in by_original.items() if len(v) > 1}
    if shared:
        first = next(iter(shared.items()))
        warnings.append(
            f"{len(shared)} NIH images appear more than once in ChestX-Det (e.g. {first[0]} as "
            f"{', '.join(first[1])})"
        )
    return kept, notes, warnings


def mask_file_name(image_id: str, finding: str) -> str:
    """``<image_id>.<finding>.png`` with spaces and slashes in the finding made filename-safe."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in finding)
    return f"{image_id}.{safe}.png"


def polygon_mask(
    polygons: list[list[list[float]]], *, width: int, height: int, scale: tuple[float, float]
) -> np.ndarray:
    """uint8 (height, width) mask, 255 inside the union of ``polygons`` (points x, y, scaled)."""
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    points = [
        np.round(np.asarray(p, dtype=np.float64) * np.asarray(scale)).astype(np.int32)
        for p in polygons
    ]
    # One fillPoly call per polygon: a single call with several polygons uses the even-odd rule,
    # which would punch holes where two lesions of the same finding overlap.
    for p in points:
        cv2.fillPoly(mask, [p], 255)
    return mask


def write_masks(
    *,
    record: Record,
    shapes: list[tuple[str, Any, list]],
    scale: tuple[float, float],
    masks_dir: Path,
) -> dict[str, str]:
    """Rasterise each finding's polygons (united) and write ``masks_dir/<id>.<finding>.png``."""
    by_finding: dict[str, list] = defaultdict(list)
    for finding, _, polygon in shapes:
        if polygon:
            by_finding[finding].append(polygon)
    if not by_finding:
        return {}
    masks_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for finding, polygons in by_finding.items():
        mask = polygon_mask(polygons, width=record.width, height=record.height, scale=scale)
        path = write_png(masks_dir / mask_file_name(record.image_id, finding), mask, what="mask")
        paths[finding] = str(path)
    return paths
