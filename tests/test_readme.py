"""The README runs as written: every ``cxrkit ...`` command in its code blocks parses.

Each command is parsed by the real parser; a training form's ``--config`` files must exist in the
repository and its ``key=value`` overrides must be keys of the stage's schema (the config is loaded
as the command would load it); a subcommand's options are parsed by that subcommand's own parser.
A README edit that renames an option, a key or a config file fails here.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest

from cxrkit import cli
from cxrkit.cli import common

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _schemas():
    from cxrkit import finetune, multitask, pretrain

    return {
        ("pretrain", None): pretrain.Config,
        ("pretrain", "linear-eval"): pretrain.LinearEvalConfig,
        ("finetune", None): finetune.Config,
        ("multitask", None): multitask.Config,
    }


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, argv after 'cxrkit')`` for each cxrkit command in the bash blocks."""
    commands = []
    in_block = False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() in ("```bash", "```sh", "```console") and not in_block
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        for part in re.split(r"\s*(?:&&|;|\|)\s*", pending):
            words = shlex.split(part, comments=True)
            if words and words[0] == "cxrkit":
                commands.append((start, words[1:]))
        pending = ""
    return commands


COMMANDS = readme_commands(README.read_text())


def test_the_readme_has_commands_for_every_stage():
    used = {argv[0] for _, argv in COMMANDS if argv}
    assert {"demo", "prepare", "preprocess", "pretrain", "finetune", "multitask", "eval"} <= used


def _check_training_form(command, sub, args, line):
    schema = _schemas().get((command, sub))
    if schema is None:
        return
    for f in args.config:
        assert (ROOT / f).is_file(), f"README line {line}: config file {f} is not in the repo"
    run = common.run_args(args, form=command, example="x.yaml")
    common.load_config(schema, run)  # unknown keys and bad values raise ConfigError


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once an action's own parser accepted its words."""


def _parse_only(monkeypatch):
    import argparse

    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _check_action(module_name, args, line, monkeypatch):
    """A command whose actions parse their own words (``multitask predict ...``)."""
    import importlib

    actions = getattr(importlib.import_module(module_name), "ACTIONS", {})
    found = common.subcommand(args, tuple(actions))
    if found is None:
        _check_training_form(args.command, None, args, line)
        return
    name, words = found
    _parse_only(monkeypatch)
    try:
        actions[name](words)
    except _Parsed:
        return
    except SystemExit:
        pytest.fail(f"README line {line}: `cxrkit {args.command} {name}` rejects {words}")
    pytest.fail(f"README line {line}: `cxrkit {args.command} {name}` did not parse its options")


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"line{n}" for n, _ in COMMANDS])
def test_readme_command_parses(line, argv, monkeypatch):
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"README line {line}: `cxrkit {shlex.join(argv)}` does not parse")
    func = args.func
    if not (isinstance(func, functools.partial) and func.func is common.dispatch):
        return
    subcommands = func.keywords["subcommands"]
    if not subcommands:  # a training command that dispatches its own actions
        _check_action(cli.COMMANDS[args.command], args, line, monkeypatch)
        return
    found = common.subcommand(args, tuple(subcommands))
    if found is None:
        _check_training_form(args.command, None, args, line)
        return
    name, words = found
    try:
        sub_args = subcommands[name][0]().parse_args(words)
    except SystemExit:
        pytest.fail(f"README line {line}: `cxrkit {args.command} {name}` rejects {words}")
    if hasattr(sub_args, "config") and hasattr(sub_args, "args"):
        _check_training_form(args.command, name, sub_args, line)


def test_the_extractor_joins_continuations_and_drops_comments():
    text = "```bash\n# cxrkit nothing\ncxrkit a --x 1 \\\n    k=v  # note\npip x && cxrkit b\n```\n"
    assert readme_commands(text) == [(3, ["a", "--x", "1", "k=v"]), (5, ["b"])]


def test_python_m_cxrkit_runs_the_same_cli():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cxrkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("cxrkit ")


def _help_texts(parser):
    import argparse

    yield (parser.prog, (parser.description or "") + (parser.epilog or ""))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _help_texts(sub)


def test_config_files_named_in_any_help_exist():
    texts = list(_help_texts(cli.build_parser()))
    assert len(texts) > 20  # every command and subcommand was visited
    missing = [
        (prog, path)
        for prog, text in texts
        for path in re.findall(r"configs/[\w./-]+\.yaml", text)
        if not (ROOT / path).is_file()
    ]
    assert not missing, missing


