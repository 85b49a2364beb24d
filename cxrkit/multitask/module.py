"""The LightningModule of the multi-task stage: one training step for every experiment.

Stages (``stage``):

- ``joint``: multi-label training (KCR Model 1 / Model 2, Guendel): classification, plus
  reconstruction, segmentation and location when the config enables them.
- ``hard``: a screening member's first stage: 3-class classification + lesion reconstruction.
- ``weak``: its second stage: the decoder is frozen (weights and BatchNorm statistics) and the
  reconstruction loss is off; with ``screening.weak_trains: classifier`` (thesis §3.3.4 step 3)
  the encoder is frozen the same way and only the FC layer (``model.classifier``) learns.

Losses are a named dict (``loss_cls``, ``loss_rec``, ``loss_seg``, ``loss_loc``), summed once with
the config's weights; every term is logged and a non-finite one stops the run naming the step and
the batch's images.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from cxrkit import engine
from cxrkit.config import to_dict
from cxrkit.data.findings import parse as parse_finding
from cxrkit.multitask import losses as terms
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.dataset import mask_layout
from cxrkit.multitask.model import MultiTaskModel, build_from_config
from cxrkit.multitask.targets import DISEASE, NORMAL, OTHER, lesion_mask, reconstruction_target

STAGES = ("joint", "hard", "weak")


class PlateauStop:
    """The thesis' stop rule: stop once the lr is below ``stop_lr`` and the monitored metric has
    not improved for ``patience`` rounds (§3.3.4: lr < 1e-4 and 50 epochs without improvement).

    ``update(value, lr)`` takes one round's metric (lower is better unless ``mode="max"``; NaN
    counts as no improvement) and the current lr, and returns True when training should stop.
    """

    def __init__(self, *, stop_lr: float, patience: int, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is not 'min' or 'max'")
        self.stop_lr = stop_lr
        self.patience = patience
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = float("inf")
        self.bad_rounds = 0

    def update(self, value: float, lr: float) -> bool:
        v = self.sign * float(value)
        if v == v and v < self.best:
            self.best, self.bad_rounds = v, 0
        else:
            self.bad_rounds += 1
        return self.stop_lr > 0 and lr < self.stop_lr and self.bad_rounds >= self.patience

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad_rounds = float(state["best"]), int(state["bad_rounds"])


class MultiTaskModule(L.LightningModule):
    """Train a :class:`~cxrkit.multitask.model.MultiTaskModel` described by ``config``.

    Args:
        config: the resolved configuration (stored in the checkpoint's hyperparameters).
        disease: the screening member's disease entry (``task=screening`` only).
        stage: ``joint``, ``hard`` or ``weak`` (see the module docstring).
        lr: learning rate; defaults to ``config.optim.lr``.
        monitor: metric the plateau schedule watches (``val/loss`` when there is a validation set).
        load_weights: load the encoder weights file named in the config (off when a checkpoint's
            weights will be loaded over the model anyway).
    """

    def __init__(
        self,
        *,
        config: MultiTaskConfig,
        disease: str | None = None,
        stage: str = "joint",
        lr: float | None = None,
        monitor: str = "val/loss",
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        screening = config.task == "screening"
        if screening and (disease is None or stage == "joint"):
            raise ValueError("a screening member needs a disease and stage 'hard' or 'weak'")
        if not screening and stage != "joint":
            raise ValueError("stages 'hard'/'weak' belong to task=screening")
        self.save_hyperparameters(
            {"config": to_dict(config), "disease": disease, "stage": stage, "lr": lr}
        )
        self.config = config
        self.disease = disease
        self.stage = stage
        self.lr = lr if lr is not None else config.optim.lr
        self.monitor = monitor
        self.screening = screening
        self.layout = mask_layout(config, disease=disease)
        self.findings = [parse_finding(f)[0] for f in config.findings]
        self.num_classes = config.screening.classes if screening else 0
        num_outputs = self.num_classes if screening else len(self.findings)
        self.model: MultiTaskModel = build_from_config(
            config, num_outputs=num_outputs, load_weights=load_weights
        )
        self.reconstruct = config.reconstruction.enabled and stage != "weak"
        self.weights = {
            "loss_cls": 1.0,
            "loss_rec": config.reconstruction.weight,
            "loss_seg": config.segmentation.weight,
            "loss_loc": config.location.weight,
        }
        self.freeze_encoder = stage == "weak" and config.screening.weak_trains == "classifier"
        if stage == "weak":
            self.freeze_decoder()
        if self.freeze_encoder:
            self.freeze_all_but_classifier()
        mode = "max" if "auroc" in monitor.lower() else "min"
        self.plateau_stop = PlateauStop(
            stop_lr=config.optim.stop_lr, patience=config.optim.stop_patience, mode=mode
        )
        self._val: list[dict[str, Tensor]] = []

    # ----------------------------------------------------------------------------------------------
    def freeze_decoder(self) -> None:
        """Stop the decoder's weights (``requires_grad``) and BatchNorm statistics (eval mode)."""
        if self.model.decoder is None:
            return
        for p in self.model.decoder.parameters():
            p.requires_grad_(False)
        self.model.decoder.eval()

    def freeze_all_but_classifier(self) -> None:
        """Freeze every parameter but the classifier's, and keep the frozen parts in eval mode
        (their BatchNorm statistics stay fixed too): the thesis' weak stage trains the FC only."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
        self._frozen_eval()

    def _frozen_eval(self) -> None:
        for name, child in self.model.named_children():
            frozen_decoder = name == "decoder" and self.stage == "weak"
            if frozen_decoder or (self.freeze_encoder and name != "classifier"):
                child.eval()

    def train(self, mode: bool = True) -> MultiTaskModule:
        super().train(mode)
        if self.stage == "weak":
            self._frozen_eval()  # keep the frozen parts' BatchNorm statistics fixed
        return self

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return self.model(image, reconstruct=self.reconstruct)

    # ----------------------------------------------------------------------------------------------
    def compute_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """The named loss terms of one batch (unweighted)."""
        losses: dict[str, Tensor] = {}
        if self.screening:
            target = batch["target3"]
            if self.num_classes == 2:  # normal / target: another disease is "not the target"
                target = torch.where(target == OTHER, torch.full_like(target, NORMAL), target)
            losses["loss_cls"] = terms.three_class_loss(out["logits"], target)
        else:
            losses["loss_cls"] = terms.classification_loss(
                out["logits"], batch["labels"], batch["label_known"]
            )
        if "reconstruction" in out:
            target, weight = self._reconstruction_target(batch)
            losses["loss_rec"] = terms.reconstruction_loss(out["reconstruction"], target, weight)
        if "segmentation" in out:
            organs = self.layout.organs
            losses["loss_seg"] = terms.segmentation_loss(
                out["segmentation"], batch["masks"][:, organs], batch["mask_known"][:, organs]
            )
        if "location" in out:
            losses["loss_loc"] = terms.location_loss(
                out["location"], batch["regions"], batch["regions_known"]
            )
        return losses

    def _reconstruction_target(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        rec = self.config.reconstruction
        image = batch["image"]
        if rec.target == "image":
            return reconstruction_target(image, mode="image")
        mask, known = lesion_mask(batch["masks"], batch["mask_known"], channels=self.layout.lesions)
        if rec.empty_when_negative:
            # an image known to lack every lesion has a known, empty lesion mask
            if self.screening:
                absent = (batch["target3"] == NORMAL) | (batch["target3"] == OTHER)
            else:
                negative = (batch["label_known"] > 0) & (batch["labels"] == 0)
                absent = negative.all(dim=1)
            known = torch.maximum(known, absent.to(known.dtype))
        return reconstruction_target(
            image,
            mode="lesion",
            lesion=mask,
            lesion_known=known,
            dilation=rec.kernel(self.config.data.preprocess.size),
        )

    def _step(self, batch: dict[str, Any], prefix: str) -> tuple[Tensor, dict[str, Tensor], dict]:
        out = self(batch["image"])
        losses = self.compute_losses(out, batch)
        engine.check_finite(losses, step=int(self.global_step), image_ids=batch["image_id"])
        loss = terms.total(losses, self.weights)
        size = int(batch["image"].shape[0])
        on_step = prefix == "train"
        self.log(
            f"{prefix}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=size,
            sync_dist=not on_step,
        )
        for name, value in losses.items():
            self.log(
                f"{prefix}/{name}",
                value,
                on_step=on_step,
                on_epoch=True,
                batch_size=size,
                sync_dist=not on_step,
            )
        return loss, losses, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch, "train")
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, _, out = self._step(batch, "val")
        logits = out["logits"].detach().float()
        if self.screening:
            self._val.append({"scores": logits.softmax(dim=1), "target3": batch["target3"]})
        else:
            self._val.append(
                {
                    "scores": logits.sigmoid(),
                    "labels": batch["labels"],
                    "known": batch["label_known"],
                }
            )

    def on_validation_epoch_end(self) -> None:
        from cxrkit.eval import classification

        if not self._val:
            return
        merged = {k: torch.cat([v[k] for v in self._val]) for k in self._val[0]}
        self._val.clear()
        if self.trainer.world_size > 1:
            merged = {k: self.all_gather(v).flatten(0, 1) for k, v in merged.items()}
        # NaN where one class is absent from the validation images
        if self.screening:
            t = merged["target3"].cpu().numpy()
            p = merged["scores"].cpu().numpy()
            keep = t >= 0
            disease = classification.auroc(y_true=t[keep] == DISEASE, y_score=p[keep, DISEASE])
            abnormal = classification.auroc(y_true=t[keep] != NORMAL, y_score=1 - p[keep, NORMAL])
            self.log("val/auroc_disease", disease, sync_dist=False)
            self.log("val/auroc_abnormal", abnormal, sync_dist=False)
            return
        labels = merged["labels"].cpu().numpy()
        known = merged["known"].cpu().numpy() > 0
        scores = merged["scores"].cpu().numpy()
        aurocs = [
            classification.auroc(y_true=labels[known[:, j], j], y_score=scores[known[:, j], j])
            for j in range(labels.shape[1])
        ]
        valid = [a for a in aurocs if a == a]
        self.log("val/mAUROC", sum(valid) / len(valid) if valid else float("nan"), sync_dist=False)

    def on_train_epoch_end(self) -> None:
        # after this epoch's validation: the thesis' stop rule (off unless optim.stop_lr > 0)
        value = self.trainer.callback_metrics.get(self.monitor)
        if value is None or not self.trainer.optimizers:
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.plateau_stop.update(float(value), lr):
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["plateau_stop"] = self.plateau_stop.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "plateau_stop" in checkpoint:
            self.plateau_stop.load_state_dict(checkpoint["plateau_stop"])

    # ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.config.optim
        params = [p for p in self.parameters() if p.requires_grad]
        betas = (opt.beta1, 0.999)
        if opt.name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=self.lr, betas=betas, weight_decay=opt.weight_decay
            )
        elif opt.name == "adamw":
            optimizer = torch.optim.AdamW(
                params, lr=self.lr, betas=betas, weight_decay=opt.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
            )
        mode = "max" if "auroc" in self.monitor.lower() else "min"
        # thesis: the learning rate is halved when the monitored metric stops improving
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=opt.plateau_factor,
            patience=opt.plateau_patience,
            min_lr=opt.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.monitor,
                "interval": "epoch",
                "strict": False,
            },
        }
