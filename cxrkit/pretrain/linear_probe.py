"""The linear evaluation protocol: how good is a backbone for chest X-ray findings?

For each label fraction (1 %, 10 %, 100 % of the training images by default) a multi-label head
``nn.Linear(2048, F)`` is trained with a masked binary cross-entropy on the images of
``data.train_split`` - on a **frozen** backbone (``mode=linear``: weights fixed, BatchNorm in
eval mode) or with the backbone trained too (``mode=finetune``, at ``backbone_lr_factor`` of the
head's lr) - and scored on ``data.test_split`` through :func:`cxrkit.eval.classification.evaluate`
(per-finding AUROC, mean AUROC, patient-bootstrap intervals). Run it with ``init=checkpoint``
(a Barlow Twins ``backbone.pth``), ``init=imagenet`` and ``init=random`` to compare them.

Outputs, per fraction ``f``: ``output_dir/fraction_<f>/`` (the run: checkpoints, logs),
``test_predictions.csv`` (image_id, finding, score) and ``evaluation.json``; for all fractions
``output_dir/summary.csv`` with columns fraction, finding, auroc, ci_low, ci_high (finding
``"mean"`` is the mean AUROC over the findings with positives and negatives in the test split).

Images go through ``backbones.InputAdapter`` as in every stage: [0, 1] cache pixels -> RGB,
ImageNet mean/std. Training data are not augmented (the linear protocol).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cxrkit import config as config_io
from cxrkit import engine, io
from cxrkit.data import datasets
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.eval import classification
from cxrkit.eval.predictions import write_predictions
from cxrkit.models import backbones
from cxrkit.models.weights import weights_file
from cxrkit.pretrain.config import LinearEvalConfig

REFERENCE_BATCH = 256
SUMMARY_FILE = "summary.csv"


class LinearProbe(L.LightningModule):
    """A multi-label linear head on a backbone.

    Batches: :class:`cxrkit.data.datasets.ClassificationDataset` samples collated:
    ``image`` FloatTensor[B, 1, H, W] in [0, 1], ``labels`` / ``label_known`` FloatTensor[B, F].

    Args:
        backbone: ImageNet-normalised ``(B, 3, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: its feature width.
        num_findings: F, the head's outputs.
        mode: ``"linear"`` freezes the backbone (and its BatchNorm statistics); ``"finetune"``
            trains it at ``backbone_lr_factor`` x the head's learning rate.
        lr, momentum, weight_decay: SGD, lr per 256 images of global batch, cosine to 0.
        batch_size: images per device per step.
        config: the resolved configuration, stored in checkpoints.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        feature_dim: int,
        num_findings: int,
        mode: str = "linear",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        backbone_lr_factor: float = 0.1,
        batch_size: int = 64,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("linear", "finetune"):
            raise ValueError(f"mode must be 'linear' or 'finetune', got {mode!r}")
        self.save_hyperparameters({"config": config or {}})
        self.mode, self.lr, self.momentum, self.weight_decay = mode, lr, momentum, weight_decay
        self.backbone_lr_factor, self.batch_size = backbone_lr_factor, batch_size
        self.input_adapter = backbones.InputAdapter()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_findings)
        if mode == "linear":
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        if self.mode == "linear":
            self.backbone.eval()  # frozen means frozen BatchNorm statistics too
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Images FloatTensor[B, 1|3, H, W] in [0, 1] -> logits (B, F)."""
        x = self.input_adapter(images)
        with torch.set_grad_enabled(self.mode == "finetune" and torch.is_grad_enabled()):
            features = self.backbone(x)
        return self.head(features)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        known = batch["label_known"]
        bce = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
        # unknown labels (absent from the record) contribute nothing
        losses = {"loss_bce": (bce * known).sum() / known.sum().clamp(min=1)}
        engine.check_finite(losses, step=self.global_step, image_ids=batch["image_id"])
        loss = sum(losses.values())
        self.log("train/loss_bce", losses["loss_bce"], prog_bar=True, batch_size=len(known))
        return loss  # type: ignore[return-value]

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        scale = self.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        lr = self.lr * scale / REFERENCE_BATCH
        groups: list[dict[str, Any]] = [{"name": "head", "params": self.head.parameters()}]
        if self.mode == "finetune":
            groups.append(
                {
                    "name": "backbone",
                    "params": self.backbone.parameters(),
                    "lr": lr * self.backbone_lr_factor,
                }
            )
        optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        total = max(1, int(trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def label_subset(records: Sequence[Record], *, fraction: float, seed: int) -> list[Record]:
    """A seeded random ``fraction`` of ``records`` (at least one), in the original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, math.ceil(fraction * len(records) - 1e-9))
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
    return [records[i] for i in keep]


def backbone_from_config(config: LinearEvalConfig) -> nn.Module:
    """The ResNet-50 to evaluate: ``init`` and ``weights`` (:mod:`cxrkit.models.weights`)."""
    weights = weights_file(init=config.init, weights=config.weights, prefix="")
    return backbones.build_resnet50(weights=weights)


