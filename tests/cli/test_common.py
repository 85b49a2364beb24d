"""The one --config/--resume/key=value rule and the shared inference options."""

from __future__ import annotations

import argparse

import pytest

from cxrkit.cli import common
from cxrkit.errors import ConfigError


def _parse(words: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    common.add_run_arguments(parser, words="key=value | predict ...")
    return parser.parse_args(words)


def test_run_args_split_files_overrides_and_resume() -> None:
    args = _parse(["--config", "a.yaml", "--config", "b.yaml", "--resume", "never", "x.y=1"])
    run = common.run_args(args, form="finetune", example="configs/x.yaml")
    assert run == common.RunArgs(files=["a.yaml", "b.yaml"], overrides=["x.y=1"], resume=False)
    auto = common.run_args(_parse(["--config", "a.yaml"]), form="f", example="e")
    assert auto.resume == "auto"
    assert common.run_args(_parse(["--config", "a", "--resume", "r.ckpt"]), form="f", example="e")
    assert common.subcommand(_parse(["predict", "--model", "m"]), ("predict",)) == (
        "predict",
        ["--model", "m"],
    )
    assert common.subcommand(_parse(["a=1"]), ("predict",)) is None


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["x=1", "--config", "a.yaml"], "'--config' after the key=value overrides: put options"),
        (
            ["--config", "a.yaml", "scren"],
            r"'scren' is neither key=value nor a subcommand \(predict\)",
        ),
        (["x=1"], r"give --config FILE \(e.g. configs/x.yaml; see `cxrkit finetune --help`\)"),
    ],
)
def test_run_args_errors_say_what_to_write(words: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        common.run_args(
            _parse(words), form="finetune", example="configs/x.yaml", subcommands=("predict",)
        )


def test_inference_arguments() -> None:
    parser = argparse.ArgumentParser()
    common.add_inference_arguments(parser, model_help="m", batch_size=8)
    ns = parser.parse_args(["--model", "m.pt"])
    assert (ns.split, ns.device, ns.batch_size, ns.manifest, ns.no_progress) == (
        "test",
        "auto",
        8,
        None,
        False,
    )
    strict = argparse.ArgumentParser()
    common.add_inference_arguments(
        strict, model_help="m", model_flag="--ensemble", data_required=True
    )
    with pytest.raises(SystemExit):
        strict.parse_args(["--ensemble", "e"])  # --manifest and --cache are required here
