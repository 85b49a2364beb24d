"""The detector's LightningModule: SGD with warm-up and cosine, four named losses, COCO mAP@0.5.

Training: torchvision's Faster R-CNN returns ``loss_classifier``, ``loss_box_reg`` (ROI heads),
``loss_objectness`` and ``loss_rpn_box_reg`` (RPN); they are checked for NaN, logged one by one
(``train/<name>``) and summed once. Validation: detections are mapped to original pixels, gathered
from every rank and scored with :func:`cxrkit.eval.detection.evaluate` against the fused validation
boxes; ``val/mAP50`` (COCO AP@0.5, the checkpoint monitor) and ``val/voc_mAP40`` (the VinBigData
Kaggle metric) are logged, with ``val/AP50/<class>`` per class. With a TensorBoard logger, the
first ``log_images`` validation images of global rank 0 are logged as ``val/overlay/<k>``: the cache
image with its ground-truth boxes (magenta) and the detector's best boxes (white, class and score).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightly.utils.scheduler import CosineWarmupScheduler
from lightning.pytorch.loggers import TensorBoardLogger

from cxrkit import engine
from cxrkit.data.cache import Cache
from cxrkit.data.records import Record
from cxrkit.finetune.config import OptimConfig
from cxrkit.finetune.detections import detections_to_frame, empty_frame

MONITOR = "val/mAP50"
RNG_KEY = "cxrkit_torch_rng_state"  # the CPU generator, saved with every checkpoint
OVERLAY_BOXES = 5  # predicted boxes drawn per TensorBoard overlay, best first (cxrkit's choice)


class DetectorModule(L.LightningModule):
    """Faster R-CNN training and validation.

    Args:
        model: the detector (:func:`cxrkit.finetune.model.build_detector`); the module's
            ``model.`` state-dict prefix is what :func:`cxrkit.finetune.load` reads from a
            checkpoint.
        classes: the class table; label ``i`` is ``classes[i - 1]``.
        optim: SGD and schedule settings.
        config: the run's resolved configuration as a plain dict, saved in every checkpoint
            (``hyper_parameters.config``).
        val_records: the fused validation records (original pixels), the mAP ground truth.
        cache: the cache the validation images come from (their geometry maps boxes back).
        log_images: validation images drawn with their boxes into TensorBoard per validation
            (0: none).

    Batches (from :class:`cxrkit.data.datasets.DetectionDataset` + ``collate``): ``image``
    FloatTensor[B, 1, H, W] in [0, 1]; ``boxes`` list of FloatTensor[N_i, 4] cache pixels;
    ``labels`` list of Int64Tensor[N_i]; ``image_id`` list of str.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        classes: Sequence[str],
        optim: OptimConfig,
        config: dict[str, Any],
        val_records: Sequence[Record] = (),
        cache: Cache | None = None,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        if log_images < 0:
            raise ValueError(f"log_images must be >= 0, got {log_images}")
        self.classes, self.optim = list(classes), optim
        self.save_hyperparameters({"config": config})
        self.model = model
        self.val_records = list(val_records)
        self.cache = cache
        self._val_frames: dict[str, pd.DataFrame] = {}
        self.log_images = log_images
        self._overlays: list[np.ndarray] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = list(batch["image"])
        targets = [
            {"boxes": boxes, "labels": labels}
            for boxes, labels in zip(batch["boxes"], batch["labels"], strict=True)
        ]
        losses = self.model(images, targets)
        engine.check_finite(losses, step=self.global_step, image_ids=batch["image_id"])
        loss = sum(losses.values())
        n = len(images)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=False)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.cache is None:
            return
        outputs = self.model(list(batch["image"]))
        ids = batch["image_id"]
        frame = detections_to_frame(
            outputs,
            image_ids=ids,
            geometries=[self.cache.geometry(i) for i in ids],
            classes=self.classes,
        )
        # keyed by image: DistributedSampler pads with repeated images, counted once here
        for image_id in ids:
            self._val_frames[image_id] = frame[frame["image_id"] == image_id]
        if len(self._overlays) < self.log_images and self._tensorboard() is not None:
            for k, output in enumerate(outputs[: self.log_images - len(self._overlays)]):
                self._overlays.append(
                    overlay(
                        batch["image"][k],
                        output,
                        gt_boxes=batch["boxes"][k],
                        gt_labels=batch["labels"][k],
                        classes=self.classes,
                    )
                )

    def _tensorboard(self) -> Any:
        """The TensorBoard ``SummaryWriter`` on global rank 0 outside the sanity check, else
        None."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or trainer.sanity_checking:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log_overlays(self) -> None:
        writer, images = self._tensorboard(), self._overlays
        self._overlays = []
        if writer is None:
            return
        for k, image in enumerate(images):
            writer.add_image(
                f"val/overlay/{k}", image, global_step=self.global_step, dataformats="HWC"
            )

    def on_validation_epoch_end(self) -> None:
        self._log_overlays()
        if self.cache is None or not self.val_records:
            return
        from cxrkit.eval import detection

        frames = self._val_frames
        self._val_frames = {}
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, frames)
            frames = {k: v for part in gathered for k, v in part.items()}
        parts = [f for f in frames.values() if len(f)]
        predictions = pd.concat(parts, ignore_index=True) if parts else empty_frame()
        result = detection.evaluate(
            predictions,
            [r for r in self.val_records if r.image_id in frames],
            classes=self.classes,
            iou_thresholds=(0.5,),
            gt_reader="all",  # the records are fused already
            curves=False,
        )
        mean = result["mean"]
        # identical on every rank (same gathered predictions), so no further reduction
        self.log(MONITOR, _value(mean["map50"]), prog_bar=True, sync_dist=False)
        self.log("val/voc_mAP40", _value(mean["voc_map"]), sync_dist=False)
        kaggle = _value(result["kaggle"]["map"])  # NaN when there is no class with a box
        if not math.isnan(kaggle):
            self.log("val/kaggle_mAP40", kaggle, sync_dist=False)
        for name, entry in result["per_class"].items():
            ap = _value(entry["ap50"])
            if not math.isnan(ap):
                self.log(f"val/AP50/{name}", ap, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RPN and ROI heads sample anchors and proposals with torch's global RNG, and the
        # next epoch's shuffle draws from it too; Lightning does not keep it, so a resumed run
        # would train on other samples than an uninterrupted one.
        checkpoint[RNG_KEY] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            torch.set_rng_state(checkpoint[RNG_KEY])

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)
        # BarlowTwins-CXR: 500 warm-up iterations from lr x 0.001, then cosine to min_lr (authors'
        # mmdetection config); lightly's scheduler takes both ends as multipliers of lr
        scheduler = CosineWarmupScheduler(
            optimizer,
            warmup_epochs=min(o.warmup_steps, total),
            max_epochs=total,
            start_value=1.0,
            end_value=o.min_lr / o.lr,
            warmup_start_value=o.warmup_factor,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def overlay(
    image: torch.Tensor,
    output: dict[str, torch.Tensor],
    *,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    classes: Sequence[str],
    n_boxes: int = OVERLAY_BOXES,
) -> np.ndarray:
    """One validation image with its boxes, for TensorBoard.

    Args:
        image: FloatTensor[1, H, W] in [0, 1], cache pixels.
        output: the detector's ``boxes`` / ``labels`` / ``scores`` for it (cache pixels, best
            first); the ``n_boxes`` best are drawn white with class and score.
        gt_boxes, gt_labels: FloatTensor[N, 4] (cache pixels), Int64Tensor[N] (1..len(classes));
            drawn magenta. N may be 0.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    from cxrkit.finetune.cam import LEGEND, draw_boxes

    grey = (image[0].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    bgr = np.repeat(grey[..., None], 3, axis=2)
    predicted = [
        (box, f"{classes[int(label) - 1]} {float(score):.2f}")
        for box, label, score in zip(
            output["boxes"][:n_boxes].detach().cpu().tolist(),
            output["labels"][:n_boxes].tolist(),
            output["scores"][:n_boxes].tolist(),
            strict=True,
        )
    ]
    truth = [
        (box, classes[int(label) - 1])
        for box, label in zip(gt_boxes.detach().cpu().tolist(), gt_labels.tolist(), strict=True)
    ]
    draw_boxes(bgr, predicted=predicted, ground_truth=truth, legend=LEGEND)
    return np.ascontiguousarray(bgr[..., ::-1])


def _value(metric: Any) -> float:
    value = metric["value"] if isinstance(metric, dict) else metric
    return math.nan if value is None else float(value)
