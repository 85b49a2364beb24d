"""``cxrkit synth``: write synthetic chest X-ray phantoms (:func:`cxrkit.synth.generate`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cxrkit import synth
from cxrkit.cli.common import add_command, options

EPILOG = """\
example:
  cxrkit synth --out data/synth --n 1000 --size 256 --seed 0 --workers 2

  writes 1,000 NIH-style PNGs (+ Data_Entry_2017.csv, BBox_List_2017.csv, masks) and 1,000
  VinDr-style DICOMs (+ three readers' annotations, ~80/20 train/test) under data/synth;
  read them back with the nih, vindr or csv adapters of `cxrkit prepare`.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit synth`` to the CLI."""
    parser = add_command(
        subparsers,
        "synth",
        help="write synthetic chest X-ray phantoms in NIH and VinDr formats",
        description="Write synthetic CXR-like phantoms with known findings, boxes and masks, "
        "as NIH ChestX-ray14 PNG + CSVs and VinDr-CXR DICOM + annotation CSVs.",
        epilog=EPILOG,
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="images per dataset (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--abnormal-fraction",
        type=float,
        default=0.4,
        help="share of images with findings (default 0.4)",
    )
    parser.add_argument(
        "--ap-fraction", type=float, default=0.45, help="probability of an AP film (default 0.45)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="worker processes (default: CPU count, at most 8)",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(synth.DATASETS),
        help="comma-separated subset of nih,vindr (default both)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the phantoms and print one line per dataset."""
    summary = synth.generate(
        out_dir=args.out,
        **options(args, "n", "size", "seed", "abnormal_fraction", "ap_fraction", "workers"),
        datasets=[d.strip() for d in args.datasets.split(",") if d.strip()],
    )
    for d in summary.datasets:
        c = summary.counts[d]
        print(
            f"{d}: {c['images']} images ({c.get('abnormal', 0)} abnormal, {c.get('AP', 0)} AP) "
            f"-> {summary.out_dir / d}"
        )
    print(f"done in {summary.seconds:.1f} s (seed {summary.seed}, {summary.size} px)")
    return 0