@torch.no_grad()
def predict(module: LinearProbe, loader: DataLoader, *, findings: Sequence[str]) -> pd.DataFrame:
    """Classification predictions ``image_id, finding, score`` (sigmoid) for every image."""
    module.eval()
    rows: list[pd.DataFrame] = []
    for batch in loader:
        scores = torch.sigmoid(module(batch["image"].to(module.device))).float().cpu().numpy()
        ids = np.repeat(np.asarray(batch["image_id"], dtype=object), len(findings))
        rows.append(
            pd.DataFrame(
                {
                    "image_id": ids,
                    "finding": np.tile(findings, len(scores)),
                    "score": scores.reshape(-1),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _summary_rows(fraction: float, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    entries = [(f, e["auroc"]) for f, e in result["per_finding"].items()]
    for finding, auroc in [*entries, ("mean", result["mean"]["auroc"])]:
        ci = auroc.get("ci") or [math.nan, math.nan]
        value = auroc.get("value")
        rows.append(
            {
                "fraction": fraction,
                "finding": finding,
                "auroc": math.nan if value is None else value,
                "ci_low": ci[0],
                "ci_high": ci[1],
            }
        )
    return rows


def linear_eval(config: LinearEvalConfig, *, resume: str | bool = "auto") -> pd.DataFrame:
    """Train and test a head per label fraction; returns (and writes) the summary table.

    Args:
        resume: ``"auto"`` continues each fraction from its own ``fraction_<f>/checkpoints/
            last.ckpt`` when present; ``False`` starts every fraction over.

    Raises:
        ConfigError: ``resume`` is a checkpoint path (each fraction has its own), no training or
            test records, or ``init`` without ``weights``.
    """
    if resume not in ("auto", True, False):
        raise ConfigError(
            f"linear-eval resumes each fraction from its own checkpoint: use --resume auto or "
            f"never, not {resume!r}"
        )
    train_split, test_split = config.data.train_split, config.data.test_split
    run = engine.prepare_run(
        config, resume=False, data=config.data, splits=(train_split, test_split)
    )
    train_records, test_records = run.records[train_split], run.records[test_split]
    for name, split, records in (
        ("training", train_split, train_records),
        ("test", test_split, test_records),
    ):
        if not records:
            raise ConfigError(f"{config.data.manifest}: no {name} records (split {split!r})")
    cache = run.cache
    test_data = datasets.ClassificationDataset(
        records=test_records, cache=cache, findings=config.findings
    )
    findings = test_data.findings
    test_loader = engine.build_loader(
        test_data,
        batch_size=config.data.batch_size,
        num_workers=config.data.num_workers,
        train=False,
    )
    rows: list[dict[str, Any]] = []
    for fraction in config.label_fractions:
        run_dir = run.output_dir / f"fraction_{fraction:g}"
        L.seed_everything(config.trainer.seed, workers=True)
        subset = label_subset(train_records, fraction=fraction, seed=config.trainer.seed)
        train_data = datasets.ClassificationDataset(
            records=subset, cache=cache, findings=config.findings
        )
        loader = engine.build_loader(
            train_data,
            batch_size=min(config.data.batch_size, len(subset)),
            num_workers=config.data.num_workers,
            train=True,
        )
        module = LinearProbe(
            backbone=backbone_from_config(config),
            feature_dim=backbones.FEATURE_DIMS["resnet50"],
            num_findings=len(findings),
            mode=config.mode,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            backbone_lr_factor=config.backbone_lr_factor,
            batch_size=config.data.batch_size,
            config=config_io.to_dict(config),
        )
        trainer = engine.build_trainer(config=config.trainer, output_dir=run_dir)
        engine.fit(
            trainer=trainer,
            module=module,
            train_dataloaders=loader,
            output_dir=run_dir,
            resume=resume,
        )
        if not trainer.is_global_zero:
            continue
        predictions = predict(module, test_loader, findings=findings)
        write_predictions(predictions, run_dir / "test_predictions.csv", kind="classification")
        result = classification.evaluate(
            predictions,
            test_records,
            findings=findings,
            n_bootstrap=config.n_bootstrap,
            seed=config.trainer.seed,
            curves=False,
        )
        io.atomic_write(run_dir / "evaluation.json", json.dumps(result, indent=2, default=float))
        rows.extend(_summary_rows(fraction, result))
    summary = pd.DataFrame(rows, columns=["fraction", "finding", "auroc", "ci_low", "ci_high"])
    if rows:
        io.atomic_write(run.output_dir / SUMMARY_FILE, lambda tmp: summary.to_csv(tmp, index=False))
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a findings x fractions table of AUROC (mean last)."""
    if summary.empty:
        return "(no results on this rank)"
    table = summary.pivot(index="finding", columns="fraction", values="auroc")
    order = [f for f in summary["finding"].drop_duplicates() if f != "mean"] + ["mean"]
    table = table.loc[order]
    table.columns = [f"{c:.0%} labels" for c in table.columns]
    return table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
