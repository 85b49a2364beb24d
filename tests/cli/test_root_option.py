"""``--root`` (issue 14) reaches the data config of every inference form and of preprocess."""

from __future__ import annotations

import inspect

import pytest

from cxrkit.cli import common
from cxrkit.cli import finetune as finetune_cli
from cxrkit.cli import multitask as multitask_cli


def _inference_args(*extra: str):
    parser = common.inference_parser(
        "cxrkit x", description="", epilog="", model_help="model", out_help="out"
    )
    return parser.parse_args(["--model", "m.pt", "--out", "o.csv", *extra])


def test_inference_forms_carry_root_into_the_data_config():
    from cxrkit import multitask
    from cxrkit.finetune import inference

    args = _inference_args("--root", "/cluster/vindr")
    assert args.root == "/cluster/vindr" and _inference_args().root is None
    # finetune predict / cam: the keyword reaches open_split, which sets data.root
    inputs = finetune_cli._inputs(args)
    assert inputs["root"] == "/cluster/vindr"
    for fn in (inference.predict_split, inference.explain_split, inference.open_split):
        assert "root" in inspect.signature(fn).parameters
    # multitask predict / screen: the model's config with the command's data
    config = multitask.Config()
    assert multitask_cli._for_inference(config, args).data.root == "/cluster/vindr"
    kept = multitask.Config(data=type(config.data)(root="/saved"))
    assert multitask_cli._for_inference(kept, _inference_args()).data.root == "/saved"


def test_preprocess_and_the_inference_forms_list_root_in_their_help(capsys):
    from cxrkit import cli

    for argv in (["preprocess", "--help"], ["finetune", "predict", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "--root ROOT" in capsys.readouterr().out
