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

``protocol=authors`` runs BarlowTwins-CXR's protocol instead
(:mod:`cxrkit.pretrain.authors_protocol`: the official test list split 80/20 by image, stratified
fractions, RandomResizedCrop + flip, lr not scaled, cosine per epoch, the best epoch by mean test
AUROC). It leaks patients between training
and test by design; ``summary.csv`` then has the columns ``protocol``, ``best_epoch``,
``test_images`` and ``test_images_patient_in_train`` (per fraction) beside the AUROCs.
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
from sklearn.metrics import roc_auc_score
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
from cxrkit.pretrain import authors_protocol
from cxrkit.pretrain.config import LinearEvalConfig

REFERENCE_BATCH = 256
SUMMARY_FILE = "summary.csv"
LEAKAGE_NOTE = (
    "protocol=authors (BarlowTwins-CXR): training and test images come from one image-level split "
    "of the official test list, so test images share patients with training, and the epoch is "
    "chosen on the test AUROC; not comparable with patient-disjoint results"
)


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
        scale_lr: multiply ``lr`` by global batch / 256 (False: ``lr`` as given, the authors').
        schedule: cosine annealing per optimiser ``"step"`` or per ``"epoch"`` (the authors').
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
        scale_lr: bool = True,
        schedule: str = "step",
    ) -> None:
        super().__init__()
        if mode not in ("linear", "finetune"):
            raise ValueError(f"mode must be 'linear' or 'finetune', got {mode!r}")
        if schedule not in ("step", "epoch"):
            raise ValueError(f"schedule must be 'step' or 'epoch', got {schedule!r}")
        self.scale_lr, self.schedule = scale_lr, schedule
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
        lr = self.lr * scale / REFERENCE_BATCH if self.scale_lr else self.lr
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
        if self.schedule == "epoch":  # BarlowTwins-CXR evaluate.py: CosineAnnealingLR(epochs)
            total = max(1, int(trainer.max_epochs))
        else:
            total = max(1, int(trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.schedule},
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


def authors_mean_auroc(predictions: pd.DataFrame, labels: pd.DataFrame) -> float:
    """BarlowTwins-CXR ``calculate_auc``: the mean over findings with both classes in the test
    images of sklearn's AUROC; NaN when no finding has both.

    Args:
        predictions: ``image_id, finding, score``.
        labels: index ``image_id``, one 0/1 column per finding.
    """
    scores = predictions.pivot(index="image_id", columns="finding", values="score")
    scores = scores.loc[labels.index, labels.columns]
    values = [
        roc_auc_score(labels[f].to_numpy(), scores[f].to_numpy())
        for f in labels.columns
        if labels[f].nunique() == 2
    ]
    return float(np.mean(values)) if values else math.nan


class BestEpoch(L.Callback):
    """Scores the test images after every training epoch and keeps the best epoch's predictions
    (the authors' selection, on the test set itself). Rank 0 only; the state is checkpointed, so
    a resumed run keeps the best epoch seen before the interruption.

    Args:
        loader: the test images, not shuffled.
        labels: index ``image_id``, a 0/1 column per finding (:func:`authors_mean_auroc`).
    """

    def __init__(self, *, loader: DataLoader, labels: pd.DataFrame) -> None:
        self.loader, self.labels = loader, labels
        self.best_epoch, self.best_auroc = -1, -math.inf
        self.best: pd.DataFrame | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        predictions = predict(pl_module, self.loader, findings=list(self.labels.columns))
        pl_module.train()
        auroc = authors_mean_auroc(predictions, self.labels)
        if self.best is None or auroc > self.best_auroc:
            self.best_epoch, self.best_auroc, self.best = trainer.current_epoch, auroc, predictions
        pl_module.log("test/authors_mean_auroc", auroc, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        best = None if self.best is None else self.best.to_dict(orient="list")
        return {"epoch": self.best_epoch, "auroc": self.best_auroc, "predictions": best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch, self.best_auroc = state_dict["epoch"], state_dict["auroc"]
        best = state_dict["predictions"]
        self.best = None if best is None else pd.DataFrame(best)


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
    authors = config.protocol == "authors"
    train_split, test_split = config.data.train_split, config.data.test_split
    # the authors' protocol reads only the official test list and splits it itself
    splits = (test_split,) if authors else (train_split, test_split)
    run = engine.prepare_run(config, resume=False, data=config.data, splits=splits)
    if authors:
        pool = run.records[test_split]
        if not pool:
            raise ConfigError(f"{config.data.manifest}: no test records (split {test_split!r})")
        train_records, test_records = authors_protocol.split_test_list(
            pool, findings=config.findings, seed=config.trainer.seed
        )
    else:
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
    test_labels = pd.DataFrame(
        authors_protocol.label_matrix(test_records, config.findings),
        index=[r.image_id for r in test_records],
        columns=findings,
    )
    rows: list[dict[str, Any]] = []
    for fraction in config.label_fractions:
        run_dir = run.output_dir / f"fraction_{fraction:g}"
        L.seed_everything(config.trainer.seed, workers=True)
        if authors:
            subset = authors_protocol.stratified_fraction(
                train_records, findings=config.findings, fraction=fraction, seed=config.trainer.seed
            )
        else:
            subset = label_subset(train_records, fraction=fraction, seed=config.trainer.seed)
        train_data = datasets.ClassificationDataset(
            records=subset,
            cache=cache,
            findings=config.findings,
            augment=authors_protocol.train_augment(config.data.preprocess.size)
            if authors
            else None,
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
            scale_lr=not authors,
            schedule="epoch" if authors else "step",
        )
        callbacks: list[L.Callback] = []
        if authors:
            # BarlowTwins-CXR evaluate.py: fc.weight ~ N(0, 0.01), fc.bias = 0
            nn.init.normal_(module.head.weight, mean=0.0, std=0.01)
            nn.init.zeros_(module.head.bias)
            callbacks.append(BestEpoch(loader=test_loader, labels=test_labels))
        trainer = engine.build_trainer(
            config=config.trainer, output_dir=run_dir, callbacks=callbacks
        )
        engine.fit(
            trainer=trainer,
            module=module,
            train_dataloaders=loader,
            output_dir=run_dir,
            resume=resume,
        )
        if not trainer.is_global_zero:
            continue
        best = callbacks[0] if authors else None
        if isinstance(best, BestEpoch) and best.best is not None:
            predictions = best.best
        else:
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
        extra: dict[str, Any] = {}
        if isinstance(best, BestEpoch):
            extra = {
                "protocol": "authors",
                "best_epoch": best.best_epoch,
                "test_images": len(test_records),
                "test_images_patient_in_train": authors_protocol.patients_in_training(
                    test_records, subset
                ),
            }
            result["protocol"] = {**extra, "leakage": LEAKAGE_NOTE}
        io.atomic_write(run_dir / "evaluation.json", json.dumps(result, indent=2, default=float))
        rows.extend({**row, **extra} for row in _summary_rows(fraction, result))
    columns = ["fraction", "finding", "auroc", "ci_low", "ci_high"]
    if authors:
        columns += ["protocol", "best_epoch", "test_images", "test_images_patient_in_train"]
    summary = pd.DataFrame(rows, columns=columns)
    if rows:
        io.atomic_write(run.output_dir / SUMMARY_FILE, lambda tmp: summary.to_csv(tmp, index=False))
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a findings x fractions table of AUROC (mean last); under the authors'
    protocol, one line per fraction beside it with the leaked test images and the best epoch."""
    if summary.empty:
        return "(no results on this rank)"
    table = summary.pivot(index="finding", columns="fraction", values="auroc")
    order = [f for f in summary["finding"].drop_duplicates() if f != "mean"] + ["mean"]
    table = table.loc[order]
    table.columns = [f"{c:.0%} labels" for c in table.columns]
    text = table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
    if "test_images_patient_in_train" not in summary.columns:
        return text
    lines = [text, "", LEAKAGE_NOTE + ":"]
    for fraction, rows in summary.groupby("fraction"):
        first = rows.iloc[0]
        lines.append(
            f"  {fraction:.0%} labels: {first['test_images_patient_in_train']} of "
            f"{first['test_images']} test images have their patient in training; best epoch "
            f"{first['best_epoch']}"
        )
    return "\n".join(lines)
