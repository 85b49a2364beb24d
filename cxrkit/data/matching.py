"""Find each image's original in another dataset by its pixels: exact copies, re-encoded or resized.

ChestX-Det's images are NIH ChestX-ray14 images under Deepwise's own file names, so their views and
patients are only known once each is matched to its NIH original. The same question comes up for
any two datasets that share images (duplicates across sources, train/test overlaps), so this module
knows nothing about either dataset::

    from cxrkit.data import matching

    query = matching.images_of("chestxdet/")          # a folder (recursive) or a manifest
    reference = matching.build_index(matching.images_of("nih.parquet"))
    matches = matching.match(query, reference)

Each image gets a :class:`Fingerprint` from its decoded pixels:

1. ``pixel_hash``: SHA-256 of the decoded grey pixels and their shape, so a PNG re-saved losslessly
   (or an RGBA copy with R = G = B, as in part of NIH's release) is an *exact* match;
2. pHash and dHash (imagehash) of a 128 px grey version whose 0.5th-99.5th percentiles are
   stretched to the full range, so re-encoding (JPEG), resizing and a different bit depth or window
   barely move them;
3. a ``thumb``: the same grey version at ``thumb_size`` px (uint8), for the pixel correlation that
   confirms a candidate.

A query without an exact copy looks up its candidates in a multi-index: the 64-bit pHash is cut
into ``bands`` bands of 16 bits, and a reference is a candidate when one of its bands equals the
query's band or differs from it in one bit (multi-probe: 17 look-ups per band). By the pigeonhole
principle any pHash within ``2 * bands - 1`` = 7 bits has such a band, so a query costs 68 bucket
look-ups, not a pass over 112,120 references. (dHash is not banded: on chest X-rays many of its
bits are nearly constant, and one 8-bit band value holds over half of the NIH sample.)
Candidates within ``max_distance`` bits (either hash) are confirmed by the Pearson correlation of
the thumbnails; the best one at or above ``min_correlation`` is the match unless a second one
ties with it (within ``tie_margin``): then the query is *ambiguous*, and no reference is chosen.

The thresholds are cxrkit's own, measured on the shared 117-image NIH sample: JPEG quality 90
and 512 px copies correlate >= 0.9999 with their original at 32 px and lie within 2 bits of its
pHash; the most similar pair of *different* images (also of one patient's follow-ups) correlates
0.94 and lies >= 8 bits apart.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.data.sources.common import IMAGE_SUFFIXES, Issues, index_files, write_errors
from cxrkit.errors import CxrkitError, DataError, MissingFileError
from cxrkit.io import atomic_write

METHODS = ("exact", "fingerprint")
STATUSES = ("matched", "unmatched", "ambiguous")
MATCH_COLUMNS = (
    "query",
    "reference_image_id",
    "method",
    "score",
    "status",
    "candidates",
)
INDEX_FORMAT = "cxrkit-fingerprints-1"
_HASH_SIZE = 8  # imagehash's default: 8 x 8 = 64 bits
_GREY_SIZE = 128  # the common small size every fingerprint starts from
_MANIFEST_SUFFIXES = (".parquet",)
_INDEX_ARRAYS = ("keys", "paths", "splits", "sources", "pixel_hashes", "phash", "dhash", "thumbs")


@dataclass(frozen=True)
class Settings:
    """How candidates are found and confirmed (cxrkit's own choices; see the module docstring).

    Attributes:
        bands: bands the 64-bit pHash is cut into for the multi-index (a divisor of 64); each
            band is probed as it is and with each of its bits flipped, so a reference within
            ``2 * bands - 1`` bits of the query's pHash is always a candidate.
        max_distance: candidates further than this (Hamming bits) on both hashes are dropped.
        min_correlation: the thumbnails' Pearson correlation a match needs.
        tie_margin: a second reference within this much of the best one makes the query ambiguous.
        thumb_size: side of the thumbnails that are correlated (px).
    """

    bands: int = 4
    max_distance: int = 10
    min_correlation: float = 0.99
    tie_margin: float = 0.001
    thumb_size: int = 32

    def __post_init__(self) -> None:
        if self.bands < 1 or 64 % self.bands:
            raise ValueError(f"bands must divide 64, got {self.bands}")
        if not 0 <= self.max_distance <= 64:
            raise ValueError(f"max_distance must be in 0..64, got {self.max_distance}")
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ValueError(f"min_correlation must be in [-1, 1], got {self.min_correlation}")
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {self.tie_margin}")
        if not 8 <= self.thumb_size <= _GREY_SIZE:
            raise ValueError(f"thumb_size must be in 8..{_GREY_SIZE}, got {self.thumb_size}")


@dataclass(frozen=True)
class ImageRef:
    """One image to fingerprint: ``key`` (the image id of a manifest, else the path relative to
    the folder, without extension) names it in the output; ``split`` and ``source`` come from a
    manifest (empty for a folder)."""

    key: str
    path: str
    split: str = ""
    source: str = ""


@dataclass(frozen=True)
class Fingerprint:
    """What is compared: ``pixel_hash`` (hex), ``phash``/``dhash`` (64-bit ints) and ``thumb``
    (uint8 (thumb_size, thumb_size), the percentile-stretched grey image)."""

    pixel_hash: str
    phash: int
    dhash: int
    thumb: np.ndarray


@dataclass(frozen=True)
class Match:
    """The answer for one query image.

    Attributes:
        reference: the matched reference's key; ``""`` when unmatched or ambiguous.
        method: ``exact`` or ``fingerprint`` (how the reference, or the tie, was found); ``""``
            when nothing passed.
        score: 1.0 for an exact copy, else the best candidate's thumbnail correlation (also
            when it was too low, to show how close the nearest one came); NaN without candidates.
        status: ``matched``, ``unmatched`` or ``ambiguous``.
        candidates: the tied references of an ambiguous query.
    """

    query: ImageRef
    reference: str
    method: str
    score: float
    status: str
    candidates: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------- fingerprints
def fingerprint(image: np.ndarray, *, thumb_size: int = 32) -> Fingerprint:
    """The fingerprint of a decoded image (float (H, W), higher = brighter, any value range)."""
    import cv2
    import imagehash
    from PIL import Image

    pixels = np.ascontiguousarray(image, dtype=np.float32)
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    digest.update(pixels.tobytes())
    grey = cv2.resize(pixels, (_GREY_SIZE, _GREY_SIZE), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    grey8 = np.round(grey * 255).astype(np.uint8)
    picture = Image.fromarray(grey8)
    thumb = cv2.resize(grey8, (thumb_size, thumb_size), interpolation=cv2.INTER_AREA)
    return Fingerprint(
        pixel_hash=digest.hexdigest(),
        phash=_to_int(imagehash.phash(picture, hash_size=_HASH_SIZE)),
        dhash=_to_int(imagehash.dhash(picture, hash_size=_HASH_SIZE)),
        thumb=thumb,
    )


def _to_int(h: Any) -> int:
    return int("".join("1" if b else "0" for b in h.hash.flatten()), 2)


def fingerprint_file(path: str | Path, *, thumb_size: int = 32) -> Fingerprint:
    """:func:`fingerprint` of an image file (PNG, JPEG, DICOM; read by
    :func:`cxrkit.data.images.read_image`).

    Raises:
        ImageReadError: missing, empty or undecodable file.
    """
    from cxrkit.data.images import read_image

    image, _ = read_image(path)
    return fingerprint(image, thumb_size=thumb_size)


def images_of(spec: str | Path) -> list[ImageRef]:
    """The images of a folder (every PNG/JPEG/DICOM under it, recursively) or a manifest.

    Raises:
        MissingFileError: neither a folder nor a file.
        DataError: a folder without images, or a file that is not a Parquet manifest.
    """
    from cxrkit.data.records import read_manifest

    spec = Path(spec)
    if spec.is_dir():
        root = Path(os.path.abspath(spec))
        files = index_files([root], suffixes=IMAGE_SUFFIXES, key=lambda p: str(p))
        if not files:
            raise DataError(f"{spec}: no {', '.join(IMAGE_SUFFIXES)} files found (recursive)")
        return [
            ImageRef(key=Path(path).relative_to(root).with_suffix("").as_posix(), path=path)
            for path in sorted(files)
        ]
    if not spec.exists():
        raise MissingFileError(f"{spec}: neither a folder of images nor a manifest")
    if spec.suffix.lower() not in _MANIFEST_SUFFIXES:
        raise DataError(f"{spec}: expected a folder of images or a .parquet manifest")
    return [  # absolute paths, so that a file is recognised when both sides list it
        ImageRef(key=r.image_id, path=os.path.abspath(r.path), split=r.split, source=r.source)
        for r in read_manifest(spec)
    ]


def fingerprint_all(
    images: Sequence[ImageRef],
    *,
    settings: Settings,
    issues: Issues,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Fingerprint | None]:
    """Fingerprints of ``images`` in order (decoding in threads: OpenCV releases the GIL); an
    unreadable image goes to ``issues`` (raised unless skipping) and gives None."""
    workers = workers or min(8, os.cpu_count() or 1)

    def one(ref: ImageRef) -> Fingerprint | CxrkitError:
        try:
            return fingerprint_file(ref.path, thumb_size=settings.thumb_size)
        except CxrkitError as exc:
            return exc

    out: list[Fingerprint | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (ref, result) in enumerate(zip(images, pool.map(one, images), strict=True)):
            if isinstance(result, CxrkitError):
                issues.add(result, image_id=ref.key)
                out.append(None)
            else:
                out.append(result)
            if progress is not None:
                progress(i + 1, len(images))
    return out


# ------------------------------------------------------------------------------------------ index
@dataclass
class Index:
    """The reference side: fingerprints in arrays, the exact-hash table and the band buckets.

    ``phash``/``dhash``: uint64 (N,); ``thumbs``: uint8 (N, S, S); ``refs[i]`` is the image of
    row i. Built by :func:`build_index`; :meth:`save` and :func:`load_index` keep it between runs
    (fingerprinting all 112,120 NIH images takes a while).
    """

    refs: list[ImageRef]
    pixel_hashes: list[str]
    phash: np.ndarray
    dhash: np.ndarray
    thumbs: np.ndarray
    settings: Settings
    _exact: dict[str, list[int]] = field(init=False, repr=False)
    _buckets: list[dict[int, np.ndarray]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._exact = defaultdict(list)
        for i, h in enumerate(self.pixel_hashes):
            self._exact[h].append(i)
        self._buckets = [
            _buckets(_band(self.phash, b, self.settings.bands)) for b in range(self.settings.bands)
        ]

    def __len__(self) -> int:
        return len(self.refs)

    def exact(self, pixel_hash: str) -> list[int]:
        """Rows whose decoded pixels are identical to the given hash's image."""
        return list(self._exact.get(pixel_hash, ()))

    def candidates(self, print_: Fingerprint) -> np.ndarray:
        """Rows with a pHash band equal to ``print_``'s or one bit from it (sorted, unique)."""
        bands = self.settings.bands
        width = 64 // bands
        found = []
        for b, bucket in enumerate(self._buckets):
            value = _band_of(print_.phash, b, bands)
            for probe in (value, *(value ^ (1 << bit) for bit in range(width))):
                rows = bucket.get(probe)
                if rows is not None:
                    found.append(rows)
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    def duplicate_groups(self) -> list[list[str]]:
        """Keys of references whose pixels are identical, one list per group of two or more."""
        return [[self.refs[i].key for i in rows] for rows in self._exact.values() if len(rows) > 1]

    def save(self, path: str | Path) -> Path:
        """Write the index as ``.npz`` (atomically); :func:`load_index` reads it back."""
        arrays = {
            "format": np.array(INDEX_FORMAT),
            "keys": np.array([r.key for r in self.refs], dtype=str),
            "paths": np.array([r.path for r in self.refs], dtype=str),
            "splits": np.array([r.split for r in self.refs], dtype=str),
            "sources": np.array([r.source for r in self.refs], dtype=str),
            "pixel_hashes": np.array(self.pixel_hashes, dtype=str),
            "phash": self.phash,
            "dhash": self.dhash,
            "thumbs": self.thumbs,
        }

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, **arrays)

        return atomic_write(path, write)


