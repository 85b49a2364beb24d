"""``cxrkit reproduce scxnn``: the screening thesis' ensemble and tables (reproduce.scxnn)."""

from __future__ import annotations

import argparse
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.cli.reproduce import add_driver_arguments
from cxrkit.errors import ConfigError

EPILOG = """\
examples:
  cxrkit reproduce scxnn --scale tiny --out runs/scxnn_tiny      # synthetic phantoms, ~1 minute
  cxrkit reproduce scxnn --manifest amc.parquet --cache cache1024 --out runs/scxnn \\
      --external mimic=mimic.parquet --external chexpert=chexpert.parquet \\
      encoder.weights=densenet121-a639ec97.pth
  public labels (approximate, see the file): --config-file configs/scxnn/public_approximate.yaml

The recipe is configs/scxnn/scxnn.yaml (thesis values, each marked thesis or cxrkit); key=value
overrides follow it. Outputs: OUT/tables/<dataset>/table{1,2,3,7,8,9}.{md,csv},
OUT/figures/gradcam.png, OUT/report.md; per dataset and member variant the SVM decisions and every
member's probabilities under OUT/predictions/.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit reproduce scxnn``."""
    parser = add_command(
        subparsers,
        "scxnn",
        help="the screening thesis (SCXNN): 13 members + SVM, Tables 1-3, 7-9, Grad-CAM",
        description="Train (or reuse) the thesis' ensemble and write its tables per dataset.",
        epilog=EPILOG,
    )
    add_driver_arguments(parser, out_default="runs/scxnn")
    parser.add_argument("--manifest", default=None, help="manifest (lesion masks = hard labels)")
    parser.add_argument("--cache", default=None, help="cache of the manifest (built if missing)")
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=MANIFEST",
        help="an external test set, scored whole (repeatable)",
    )
    parser.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="YAML",
        help="a config layered over configs/scxnn/scxnn.yaml (repeatable)",
    )
    parser.add_argument(
        "--two-class", action="store_true", help="also train 2-class members (Tables 7-8)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="member config overrides")
    parser.set_defaults(func=_run)


def _external(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--external {item!r}: expected NAME=MANIFEST")
        if name in out:
            raise ConfigError(f"--external {name}: given twice")
        out[name] = path
    return out


def _run(args: argparse.Namespace) -> int:
    from cxrkit.reproduce import scxnn

    report = scxnn.run(
        out_dir=args.out,
        manifest=args.manifest,
        cache=args.cache,
        external=_external(args.external),
        scale=args.scale,
        config_files=args.config_file,
        overrides=args.overrides,
        two_class=args.two_class,
        seed=args.seed,
        only=args.stage or None,
        plan_only=args.plan,
    )
    if not args.plan:
        print(f"cxrkit reproduce scxnn: report {report}")
    return 0
