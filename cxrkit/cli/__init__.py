"""The ``cxrkit`` command: one subcommand per stage.

All argument parsing lives in this package: one module per command (``cxrkit/cli/<command>.py``)
with a ``register(subparsers)`` function that adds its parser and sets ``func`` (called with the
parsed arguments, returning an exit code); :mod:`cxrkit.cli.common` holds what they share. A handler
parses, calls one library function, and prints. Heavy imports (torch, Lightning) happen inside the
handlers so ``cxrkit --help`` stays quick. Errors a user can cause
(:class:`cxrkit.errors.CxrkitError`) are printed as one message, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cxrkit import __version__
from cxrkit.errors import CxrkitError

# subcommand -> module defining register(subparsers), in the order `--help` lists them
COMMANDS: dict[str, str] = {
    "synth": "cxrkit.cli.synth",
    "prepare": "cxrkit.cli.prepare",
    "match": "cxrkit.cli.match",
    "preprocess": "cxrkit.cli.preprocess",
    "pretrain": "cxrkit.cli.pretrain",
    "finetune": "cxrkit.cli.finetune",
    "multitask": "cxrkit.cli.multitask",
    "eval": "cxrkit.cli.eval",
    "predict": "cxrkit.cli.predict",
    "reproduce": "cxrkit.cli.reproduce",
    "export": "cxrkit.cli.export",
    "demo": "cxrkit.cli.demo",
}


EXIT_STATUS = """\
exit status (every command):
  0    the command did what was asked (with --on-error skip, skipped items are listed in the
       errors CSV the command names, and do not change the status)
  1    an error stopped it; one line on stderr names the file, row or key and the problem
  2    the command line itself is wrong (unknown option, missing argument; eval: predictions
       of another --split)
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrkit",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chest X-ray toolkit: data preparation, pretraining, localisation, "
        "multi-task models and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"cxrkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CxrkitError as exc:
        print(f"cxrkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxrkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
