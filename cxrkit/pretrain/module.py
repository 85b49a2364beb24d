"""Barlow Twins on chest X-rays from lightly's parts (Zbontar et al. 2021; BarlowTwins-CXR).

The whole method, for a batch of two views ``x_a, x_b`` (FloatTensor[B, C, S, S] in [0, 1])::

    z_a = projection_head(backbone(input_adapter(x_a)))     # (B, 8192)
    z_b = projection_head(backbone(input_adapter(x_b)))
    loss = BarlowTwinsLoss(z_a, z_b)  # normalise along the batch, cross-correlate, push C to I

The backbone is torchvision's ResNet-50 without ``fc`` (:mod:`cxrkit.models.backbones`), exported
after training as ``backbone.pth`` (:mod:`cxrkit.pretrain.handoff`). Optimiser: LARS with
lightly's update but no host syncs (:mod:`cxrkit.pretrain.lars`), lr 0.2 (weights) / 0.0048
(biases and norm parameters, no weight decay, no LARS adaptation) times global batch / 256, linear
warm-up then cosine (lightly's ``CosineWarmupScheduler``).

No gradient accumulation: the loss of a batch is a function of the whole batch (its
cross-correlation matrix), so k accumulated micro-batches of b images optimise the mean of k
b-image losses, not the loss of one k x b batch. The global batch is per-device batch x devices.

Under DDP the loss uses ``gather_distributed=True``: each rank's cross-correlation matrix is
averaged over ranks with an autograd-aware all-reduce (lightly >= 1.6 fixed the 1/world_size
gradient of issue #1977; tests/pretrain/test_ddp.py checks it). Note: lightly normalises the
embeddings per device before that average, while the original code normalised over the global
batch (SyncBatchNorm); the two agree as the per-device batch grows (96 per GPU for 768 on 8).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import Tensor, nn

from cxrkit import engine
from cxrkit.errors import ConfigError
from cxrkit.models import backbones
from cxrkit.pretrain.config import OptimConfig, check_no_accumulation
from cxrkit.pretrain.lars import LARS

REFERENCE_BATCH = 256  # learning rates are given per 256 images of global batch


def build_projection_head(*, input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    """The Barlow Twins projector from lightly's blocks: Linear-BN-ReLU, Linear-BN-ReLU, Linear.

    ``(B, input_dim) -> (B, output_dim)``. Barlow Twins' projector has no bias in any layer (the
    BatchNorm layers make the first two moot); lightly's ``BarlowTwinsProjectionHead`` gives its
    last Linear one. The loss normalises along the batch, so a bias there is subtracted away: it
    only adds parameters that never learn. A block's fifth entry says ``bias=False``.
    """
    return ProjectionHead(
        [
            (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
            (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
            (hidden_dim, output_dim, None, None, False),
        ]
    )


class BarlowTwins(L.LightningModule):
    """The pretraining LightningModule.

    Batches: ``{"image_id": list[str], "image": [x_a, x_b]}``, views FloatTensor[B, C, S, S] in
    [0, 1] with C = 1 or 3 (see :mod:`cxrkit.pretrain.data`).

    Args:
        backbone: maps ImageNet-normalised ``(B, 3, H, W)`` to ``(B, feature_dim)``: a
            torchvision ResNet-50 without ``fc`` (:func:`from_config`) or a small module in tests.
        feature_dim: the width of ``backbone``'s features.
        projector_hidden_dim, projector_output_dim: the projector's widths (paper: 8192, 8192).
        lambda_param: the weight of the redundancy-reduction term (paper: 0.0051).
        optim: LARS and schedule settings.
        batch_size: images per device per step (the lr scales with the global batch).
        config: the resolved run configuration as a plain dict, stored in every checkpoint.
        channels_last: feed the backbone channels-last inputs (with channels-last weights).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        feature_dim: int = backbones.FEATURE_DIMS["resnet50"],
        projector_hidden_dim: int = 8192,
        projector_output_dim: int = 8192,
        lambda_param: float = 0.0051,
        optim: OptimConfig,
        batch_size: int,
        config: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config or {}})
        self.optim_config = optim
        self.batch_size, self.channels_last = batch_size, channels_last
        self.input_adapter = backbones.InputAdapter()
        # attribute name "backbone": backbones.load_backbone_state reads checkpoints by it
        self.backbone = backbone
        self.projection_head = build_projection_head(
            input_dim=feature_dim, hidden_dim=projector_hidden_dim, output_dim=projector_output_dim
        )
        # Barlow Twins: lambda 0.0051 (set explicitly; lightly's default is 5e-3).
        # gather_distributed: average the cross-correlation over ranks, otherwise the loss would
        # depend on the number of GPUs.
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=True)
        self._window: tuple[float, int] | None = None  # (time, pairs) at the last log

    def forward(self, images: Tensor) -> Tensor:
        """Images FloatTensor[B, 1|3, H, W] in [0, 1] -> backbone features (B, feature_dim)."""
        x = self.input_adapter(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x_a, x_b = batch["image"]
        # Each view through the backbone on its own: BatchNorm statistics per view, as in the
        # Barlow Twins code (one pass over the concatenation would mix the two views' statistics).
        h_a, h_b = self(x_a), self(x_b)
        z_a, z_b = self.projection_head(h_a), self.projection_head(h_b)
        # The loss in float32 even under bf16 autocast: it sums 8192^2 squared correlations.
        with torch.autocast(device_type=self.device.type, enabled=False):
            losses = {"loss_barlow_twins": self.criterion(z_a.float(), z_b.float())}
        engine.check_finite(losses, step=self.global_step, image_ids=batch["image_id"])
        loss = sum(losses.values())
        self._log_terms(loss, z_a=z_a, z_b=z_b, h_a=h_a)
        return loss  # type: ignore[return-value]

    @torch.no_grad()
    def _log_terms(self, loss: Tensor, *, z_a: Tensor, z_b: Tensor, h_a: Tensor) -> None:
        # The invariance term needs only the diagonal of C (a D-vector, cheap to all-reduce);
        # the redundancy term follows from the total.
        za = F.batch_norm(z_a.float(), None, None, training=True)
        zb = F.batch_norm(z_b.float(), None, None, training=True)
        diag = self.trainer.strategy.reduce((za * zb).mean(0), reduce_op="mean")
        on_diag = (diag - 1).pow(2).sum()
        metrics = {"train/loss": loss.detach(), "train/on_diag": on_diag}
        if self.criterion.lambda_param > 0:
            metrics["train/off_diag"] = (loss.detach() - on_diag) / self.criterion.lambda_param
        # Collapse monitors: 0 = collapsed, 1/sqrt(D) = isotropic (lightly.utils.debug).
        metrics["train/embedding_std"] = std_of_l2_normalized(z_a.detach().float())
        metrics["train/feature_std"] = std_of_l2_normalized(h_a.detach().float())
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=z_a.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=z_a.shape[0])

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        # Pairs per second over the logging window, summed over ranks; no device sync: over a
        # window the queue of asynchronous kernels is amortised.
        pairs = len(batch["image_id"]) * self.trainer.world_size
        now = time.perf_counter()
        if self._window is None:
            self._window = (now, 0)
            return
        start, seen = self._window
        seen += pairs
        if (self.global_step % max(1, self.trainer.log_every_n_steps)) == 0 and now > start:
            self.log(
                "train/pairs_per_sec",
                seen / (now - start),
                on_step=True,
                on_epoch=False,
                batch_size=len(batch["image_id"]),
            )
            self._window = (now, 0)
        else:
            self._window = (start, seen)

    def configure_optimizers(self) -> dict[str, Any]:
        optim, trainer = self.optim_config, self.trainer
        # a Trainer built outside cxrkit's config reaches here without PretrainConfig's check
        check_no_accumulation(trainer.accumulate_grad_batches)
        global_batch = self.batch_size * trainer.world_size
        scale = global_batch / REFERENCE_BATCH
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.projection_head])
        optimizer = LARS(
            [
                {"name": "weights", "params": decay},
                # weight_decay=0 also excludes these from LARS adaptation (as lightly's LARS)
                {
                    "name": "biases",
                    "params": no_decay,
                    "weight_decay": 0.0,
                    "lr": optim.lr_biases * scale,
                },
            ],
            lr=optim.lr_weights * scale,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            trust_coefficient=optim.trust_coefficient,
        )
        total = int(trainer.estimated_stepping_batches)
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            # estimated_stepping_batches does not load the data when max_steps is set
            trainer.fit_loop.setup_data()
            batches = trainer.num_training_batches
        if math.isfinite(batches):
            per_epoch = max(1, int(batches))
            warmup = min(total, round(optim.warmup_epochs * per_epoch))
        elif optim.warmup_epochs == 0:
            warmup = 0
        else:
            raise ConfigError(
                "optim.warmup_epochs needs the number of batches per epoch, which this data "
                "loader does not have (no len()); set optim.warmup_epochs=0"
            )
        scheduler = CosineWarmupScheduler(
            optimizer, warmup_epochs=warmup, max_epochs=total, end_value=optim.end_lr_factor
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
