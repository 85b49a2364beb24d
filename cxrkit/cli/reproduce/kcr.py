"""``cxrkit reproduce kcr``: KCR Model 1 vs Model 2 on external datasets (cxrkit.reproduce.kcr)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.cli.reproduce import add_driver_arguments, overrides_of

EPILOG = """\
examples:
  cxrkit reproduce kcr --scale tiny --out runs/kcr_tiny      # phantoms, a few minutes on a CPU
  cxrkit reproduce kcr --train nih.parquet --cache cache256 \\
      --external chestxdet=chestxdet.parquet --external private=hospital.parquet \\
      --set encoder.weights=resnet50-11ad3fa6.pth --out runs/kcr

The training manifest needs train and val splits; each external manifest is scored on every image,
its views (AP / PA) taken from the records. Writes OUT/NAME/kcr_table.{md,csv}, the abstract's
result block OUT/NAME/result_block.md, and OUT/table.{md,csv} over every external dataset.
"""


def register(papers: Any) -> None:
    """Add ``cxrkit reproduce kcr``."""
    parser = add_command(
        papers,
        "kcr",
        help="KCR 2025: classifier vs classifier + reconstruction, AP/PA AUROC gaps",
        description="Train (or reuse) KCR Model 1 and Model 2 and write, per external dataset and "
        "over all of them, mAUROC on all / AP / PA images, Model 2 - Model 1 on each with CI and "
        "p, and each model's AP-PA gap with its change and p.",
        epilog=EPILOG,
    )
    add_driver_arguments(parser, out_default="runs/reproduce/kcr")
    parser.add_argument("--train", type=Path, help="training manifest (train and val splits)")
    parser.add_argument(
        "--cache",
        type=Path,
        help="training cache folder (built on first use; default OUT/cache_train)",
    )
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=MANIFEST",
        help="an external test set (repeatable); every image of it is scored",
    )
    add_protocol_arguments(
        parser, n_bootstrap_help="default: paper 20000, p floor 0.0001; tiny 200"
    )
    parser.add_argument(
        "--delong",
        choices=("t", "normal"),
        default="t",
        help="unpaired DeLong test of each AP-PA gap: t (R pROC: Student t, Welch df; default) "
        "or normal (z)",
    )
    parser.set_defaults(func=_run)


def add_protocol_arguments(parser: argparse.ArgumentParser, *, n_bootstrap_help: str) -> None:
    """``--set``, ``--config-dir``, ``--n-bootstrap`` and ``--seed``: the options the multitask
    drivers (KCR, Guendel) share."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override applied to every model's config (repeatable), e.g. encoder.weights=PATH; "
        "the same as a positional key=value",
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="key=value",
        help="overrides applied to every model's config, as in the training commands",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        help="folder of the multitask protocol configs (default: the checkout's configs/multitask)",
    )
    parser.add_argument(
        "--n-bootstrap", type=int, help=f"patient-bootstrap replicates ({n_bootstrap_help})"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and phantom seed")


def _run(args: argparse.Namespace) -> int:
    from cxrkit.reproduce import kcr

    report = kcr.run(
        out_dir=args.out,
        scale=args.scale,
        train_manifest=args.train,
        cache=args.cache,
        externals=kcr.parse_externals(args.external),
        overrides=overrides_of(args),
        config_dir=args.config_dir,
        n_bootstrap=args.n_bootstrap,
        delong=args.delong,
        seed=args.seed,
        only=args.stage,
        plan_only=args.plan,
    )
    if report is not None:
        print(f"report: {report}")
    return 0
