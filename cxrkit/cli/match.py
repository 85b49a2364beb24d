"""``cxrkit match``: find each query image's original in a reference dataset by its pixels
(:mod:`cxrkit.data.matching`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.data.sources.common import ON_ERROR

EPILOG = """\
examples:
  # ChestX-Det's images (Deepwise's file names) against NIH ChestX-ray14: views and patients
  cxrkit prepare nih --root /data/ChestX-ray14 --out nih.parquet
  cxrkit match --query /data/ChestX-Det/train --reference nih.parquet --out det_nih.csv \\
      --index nih_fingerprints.npz

  # duplicates inside one dataset, and train/test overlaps: match a manifest against itself
  cxrkit match --query vindr.parquet --reference vindr.parquet --out vindr_self.csv

matches.csv: query, reference_image_id (empty when none), method (exact|fingerprint), score
(1 for an exact copy, else the thumbnail correlation), status (matched|unmatched|ambiguous),
candidates (the tied references of an ambiguous query). <stem>_report.json beside it counts them
and lists the unmatched and ambiguous queries, queries sharing one reference, references with
identical pixels, and split overlaps (a query and its reference in different splits, one of
them test). An image never matches its own file.

How: an exact hash of the decoded pixels first (a losslessly re-saved PNG matches), then pHash /
dHash candidates from a banded multi-index, confirmed by the correlation of 32 px thumbnails
(>= --min-correlation); two references within --tie-margin of each other make a query ambiguous.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit match``."""
    parser = add_command(
        subparsers,
        "match",
        help="find each image's original in another dataset (exact, re-encoded or resized)",
        description="Match the images of --query to those of --reference by their pixels and "
        "write a matches CSV and a report beside it.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--query", type=Path, required=True, help="folder of images (recursive) or a manifest"
    )
    parser.add_argument(
        "--reference", type=Path, required=True, help="manifest (or folder) to search"
    )
    parser.add_argument("--out", type=Path, required=True, help="matches CSV to write")
    parser.add_argument(
        "--index",
        type=Path,
        help="reference fingerprints (.npz): reused where key and path agree, then rewritten",
    )
    parser.add_argument(
        "--min-correlation",
        type=float,
        default=0.99,
        help="thumbnail correlation a match needs (default 0.99)",
    )
    parser.add_argument(
        "--tie-margin",
        type=float,
        default=0.001,
        help="a second reference this close to the best makes a query ambiguous (default 0.001)",
    )
    parser.add_argument(
        "--max-distance",
        type=int,
        default=10,
        help="Hamming bits (pHash or dHash) a candidate may differ by (default 10)",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="fail: stop at the first unreadable image (default); skip: leave it out and list "
        "it in <out_stem>_errors.csv",
    )
    parser.set_defaults(func=_run)


def _progress(side: str, done: int, total: int) -> None:
    """One stderr line per 1,000 images (and the last): 112,120 NIH images take a while."""
    if done % 1000 == 0 or done == total:
        print(f"fingerprinted {done}/{total} {side} images", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from cxrkit.data import matching
    from cxrkit.errors import ConfigError

    try:
        settings = matching.Settings(
            max_distance=args.max_distance,
            min_correlation=args.min_correlation,
            tie_margin=args.tie_margin,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    summary = matching.run(
        query=args.query,
        reference=args.reference,
        out=args.out,
        index_file=args.index,
        settings=settings,
        on_error=args.on_error,
        workers=args.workers,
        progress=_progress,
    )
    c = summary.counts
    print(
        f"wrote {summary.matches_csv}: {c['queries']} queries, "
        f"{c['matched_exact']} exact, {c['matched_fingerprint']} by fingerprint, "
        f"{c['unmatched']} unmatched, {c['ambiguous']} ambiguous\n"
        f"report: {summary.report_json}"
    )
    if summary.errors_csv is not None:
        skipped = c["skipped"] + c["skipped_references"]
        print(f"skipped {skipped} images; reasons in {summary.errors_csv}")
    return 0
