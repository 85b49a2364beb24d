"""The linear evaluation protocol: frozen means frozen, label fractions, AUROC table, CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit import cli
from cxrkit.errors import ConfigError
from cxrkit.pretrain import linear_probe as linear_eval

TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny_linear_eval.yaml"


def _probe(mode: str) -> linear_eval.LinearProbe:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return linear_eval.LinearProbe(
        backbone=backbone, feature_dim=4, num_findings=3, mode=mode, lr=25.6, batch_size=8
    )


def _train_one_step(probe: linear_eval.LinearProbe) -> None:
    class _Trainer:
        world_size, accumulate_grad_batches, estimated_stepping_batches = 1, 1, 10

    probe.trainer = _Trainer()  # type: ignore[assignment]
    optimizer = probe.configure_optimizers()["optimizer"]
    probe.trainer = None  # training_step outside a Trainer: self.log only warns
    probe.train()
    batch = {
        "image": torch.rand(8, 1, 16, 16),
        "image_id": [str(i) for i in range(8)],
        "labels": torch.randint(0, 2, (8, 3)).float(),
        "label_known": torch.ones(8, 3),
    }
    probe.training_step(batch, 0).backward()
    optimizer.step()


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_linear_mode_freezes_weights_and_batchnorm_statistics(mode):
    probe = _probe(mode)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    head = probe.head.weight.clone()
    _train_one_step(probe)
    changed = [k for k, v in probe.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert not torch.equal(probe.head.weight, head)
    if mode == "linear":
        assert changed == [] and not probe.backbone.training
    else:
        assert "0.weight" in changed and "1.running_mean" in changed


def test_unknown_labels_do_not_count():
    probe = _probe("linear")
    batch = {
        "image": torch.rand(4, 1, 16, 16),
        "image_id": list("abcd"),
        "labels": torch.zeros(4, 3),
        "label_known": torch.zeros(4, 3),
    }
    assert probe.training_step(batch, 0).item() == 0.0


def test_label_subset():
    records = list(range(200))
    ten = linear_eval.label_subset(records, fraction=0.1, seed=0)
    assert len(ten) == 20 and ten == sorted(ten)
    assert ten == linear_eval.label_subset(records, fraction=0.1, seed=0)
    assert ten != linear_eval.label_subset(records, fraction=0.1, seed=1)
    assert len(linear_eval.label_subset(records, fraction=0.001, seed=0)) == 1
    assert linear_eval.label_subset(records, fraction=1.0, seed=0) == records


def test_cli_runs_the_protocol_and_writes_the_table(phantoms, tmp_path, monkeypatch, capsys):
    out = tmp_path / "le"
    code = cli.main(
        [
            "pretrain",
            "linear-eval",
            "--config",
            str(TINY),
            f"data.manifest={phantoms.manifest}",
            f"data.cache={phantoms.cache}",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["fraction"].unique()) == [0.5, 1.0]
    for fraction, rows in summary.groupby("fraction"):
        per_finding = rows[rows["finding"] != "mean"]
        assert len(per_finding) == 15  # NIH: 14 findings + No Finding
        mean = rows.loc[rows["finding"] == "mean", "auroc"].item()
        assert mean == pytest.approx(per_finding["auroc"].dropna().mean())
        predictions = pd.read_csv(out / f"fraction_{fraction:g}" / "test_predictions.csv")
        assert len(predictions) == 8 * 15  # every test image x finding
        assert (out / f"fraction_{fraction:g}" / "evaluation.json").is_file()
    assert "mean" in capsys.readouterr().out


def test_missing_weights_is_explained(phantoms, tmp_path, monkeypatch, capsys):
    code = cli.main(
        [
            "pretrain",
            "linear-eval",
            "--config",
            str(TINY),
            "init=checkpoint",
            f"data.manifest={phantoms.manifest}",
            f"data.cache={phantoms.cache}",
            f"output_dir={tmp_path}",
        ]
    )
    assert code == 1
    assert "init=checkpoint needs weights=PATH" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        linear_eval.backbone_from_config(linear_eval.LinearEvalConfig(init="imagenet"))
