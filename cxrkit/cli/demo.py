"""``cxrkit demo``: the whole BarlowTwins-CXR pipeline on synthetic phantoms (cxrkit.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command

EPILOG = """\
examples:
  cxrkit demo --out runs/demo            # about 15 minutes on a 2-core CPU
  cxrkit demo --out runs/demo --quick    # about 2 minutes: every step, tiny sizes

Afterwards open runs/demo/report.md; TensorBoard: tensorboard --logdir runs/demo/runs
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit demo``."""
    parser = add_command(
        subparsers,
        "demo",
        help="end-to-end demo on synthetic data: pretrain, finetune, eval, CAMs",
        description="Run the whole pipeline on synthetic phantoms (synth -> prepare -> preprocess "
        "-> Barlow Twins -> Faster R-CNN from those weights and from random initialisation -> "
        "evaluation -> CAMs) and write OUT/report.md.",
        epilog=EPILOG,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: about 2 minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cxrkit.demo import run_demo
    from cxrkit.io import check_output_dir

    check_output_dir(args.out)  # before the synthetic data is made: a file there fails at once

    report = run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)
    print(f"report: {report}")
    return 0
