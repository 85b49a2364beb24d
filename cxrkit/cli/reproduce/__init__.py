"""``cxrkit reproduce <paper>``: one driver per paper (:mod:`cxrkit.reproduce`).

Each paper is a module here with ``register(subparsers)``, listed in :data:`PAPERS`; the options
every driver has (``--out``, ``--scale``, ``--stage``, ``--plan``) come from
:func:`add_driver_arguments`, so they read the same in every ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command

# paper -> module defining register(subparsers), in the order `--help` lists them
PAPERS: dict[str, str] = {
    "barlowtwins-cxr": "cxrkit.cli.reproduce.barlowtwins_cxr",
    "scxnn": "cxrkit.cli.reproduce.scxnn",
    "kcr": "cxrkit.cli.reproduce.kcr",
    "guendel": "cxrkit.cli.reproduce.guendel",
}

EPILOG = """\
Each driver prints its plan (stages, time estimate) first, runs the stages in order and writes
OUT/table.md, OUT/table.csv and OUT/report.json (or the paper's own tables). A finished stage is
recorded in OUT/stages/<stage>.json: rerunning the same command skips it, and a killed run
continues with the first unfinished stage. --scale tiny runs the same chain on synthetic phantoms
at tiny sizes, in minutes on a CPU.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit reproduce`` and one subcommand per paper."""
    parser = add_command(
        subparsers,
        "reproduce",
        help="reproduce a paper's tables with its protocol, in one command",
        description="Run a paper's whole protocol (prepare -> preprocess -> train -> predict -> "
        "eval) and write its tables.",
        epilog=EPILOG,
    )
    papers = parser.add_subparsers(dest="paper", metavar="PAPER", required=True)
    for module in PAPERS.values():
        importlib.import_module(module).register(papers)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """A driver's config overrides: ``--set KEY=VALUE`` (``args.overrides``) then positional
    ``key=value`` words (``args.words``), each checked to be of that form.

    Raises:
        ConfigError: a word without ``=``.
    """
    from cxrkit.errors import ConfigError

    overrides = [*getattr(args, "overrides", []), *getattr(args, "words", [])]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not a key=value override")
    return overrides


def add_driver_arguments(parser: argparse.ArgumentParser, *, out_default: str) -> None:
    """``--out``, ``--scale``, ``--stage`` and ``--plan``: the options of every driver."""
    parser.add_argument(
        "--out", type=Path, default=Path(out_default), help=f"output folder (default {out_default})"
    )
    parser.add_argument(
        "--scale",
        choices=("paper", "tiny"),
        default="paper",
        help="paper: the published protocol; tiny: the same chain at tiny sizes (tests, laptops)",
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this stage (or stages starting with NAME; repeatable); earlier stages it "
        "needs must have finished",
    )
    parser.add_argument(
        "--plan", action="store_true", help="print the plan (stages, time estimate) and exit"
    )