def _band(hashes: np.ndarray, b: int, bands: int) -> np.ndarray:
    width = 64 // bands
    return (hashes >> np.uint64(b * width)) & np.uint64((1 << width) - 1)


def _band_of(value: int, b: int, bands: int) -> int:
    width = 64 // bands
    return (value >> (b * width)) & ((1 << width) - 1)


def _buckets(values: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(values, kind="stable")
    keys, starts = np.unique(values[order], return_index=True)
    return {int(k): rows for k, rows in zip(keys, np.split(order, starts[1:]), strict=True)}


def _index_from(refs: list[ImageRef], prints: list[Fingerprint], settings: Settings) -> Index:
    size = settings.thumb_size
    return Index(
        refs=refs,
        pixel_hashes=[p.pixel_hash for p in prints],
        phash=np.array([p.phash for p in prints], dtype=np.uint64),
        dhash=np.array([p.dhash for p in prints], dtype=np.uint64),
        thumbs=(
            np.stack([p.thumb for p in prints]) if prints else np.zeros((0, size, size), np.uint8)
        ),
        settings=settings,
    )


def build_index(
    images: Sequence[ImageRef],
    *,
    settings: Settings | None = None,
    issues: Issues | None = None,
    workers: int | None = None,
    reuse: Index | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Index:
    """Fingerprint the reference images (those of ``reuse`` with the same key and path are not
    read again) and index them. Unreadable ones go to ``issues`` and are left out."""
    settings = settings or Settings()
    issues = issues if issues is not None else Issues()
    known: dict[tuple[str, str], Fingerprint] = {}
    if reuse is not None and reuse.settings.thumb_size == settings.thumb_size:
        for i, r in enumerate(reuse.refs):
            known[(r.key, r.path)] = Fingerprint(
                pixel_hash=reuse.pixel_hashes[i],
                phash=int(reuse.phash[i]),
                dhash=int(reuse.dhash[i]),
                thumb=reuse.thumbs[i],
            )
    todo = [r for r in images if (r.key, r.path) not in known]
    for ref, print_ in zip(
        todo,
        fingerprint_all(todo, settings=settings, issues=issues, workers=workers, progress=progress),
        strict=True,
    ):
        if print_ is not None:
            known[(ref.key, ref.path)] = print_
    kept = [r for r in images if (r.key, r.path) in known]
    return _index_from(kept, [known[(r.key, r.path)] for r in kept], settings)


def load_index(path: str | Path, *, settings: Settings | None = None) -> Index:
    """Read an index written by :meth:`Index.save` (no pickled objects are loaded).

    Raises:
        MissingFileError: no such file.
        DataError: not an index file of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: fingerprint index not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable fingerprint index ({exc})") from exc
    missing = {"format", *_INDEX_ARRAYS} - set(arrays)
    if missing or str(arrays["format"]) != INDEX_FORMAT:
        raise DataError(f"{path}: not a cxrkit fingerprint index ({INDEX_FORMAT})")
    refs = [
        ImageRef(key=str(k), path=str(p), split=str(s), source=str(o))
        for k, p, s, o in zip(
            arrays["keys"], arrays["paths"], arrays["splits"], arrays["sources"], strict=True
        )
    ]
    stored = int(arrays["thumbs"].shape[-1])
    settings = settings or Settings(thumb_size=stored)
    if settings.thumb_size != stored:
        raise DataError(
            f"{path}: built with {stored} px thumbnails, not {settings.thumb_size} (delete it to "
            "rebuild)"
        )
    return Index(
        refs=refs,
        pixel_hashes=[str(h) for h in arrays["pixel_hashes"]],
        phash=arrays["phash"].astype(np.uint64),
        dhash=arrays["dhash"].astype(np.uint64),
        thumbs=arrays["thumbs"].astype(np.uint8),
        settings=settings,
    )


# --------------------------------------------------------------------------------------- matching
def _standardise(thumbs: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S*S) float64 rows of zero mean and unit norm (a flat row stays zero)."""
    rows = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped images (0.0 if either is flat)."""
    return float((_standardise(a[None]) @ _standardise(b[None]).T)[0, 0])


def match_one(
    query: ImageRef, print_: Fingerprint, index: Index, *, settings: Settings | None = None
) -> Match:
    """Match one fingerprinted query against ``index`` (the same file is never its own match)."""
    settings = settings or index.settings
    exact = [i for i in index.exact(print_.pixel_hash) if index.refs[i].path != query.path]
    if len(exact) == 1:
        return Match(query, index.refs[exact[0]].key, "exact", 1.0, "matched")
    if exact:
        keys = tuple(index.refs[i].key for i in exact)
        return Match(query, "", "exact", 1.0, "ambiguous", keys)

    rows = index.candidates(print_)
    rows = rows[[index.refs[i].path != query.path for i in rows]] if len(rows) else rows
    if len(rows):
        near = np.minimum(
            np.bitwise_count(index.phash[rows] ^ np.uint64(print_.phash)),
            np.bitwise_count(index.dhash[rows] ^ np.uint64(print_.dhash)),
        )
        rows = rows[near <= settings.max_distance]
    if not len(rows):
        return Match(query, "", "", float("nan"), "unmatched")
    scores = _standardise(index.thumbs[rows]) @ _standardise(print_.thumb[None])[0]
    order = np.argsort(-scores, kind="stable")
    best = float(scores[order[0]])
    if best < settings.min_correlation:
        return Match(query, "", "", best, "unmatched")
    tied = [
        index.refs[rows[k]].key
        for k in order
        if scores[k] >= settings.min_correlation and best - scores[k] <= settings.tie_margin
    ]
    if len(tied) > 1:
        return Match(query, "", "fingerprint", best, "ambiguous", tuple(tied))
    return Match(query, index.refs[rows[order[0]]].key, "fingerprint", best, "matched")


def match(
    queries: Sequence[ImageRef],
    index: Index,
    *,
    issues: Issues | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Match]:
    """Match every query image against ``index``; unreadable queries go to ``issues`` (raised
    unless skipping) and have no :class:`Match`."""
    issues = issues if issues is not None else Issues()
    prints = fingerprint_all(
        queries, settings=index.settings, issues=issues, workers=workers, progress=progress
    )
    return [match_one(q, p, index) for q, p in zip(queries, prints, strict=True) if p is not None]


# ---------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Summary:
    """What :func:`run` wrote: counts by status and method, and the files' paths."""

    matches_csv: Path
    report_json: Path
    counts: dict[str, int]
    errors_csv: Path | None


def report_for(matches: Sequence[Match], index: Index, *, skipped: int = 0) -> dict[str, Any]:
    """The report written beside ``matches.csv``: counts, the unmatched and ambiguous queries,
    queries sharing one reference (duplicates within the query set), references with identical
    pixels, and split overlaps (a query and its reference in different splits, one of them test:
    the same image on both sides of an evaluation)."""
    split_of = {r.key: r.split for r in index.refs}
    counts = {
        "queries": len(matches) + skipped,
        "matched_exact": sum(m.status == "matched" and m.method == "exact" for m in matches),
        "matched_fingerprint": sum(
            m.status == "matched" and m.method == "fingerprint" for m in matches
        ),
        "unmatched": sum(m.status == "unmatched" for m in matches),
        "ambiguous": sum(m.status == "ambiguous" for m in matches),
        "skipped": skipped,
    }
    by_reference: dict[str, list[str]] = defaultdict(list)
    overlaps = []
    for m in matches:
        if m.status != "matched":
            continue
        by_reference[m.reference].append(m.query.key)
        q_split, r_split = m.query.split, split_of.get(m.reference, "")
        if _leaks(q_split, r_split):
            overlaps.append(
                {
                    "query": m.query.key,
                    "query_split": q_split,
                    "reference_image_id": m.reference,
                    "reference_split": r_split,
                }
            )
    return {
        "counts": counts,
        "settings": dict(vars(index.settings)),
        "unmatched": [m.query.key for m in matches if m.status == "unmatched"],
        "ambiguous": [
            {"query": m.query.key, "candidates": list(m.candidates), "method": m.method}
            for m in matches
            if m.status == "ambiguous"
        ],
        "query_duplicates": [
            {"reference_image_id": ref, "queries": keys}
            for ref, keys in sorted(by_reference.items())
            if len(keys) > 1
        ],
        "reference_duplicates": index.duplicate_groups(),
        "split_overlaps": overlaps,
    }


def _leaks(a: str, b: str) -> bool:
    known = {"train", "val", "test"}
    return a in known and b in known and a != b and "test" in (a, b)


def write_matches(matches: Iterable[Match], path: str | Path) -> Path:
    """``query, reference_image_id, method, score, status, candidates`` rows, atomically (score
    with 6 decimals, empty when there was no candidate; candidates joined by ``|``)."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(MATCH_COLUMNS)
    for m in matches:
        score = "" if np.isnan(m.score) else f"{m.score:.6f}"
        writer.writerow(
            [m.query.key, m.reference, m.method, score, m.status, "|".join(m.candidates)]
        )
    return atomic_write(path, buffer.getvalue())


def read_matches(path: str | Path) -> dict[str, dict[str, str]]:
    """``query -> row`` of a matches CSV written by :func:`write_matches`."""
    from cxrkit.data.sources.common import read_csv, rows_of

    df = read_csv(path, required=MATCH_COLUMNS, what="matches CSV")
    return {row["query"]: row for _, row in rows_of(df, path=Path(path))}


def report_path_for(matches_csv: Path) -> Path:
    """``<stem>_report.json`` beside the matches CSV."""
    return matches_csv.with_name(f"{matches_csv.stem}_report.json")


def run(
    *,
    query: str | Path,
    reference: str | Path,
    out: str | Path,
    index_file: str | Path | None = None,
    settings: Settings | None = None,
    on_error: str = "fail",
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Summary:
    """``cxrkit match``: match ``query`` (folder or manifest) against ``reference`` (manifest or
    folder), write ``out`` (the matches CSV), ``<stem>_report.json`` and, when images were
    skipped, ``<stem>_errors.csv``.

    Args:
        index_file: the reference's fingerprints: read when it exists (images whose key and path
            it holds are not read again), then written with the current reference.
        on_error: ``fail`` at the first unreadable image, or ``skip`` it and list it.
        progress: called as ``progress("reference" | "query", done, total)`` per image.
    """
    import json

    out = Path(out)
    settings = settings or Settings()
    issues = Issues(on_error=on_error)
    reuse = None
    if index_file is not None and Path(index_file).is_file():
        reuse = load_index(index_file, settings=settings)

    def step(side: str) -> Callable[[int, int], None] | None:
        return None if progress is None else lambda done, total: progress(side, done, total)

    index = build_index(
        images_of(reference),
        settings=settings,
        issues=issues,
        workers=workers,
        reuse=reuse,
        progress=step("reference"),
    )
    if index_file is not None:
        index.save(index_file)
    skipped_references = len(issues)
    queries = images_of(query)
    matches = match(queries, index, issues=issues, workers=workers, progress=step("query"))
    report = report_for(matches, index, skipped=len(issues) - skipped_references)
    report["query"], report["reference"] = str(query), str(reference)
    report["skipped_references"] = skipped_references
    write_matches(matches, out)
    report_json = atomic_write(report_path_for(out), json.dumps(report, indent=2) + "\n")
    return Summary(
        matches_csv=out,
        report_json=report_json,
        counts=report["counts"] | {"skipped_references": skipped_references},
        errors_csv=write_errors(issues, out=out),
    )
