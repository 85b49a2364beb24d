"""What every ``cxrkit`` command shares: one way to declare a command, one ``--config ... --resume
... key=value`` rule for training commands, and one set of inference options.

The rule for training commands (detectron2's ``default_argument_parser`` idea: written once)::

    cxrkit STAGE [--config FILE ...] [--resume auto|never|PATH] [key=value ...]
    cxrkit STAGE SUBCOMMAND [its own options]

Options come before the overrides; a word that is neither ``key=value`` nor a subcommand, an option
after the overrides, or a missing ``--config`` is a :class:`~cxrkit.errors.ConfigError` that says
what to write instead.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]

RESUME_HELP = "auto (continue from OUTPUT_DIR/checkpoints/last.ckpt if present), never, or a .ckpt"


def add_command(
    subparsers: Any, name: str, *, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` keeps the epilog's examples as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def sub_parser(prog: str, *, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """The parser of a second-level form (``cxrkit finetune predict``), parsed from the rest."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_run_arguments(parser: argparse.ArgumentParser, *, words: str) -> None:
    """``--config`` (repeatable), ``--resume`` and the remaining words (overrides or a subcommand).

    Args:
        words: the metavar of the remaining words, e.g. ``"key=value | predict ... | cam ..."``.
    """
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file (repeatable; later files override earlier ones)",
    )
    parser.add_argument("--resume", default="auto", help=RESUME_HELP)
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar=words,
        help="config overrides, or a subcommand with its own options",
    )


def add_training_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    epilog: str,
    words: str,
    train: Handler,
    subcommands: Mapping[str, tuple[Callable[[], argparse.ArgumentParser], Handler]] | None = None,
    misplaced_config: str = "",
) -> argparse.ArgumentParser:
    """A training command (module docstring): :func:`add_command` with :func:`add_run_arguments`,
    run by :func:`dispatch`.

    Args:
        words: the metavar of the remaining words (:func:`add_run_arguments`).
        train, subcommands, misplaced_config: as :func:`dispatch` takes them (no subcommands:
            every word goes to ``train``).
    """
    parser = add_command(subparsers, name, help=help, description=description, epilog=epilog)
    add_run_arguments(parser, words=words)
    parser.set_defaults(
        func=functools.partial(
            dispatch,
            train=train,
            subcommands=subcommands or {},
            misplaced_config=misplaced_config,
        )
    )
    return parser


@dataclass(frozen=True)
class RunArgs:
    """The parsed training form: config files, overrides and the resume choice."""

    files: list[str]
    overrides: list[str]
    resume: str | bool  # "auto", a checkpoint path, or False for --resume never


