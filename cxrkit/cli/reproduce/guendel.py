"""``cxrkit reproduce guendel``: the auxiliary-head ablation (cxrkit.reproduce.guendel)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.cli.reproduce import add_driver_arguments, overrides_of
from cxrkit.cli.reproduce.kcr import add_protocol_arguments

EPILOG = """\
examples:
  cxrkit reproduce guendel --scale tiny --out runs/guendel_tiny    # phantoms, minutes on a CPU
  cxrkit reproduce guendel --manifest nih_with_masks.parquet --cache cache256 \\
      --set encoder.weights=resnet50-11ad3fa6.pth --out runs/guendel

The manifest needs train, val and test splits; organ masks are read from each record's
mask_paths["lung"] and ["heart"] where present (records without them train no segmentation),
boxes give the location targets. Writes OUT/table.{md,csv} (per-abnormality AUC with and without
the auxiliary heads) and OUT/heads.{md,csv} (training images per head).
"""


def register(papers: Any) -> None:
    """Add ``cxrkit reproduce guendel``."""
    parser = add_command(
        papers,
        "guendel",
        help="Guendel et al. 2019: classification with and without segmentation/location heads",
        description="Train Guendel's multi-task model (classification + lung/heart segmentation "
        "+ abnormality location) and the classification-only ablation, and write per-abnormality "
        "AUC of both in one table.",
        epilog=EPILOG,
    )
    add_driver_arguments(parser, out_default="runs/reproduce/guendel")
    parser.add_argument("--manifest", type=Path, help="manifest with train, val and test splits")
    parser.add_argument("--cache", type=Path, help="cache folder (built on first use; OUT/cache)")
    add_protocol_arguments(parser, n_bootstrap_help="default 2000; tiny 200")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cxrkit.reproduce import guendel

    table = guendel.run(
        out_dir=args.out,
        scale=args.scale,
        manifest=args.manifest,
        cache=args.cache,
        overrides=overrides_of(args),
        config_dir=args.config_dir,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        only=args.stage,
        plan_only=args.plan,
    )
    if table is not None:
        print(f"table: {table}")
    return 0
