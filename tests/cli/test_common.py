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


def test_run_args_names_the_second_form_as_the_command_calls_it() -> None:
    with pytest.raises(ConfigError, match=r"'scren' is neither key=value nor an action \(screen\)"):
        common.run_args(
            _parse(["--config", "a.yaml", "scren"]),
            form="multitask",
            example="e",
            subcommands=("screen",),
            second_form="an action",
        )


def test_dispatch_runs_training_or_the_named_subcommand() -> None:
    def predict_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser()
        parser.add_argument("--model")
        return parser

    calls: list[tuple[str, object]] = []
    subcommands = {"predict": (predict_parser, lambda ns: calls.append(("predict", ns.model)) or 3)}

    def train(args: argparse.Namespace) -> int:
        calls.append(("train", list(args.args)))
        return 2

    def run(words: list[str]) -> int:
        return common.dispatch(
            _parse(words), train=train, subcommands=subcommands, misplaced_config="`f {name}` no"
        )

    assert run(["--config", "a.yaml", "x=1"]) == 2
    assert run(["predict", "--model", "m.pt"]) == 3
    assert calls == [("train", ["x=1"]), ("predict", "m.pt")]
    with pytest.raises(ConfigError, match="^`f predict` no$"):
        run(["--config", "a.yaml", "predict", "--model", "m.pt"])


def test_options_forwards_parsed_options_under_their_names() -> None:
    args = argparse.Namespace(seed=3, on_error="skip", root="r")
    assert common.options(args, "seed", "on_error") == {"seed": 3, "on_error": "skip"}
    assert common.options(args) == {}


def test_inference_parser_adds_out_after_the_inference_options() -> None:
    parser = common.inference_parser(
        "cxrkit x predict", description="d", epilog="", model_help="m", out_help="o"
    )
    ns = parser.parse_args(["--model", "m.pt", "--out", "p.csv", "--split", "val"])
    assert (ns.model.name, ns.out, ns.split, ns.batch_size) == ("m.pt", "p.csv", "val", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m.pt"])  # --out is required
