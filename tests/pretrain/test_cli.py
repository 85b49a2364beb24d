"""`cxrkit pretrain` argument handling, help with worked examples, and the export form."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning.pytorch  # noqa: F401  (see below)
import pytest
import torch
import torchvision

from cxrkit import cli

# Lightning gives its loggers a handler on the sys.stderr of the moment it is imported; imported
# first inside a handler under capsys, that is a stream pytest closes after the test, and the next
# test's "Seed set to 0" would print a logging traceback into the stderr these tests check.
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny_pretrain.yaml")


@pytest.fixture(autouse=True)
def _registered(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative output_dirs land in the test's folder


@pytest.mark.parametrize(
    ("argv", "example"),
    [
        (["pretrain", "--help"], "torchrun --nproc-per-node 8"),
        (["pretrain", "linear-eval", "--help"], "init=random"),
        (["pretrain", "export", "--help"], "--checkpoint runs/pretrain"),
    ],
)
def test_help_shows_worked_examples(argv, example, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    assert example in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain"], "give --config FILE"),
        (["pretrain", "--config", "x.yaml", "lineareval"], "'lineareval' is neither key=value"),
        (["pretrain", "--config", "x.yaml", "export"], "put --config after `pretrain export`"),
        (["finetune", "--config", "x.yaml", "cam"], "`finetune cam` takes no --config"),
        (["pretrain", "--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["pretrain", "--config", TINY, "model.depth=3"], "model.depth"),
        (["pretrain", "--config", TINY, "views.recipe=simclr"], "views.recipe must be one of"),
        (
            ["pretrain", "--config", TINY, "trainer.accumulate_grad_batches=4"],
            "cannot accumulate gradients",
        ),
        (
            ["pretrain", "--config", TINY, "model.init=imagenet", "data.manifest=m.parquet"],
            "model.init=imagenet needs model.weights=PATH",
        ),
    ],
)
def test_errors_are_one_line_for_people(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_imagenet_file_missing_names_it_and_where_to_get_it(tmp_path, capsys):
    weights = tmp_path / "resnet50-11ad3fa6.pth"
    code = cli.main(
        [
            "pretrain",
            "--config",
            TINY,
            "model.init=imagenet",
            f"model.weights={weights}",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert str(weights) in err and "download.pytorch.org/models/resnet50-11ad3fa6.pth" in err


def test_export_subcommand(tmp_path, capsys):
    torch.manual_seed(0)
    state = {
        f"backbone.{k}": v
        for k, v in torchvision.models.resnet50().state_dict().items()
        if not k.startswith("fc.")
    }
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")
    out = tmp_path / "export"
    assert (
        cli.main(
            ["pretrain", "export", "--checkpoint", str(tmp_path / "last.ckpt"), "--out", str(out)]
        )
        == 0
    )
    exported = torch.load(out / "backbone.pth", weights_only=True)
    assert torch.equal(exported["layer3.0.conv2.weight"], state["backbone.layer3.0.conv2.weight"])
    with (out / "backbone_d2.pkl").open("rb") as f:
        assert "res4.0.conv2.weight" in pickle.load(f)["model"]
    assert "backbone.pth" in capsys.readouterr().out