def subcommand(args: argparse.Namespace, names: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(name, its words)`` when the remaining words start with one of ``names``, else None."""
    rest = list(args.args)
    if rest and rest[0] in names:
        return rest[0], rest[1:]
    return None


def run_args(
    args: argparse.Namespace,
    *,
    form: str,
    example: str,
    subcommands: Sequence[str] = (),
    second_form: str = "a subcommand",
) -> RunArgs:
    """Check and split the training form's words (module docstring).

    Args:
        form: the command as typed, for messages (``"finetune"``).
        example: a config file to name when ``--config`` is missing.
        subcommands: the subcommand names, for the message about a stray word.
        second_form: what the command calls its subcommands in that message (``"an action"``).

    Raises:
        ConfigError: an option after the overrides, a stray word, or no ``--config``.
    """
    overrides = list(args.args)
    options = [o for o in overrides if o.startswith("-")]
    if options:
        raise ConfigError(
            f"{options[0]!r} after the key=value overrides: put options (--config, --resume) "
            f"first, e.g. `cxrkit {form} --config FILE key=value`"
        )
    bad = [o for o in overrides if "=" not in o]
    if bad:
        what = f"{second_form} ({', '.join(subcommands)})" if subcommands else "an option"
        raise ConfigError(f"{bad[0]!r} is neither key=value nor {what}")
    if not args.config:
        raise ConfigError(f"give --config FILE (e.g. {example}; see `cxrkit {form} --help`)")
    resume = False if args.resume == "never" else args.resume
    return RunArgs(files=list(args.config), overrides=overrides, resume=resume)


def dispatch(
    args: argparse.Namespace,
    *,
    train: Handler,
    subcommands: Mapping[str, tuple[Callable[[], argparse.ArgumentParser], Handler]],
    misplaced_config: str,
) -> int:
    """Run a training command's form: its subcommand when the words start with one, else training.

    A subcommand parses its own words with its own parser, so a ``--config`` given before the
    subcommand's name belongs to no form: it fails with ``misplaced_config``.

    Args:
        train: the handler of the training form (it checks its words with :func:`run_args`).
        subcommands: name -> (the subcommand's parser factory, its handler).
        misplaced_config: the message for ``--config`` before a subcommand; ``{name}`` is
            replaced by the subcommand's name.

    Raises:
        ConfigError: ``--config`` before a subcommand.
    """
    found = subcommand(args, tuple(subcommands))
    if found is None:
        return train(args)
    name, words = found
    if args.config:
        raise ConfigError(misplaced_config.format(name=name))
    parser, handler = subcommands[name]
    return handler(parser().parse_args(words))


def options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed options ``names`` as keyword arguments of the same names.

    For a handler that forwards options whose ``dest`` is already the library's keyword, so that
    each name is written once (``**options(args, "seed", "on_error")``).
    """
    return {name: getattr(args, name) for name in names}


def load_config(schema: type, run: RunArgs) -> Any:
    """The typed config of ``run``'s files and overrides (unknown keys fail naming the key)."""
    from cxrkit import config as config_io

    return config_io.load(schema, files=run.files, overrides=run.overrides)


def add_inference_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_help: str,
    model_flag: str = "--model",
    data_required: bool = False,
    batch_size: int | None = None,
) -> None:
    """The one set of inference options: ``--model --manifest --cache --root --split
    --batch-size --num-workers --device --no-progress``.

    Args:
        model_help: what ``--model`` takes.
        model_flag: the flag's name (``--ensemble`` for a folder of members).
        data_required: ``--manifest`` and ``--cache`` must be given (else they default to the
            model's own).
        batch_size: the default batch size (None: the model's configuration decides).
    """
    parser.add_argument(model_flag, required=True, type=Path, help=model_help)
    default = "" if data_required else " (default: the one the model was trained on)"
    parser.add_argument(
        "--manifest", required=data_required, help=f"Parquet manifest (cxrkit prepare){default}"
    )
    parser.add_argument(
        "--cache",
        required=data_required,
        help=f"cache directory with the model's preprocessing recipe (built if missing){default}",
    )
    add_root_argument(parser)
    parser.add_argument("--split", default="test", help="split to run on; 'all' for every image")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--num-workers", type=int, default=None, help="loader worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


ROOT_HELP = (
    "folder the manifest's images are in now: its relative paths are joined to it instead of the "
    "root the manifest records (a manifest of absolute paths is rebased onto it)"
)


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--root DIR`` of every command that reads a manifest's images (``data.root`` of a training
    config); None when not given."""
    parser.add_argument("--root", default=None, help=ROOT_HELP)


def inference_parser(
    prog: str,
    *,
    description: str,
    epilog: str,
    model_help: str,
    out_help: str,
    model_flag: str = "--model",
    data_required: bool = False,
    batch_size: int | None = None,
) -> argparse.ArgumentParser:
    """The parser of an inference form: :func:`sub_parser`, the inference options
    (:func:`add_inference_arguments`, same arguments) and the required ``--out``.

    Args:
        out_help: what ``--out`` names (a predictions file, a folder of overlays).
    """
    parser = sub_parser(prog, description=description, epilog=epilog)
    add_inference_arguments(
        parser,
        model_help=model_help,
        model_flag=model_flag,
        data_required=data_required,
        batch_size=batch_size,
    )
    parser.add_argument("--out", required=True, help=out_help)
    return parser