# --------------------------------------------------------------------------------------------------
# the walk-through, run (issue 14): the README's commands of sections 0-6 in order, at tiny size

# (the words a README command starts with, the files it must leave for the next one). Each is the
# first README command starting so; it runs as written but for the changes of _tiny().
WALKTHROUGH = (
    (("synth",), ["data/synth/nih", "data/synth/vindr"]),
    (("prepare", "nih", "--root", "/data/ChestX-ray14"), ["nih.parquet"]),
    (("prepare", "vindr", "--root", "/data/vindr-cxr/1.0.0"), ["vindr.parquet"]),
    (("preprocess",), ["cache/vindr224/index.parquet"]),
    (("pretrain", "--config"), ["runs/pretrain/barlow_twins_nih/backbone.pth"]),
    (("finetune", "--config"), ["runs/finetune/bt/detector.pt"]),
    (("finetune", "predict"), ["test.csv", "submission.csv"]),
    (
        ("multitask", "--config", "configs/multitask/kcr_model1.yaml"),
        ["runs/m1/predictions_test.csv"],
    ),
    (
        ("multitask", "--config", "configs/multitask/kcr_model2.yaml"),
        ["runs/m2/predictions_test.csv"],
    ),
    (("eval", "classification"), ["reports/kcr/report.md"]),
    (("multitask", "compare"), ["reports/kcr_table.csv"]),
    (("eval", "detection", "--predictions", "test.csv"), ["reports/det/report.md"]),
)
# the README's dataset folders -> the phantoms of its section 0
DATA = {"/data/ChestX-ray14": "data/synth/nih", "/data/vindr-cxr/1.0.0": "data/synth/vindr"}
# tiny sizes: option -> value; the training stages get their tiny config after the README's
OPTIONS = {
    "synth": {"--n": "48", "--size": "128"},
    "preprocess": {"--size": "128", "--workers": "1"},  # the tiny detector's 128 px
}
TINY_CONFIGS = {
    "configs/pretrain/barlow_twins_nih.yaml": "configs/pretrain/tiny_pretrain.yaml",
    "configs/finetune/faster_rcnn_vindr.yaml": "configs/finetune/tiny_faster_rcnn.yaml",
    "configs/multitask/kcr_model1.yaml": "configs/multitask/tiny_kcr_model1.yaml",
    "configs/multitask/kcr_model2.yaml": "configs/multitask/tiny_kcr_model2.yaml",
}


def _walkthrough_commands() -> list[tuple[int, list[str], list[str]]]:
    found = []
    for prefix, outputs in WALKTHROUGH:
        match = next(((n, a) for n, a in COMMANDS if tuple(a[: len(prefix)]) == prefix), None)
        assert match is not None, f"the README has no `cxrkit {' '.join(prefix)} ...` any more"
        found.append((match[0], match[1], outputs))
    return found


def _tiny(argv: list[str]) -> list[str]:
    """The README command at tiny size: the phantoms for the datasets, small options, the stage's
    tiny config after the README's (its output_dir kept), no ImageNet weight file (not on a test
    machine: the tiny configs start from random weights)."""
    import yaml

    words = [DATA.get(w, w) for w in argv]
    for option, value in OPTIONS.get(words[0], {}).items():
        words[words.index(option) + 1] = value
    if words[0] == "eval" or words[:2] == ["multitask", "compare"]:
        words += ["--n-bootstrap", "20"]  # not thousands of resamples of a few images
    words = [w for w in words if not re.match(r"^\w+\.weights=weights/", w)]
    out = []
    for i, word in enumerate(words):
        out.append(str(ROOT / word) if word.startswith("configs/") else word)
        if i and words[i - 1] == "--config" and word in TINY_CONFIGS:
            out += ["--config", str(ROOT / TINY_CONFIGS[word])]
            if not any(w.startswith("output_dir=") for w in words):
                config = yaml.safe_load((ROOT / word).read_text())
                out.append(f"output_dir={config['output_dir']}")
    return out


@pytest.mark.slow
def test_the_readme_walkthrough_runs_at_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the README's relative paths land here
    for line, argv, outputs in _walkthrough_commands():
        words = _tiny(argv)
        code = cli.main(words)
        printed = capsys.readouterr()
        assert code == 0, f"README line {line}: `cxrkit {shlex.join(words)}`\n{printed.err[-3000:]}"
        missing = [o for o in outputs if not (tmp_path / o).exists()]
        assert not missing, f"README line {line}: `cxrkit {argv[0]} ...` did not write {missing}"
    report = (tmp_path / "reports" / "det" / "report.md").read_text()
    assert "VOC AP@0.4" in report
