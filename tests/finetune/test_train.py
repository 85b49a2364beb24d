"""Training on the toy data: the loss goes down, and the whole `cxrkit finetune` run works."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cxrkit import cli
from cxrkit.config import load
from cxrkit.data import datasets
from cxrkit.data.cache import Cache
from cxrkit.errors import ConfigError
from cxrkit.eval.predictions import read_predictions
from cxrkit.finetune import load as load_detector
from cxrkit.finetune.config import FinetuneConfig
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.model import build_detector, from_config

from .toy_vindr import HEIGHT, WIDTH, ToyData, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "finetune" / "tiny_faster_rcnn.yaml"
PAPER = REPO / "configs" / "finetune" / "faster_rcnn_vindr.yaml"
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def test_paper_yaml_states_the_dataclass_defaults() -> None:
    paper = load(FinetuneConfig, files=[PAPER])
    defaults = FinetuneConfig()
    assert paper.model == defaults.model and paper.optim == defaults.optim
    assert paper.fusion == defaults.fusion and paper.classes == defaults.classes
    assert (defaults.optim.lr, defaults.optim.momentum, defaults.optim.weight_decay) == (
        0.005,
        0.9,
        1e-4,
    )
    assert defaults.optim.warmup_steps == 500 and defaults.trainer.max_epochs == 50
    assert defaults.data.batch_size == 32 and defaults.data.preprocess.size == 224
    assert defaults.fusion.method == "wbf"


def test_a_few_steps_at_128_px_lower_the_loss(toy: ToyData) -> None:
    config = load(FinetuneConfig, files=[TINY], overrides=tiny_overrides(toy, Path("unused")))
    records = detection_records(
        [r for r in toy.records if r.split == "train"], config=config, train=True
    )
    dataset = datasets.DetectionDataset(
        records=records, cache=Cache(toy.cache), classes=config.classes
    )
    batch = datasets.collate([dataset[i] for i in range(4)])  # 3 with lesions, 1 "No finding"
    assert batch["image"].shape == (4, 1, 128, 128)
    torch.manual_seed(0)
    model = build_detector(**from_config(config)).train()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    targets = [
        {"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
    ]
    totals = []
    for _ in range(4):
        losses = model(list(batch["image"]), targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.7 * totals[0], totals


def test_finetune_cli_trains_predicts_and_draws_cams(
    toy: ToyData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [
        "finetune",
        "--config",
        str(TINY),
        "--resume",
        "never",
        *tiny_overrides(toy, out),
        "model.score_thresh=0.0",
        "fusion.method=nms",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",  # validate (and keep best.ckpt) inside the one epoch
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "detector.pt" in printed and "best val/mAP50" in printed

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["fusion"]["method"] == "nms"  # the fusion choice is part of the run's record
    assert saved["model"]["trainable_layers"] == 5 and saved["model"]["frozen_bn"] is False
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = {key for row in rows for key in row}
    assert {f"train/{name}" for name in LOSSES} <= logged
    assert {"val/mAP50", "val/voc_mAP40", "val/kaggle_mAP40"} <= logged
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    detector = load_detector(out / "detector.pt")
    model, config = detector.model, detector.config
    assert config.classes == ["Nodule/Mass"] and not model.training
    ckpt_model = load_detector(out / "checkpoints" / "best.ckpt").model
    for (name, a), (_, b) in zip(
        model.state_dict().items(), ckpt_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # detector.pt holds the best checkpoint's weights

    val, _ = read_predictions(out / "predictions_val.csv", kind="detection")
    assert set(val["image_id"]) <= {r.image_id for r in toy.records if r.split == "val"}

    preds, sub = tmp_path / "test.csv", tmp_path / "submission.csv"
    assert (
        cli.main(
            [
                "finetune",
                "predict",
                "--model",
                str(out / "detector.pt"),
                "--split",
                "test",
                "--out",
                str(preds),
                "--submission",
                str(sub),
                "--no-progress",
            ]
        )
        == 0
    )
    frame, _ = read_predictions(preds, kind="detection")
    assert frame["x2"].max() <= WIDTH and frame["y2"].max() <= HEIGHT
    submission = pd.read_csv(sub)
    assert list(submission.columns) == ["image_id", "PredictionString"]
    assert sorted(submission["image_id"]) == ["toy12", "toy13"]
    assert all(s.split()[0] == "0" for s in submission["PredictionString"])  # one class: id 0

    cams = tmp_path / "cams"
    assert (
        cli.main(
            [
                "finetune",
                "cam",
                "--model",
                str(out / "detector.pt"),
                "--split",
                "test",
                "--limit",
                "1",
                "--out",
                str(cams),
                "--method",
                "eigencam",  # Ablation-CAM runs in tests/test_demo.py
                "--score-thresh",
                "0.0",
                "--top-k",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    index = pd.read_csv(cams / "cams.csv")
    assert len(index) == 1 and (cams / index["file"][0]).is_file()


def test_options_after_overrides_and_missing_config_are_clear_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["finetune", "data.batch_size=2", "--config", str(TINY)]) == 1
    assert "put options" in capsys.readouterr().err
    assert cli.main(["finetune", "data.batch_size=2"]) == 1
    assert "--config" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load(FinetuneConfig, files=[TINY], overrides=["fusion.method=average"])


def test_old_backbone_weights_key_fails_naming_the_new_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.init=checkpoint.*model.weights=PATH"):
        load(FinetuneConfig, files=[TINY], overrides=["model.backbone_weights=backbone.pth"])
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  backbone_weights: null\n")
    with pytest.raises(ConfigError, match=f"{old}: key 'model.backbone_weights' was replaced"):
        load(FinetuneConfig, files=[TINY, old])


def test_weights_without_a_file_is_a_config_error() -> None:
    config = load(FinetuneConfig, files=[TINY], overrides=["model.init=imagenet"])
    with pytest.raises(ConfigError, match="model.init=imagenet needs model.weights=PATH"):
        from_config(config)
