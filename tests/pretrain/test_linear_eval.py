"""The linear evaluation protocol: frozen means frozen, label fractions, AUROC table, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit import cli
from cxrkit.data.records import Record, write_manifest
from cxrkit.errors import ConfigError
from cxrkit.pretrain import authors_protocol
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


# --- protocol=authors (BarlowTwins-CXR evaluate.py / dataset.py) ---------------------------------


def _records(n: int, *, positives: dict[str, int], images_per_patient: int = 1) -> list[Record]:
    """``n`` records; the first ``positives[f]`` (cycled with a stride) are positive for ``f``."""
    out = []
    for i in range(n):
        labels = {f: int((i * 7 + k) % n < count) for k, (f, count) in enumerate(positives.items())}
        out.append(
            Record(
                image_id=f"i{i:03d}",
                source="t",
                path=f"i{i}.png",
                patient_id=f"p{i // images_per_patient}",
                width=8,
                height=8,
                labels=labels,
            )
        )
    return out


def test_authors_split_is_80_20_by_image_and_stratified():
    records = _records(100, positives={"A": 20, "B": 50}, images_per_patient=4)
    train, test = authors_protocol.split_test_list(records, findings=["A", "B"], seed=0)
    assert len(train) == 80 and len(test) == 20
    assert {r.image_id for r in train}.isdisjoint(r.image_id for r in test)
    assert sorted(r.image_id for r in train + test) == [r.image_id for r in records]
    # iterative stratification keeps each label's prevalence: 20 % of 20 and 50 % of 50 positives
    assert sum(r.labels["A"] for r in test) == 4 and sum(r.labels["B"] for r in test) == 10
    again = authors_protocol.split_test_list(records, findings=["A", "B"], seed=0)
    assert [r.image_id for r in again[1]] == [r.image_id for r in test]
    # an image-level split of 4-image patients leaks: count by hand
    train_patients = {r.patient_id for r in train}
    leaked = sum(r.patient_id in train_patients for r in test)
    assert authors_protocol.patients_in_training(test, train) == leaked > 0
    ten = authors_protocol.stratified_fraction(train, findings=["A", "B"], fraction=0.1, seed=0)
    assert len(ten) == 8 and sum(r.labels["B"] for r in ten) == 4  # 40 of 80 positive -> 4 of 8
    assert (
        authors_protocol.stratified_fraction(train, findings=["A"], fraction=1.0, seed=0) == train
    )
    with pytest.raises(ConfigError, match=">= 5 images"):
        authors_protocol.split_test_list(records[:4], findings=["A"], seed=0)


def test_authors_mean_auroc_by_hand():
    predictions = pd.DataFrame(
        {
            "image_id": list("abcd") * 2,
            "finding": ["A"] * 4 + ["B"] * 4,
            "score": [0.5, 0.5, 0.2, 8.3, 0.1, 0.2, 0.3, 0.4],
        }
    )
    labels = pd.DataFrame({"A": [0, 1, 0, 1], "B": [0, 0, 0, 0]}, index=list("abcd"))
    # A: AUROC 0.875 (MONAI's hand case); B has one class only and is left out, as the authors do
    assert linear_eval.authors_mean_auroc(predictions, labels) == pytest.approx(0.875)


def test_authors_optimizer_is_not_scaled_and_anneals_per_epoch():
    probe = linear_eval.LinearProbe(
        backbone=nn.Flatten(),
        feature_dim=4,
        num_findings=2,
        lr=0.5,
        batch_size=64,
        scale_lr=False,
        schedule="epoch",
    )

    class _Trainer:
        world_size, accumulate_grad_batches, estimated_stepping_batches, max_epochs = 1, 1, 900, 30

    probe.trainer = _Trainer()  # type: ignore[assignment]
    config = probe.configure_optimizers()
    assert config["optimizer"].param_groups[0]["lr"] == 0.5  # not 0.5 x 64 / 256
    scheduler = config["lr_scheduler"]
    assert scheduler["interval"] == "epoch" and scheduler["scheduler"].T_max == 30


def test_cli_authors_protocol_reports_leakage_and_the_best_epoch(phantoms, tmp_path, capsys):
    # all 32 phantoms as the "official test list" (the cache is keyed by image id, so it serves)
    pool = [dataclasses.replace(r, split="test") for r in phantoms.records]
    manifest = write_manifest(pool, tmp_path / "test_only.parquet")
    out = tmp_path / "authors"
    code = cli.main(
        [
            "pretrain",
            "linear-eval",
            "--config",
            str(TINY),
            "protocol=authors",
            "lr=0.5",
            "trainer.max_steps=-1",
            "trainer.max_epochs=3",
            f"data.manifest={manifest}",
            f"data.cache={phantoms.cache}",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    findings = list(linear_eval.LinearEvalConfig().findings)
    train, test = authors_protocol.split_test_list(pool, findings=findings, seed=0)
    assert set(summary["protocol"]) == {"authors"}
    # iterative stratification sizes the parts approximately (as the authors' skmultilearn does)
    assert set(summary["test_images"]) == {len(test)} and 4 <= len(test) <= 8
    for fraction, rows in summary.groupby("fraction"):
        subset = authors_protocol.stratified_fraction(
            train, findings=findings, fraction=fraction, seed=0
        )
        leaked = authors_protocol.patients_in_training(test, subset)
        assert set(rows["test_images_patient_in_train"]) == {leaked}
        run_dir = out / f"fraction_{fraction:g}"
        predictions = pd.read_csv(run_dir / "test_predictions.csv")
        assert sorted(predictions["image_id"].unique()) == sorted(r.image_id for r in test)
        # the predictions kept are those of the best epoch of the three scored
        logged = [
            json.loads(line)
            for line in (run_dir / "metrics.json").read_text().splitlines()
            if "test/authors_mean_auroc" in line
        ]
        values = [row["test/authors_mean_auroc"] for row in logged]
        assert len(values) == 3
        best_epoch = rows["best_epoch"].iloc[0]
        labels = pd.DataFrame(
            authors_protocol.label_matrix(test, findings),
            index=[r.image_id for r in test],
            columns=findings,
        )
        kept = linear_eval.authors_mean_auroc(predictions, labels)
        assert not np.isnan(kept)  # some finding has both classes among the test images
        assert kept == pytest.approx(max(values), abs=1e-6)
        assert values[best_epoch] == pytest.approx(max(values), abs=1e-6)
    text = capsys.readouterr().out
    assert "have their patient in training" in text and "best epoch" in text


def test_authors_config_file_holds_their_values():
    import cxrkit

    path = TINY.with_name("linear_eval_nih_authors.yaml")
    config = cxrkit.load_config(linear_eval.LinearEvalConfig, path)
    # BarlowTwins-CXR evaluate.py defaults
    assert config.protocol == "authors" and config.mode == "linear"
    assert (config.lr, config.momentum, config.weight_decay) == (0.5, 0.9, 1e-6)
    assert config.data.batch_size == 64 and config.trainer.max_epochs == 30
    assert config.label_fractions == [0.01, 0.1, 1.0]
    assert sorted(config.findings) == sorted(linear_eval.LinearEvalConfig().findings)
    assert linear_eval.LinearEvalConfig().protocol == "cxrkit"  # the leakage-free default
    with pytest.raises(ValueError, match="protocol must be one of"):
        linear_eval.LinearEvalConfig(protocol="paper")


def test_best_epoch_state_survives_a_weights_only_checkpoint(tmp_path):
    # a resumed authors' run keeps the best epoch seen before it was interrupted
    best = linear_eval.BestEpoch(loader=None, labels=pd.DataFrame())  # type: ignore[arg-type]
    best.best_epoch, best.best_auroc = 4, 0.71
    best.best = pd.DataFrame(
        {
            "image_id": np.asarray(["a", "b"], dtype=object),
            "finding": ["A", "A"],
            "score": np.asarray([0.25, 0.5], dtype=np.float32),  # as predict() makes them
        }
    )
    torch.save(best.state_dict(), tmp_path / "state.pt")
    restored = linear_eval.BestEpoch(loader=None, labels=pd.DataFrame())  # type: ignore[arg-type]
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (restored.best_epoch, restored.best_auroc) == (4, 0.71)
    pd.testing.assert_frame_equal(restored.best, best.best, check_dtype=False)
