"""Loss terms of the multi-task models, each averaged only over the targets that are known.

Every term is computed in float32, whatever the autocast precision of the model's outputs.

Every function returns a scalar that is exactly 0 (and still in the graph, so DDP sees every
parameter used) when no sample carries that target: an image without a lesion mask adds no
reconstruction loss, an image without organ masks no segmentation loss. The terms are combined once
by :func:`total` as ``sum(weight[name] * term)``; the caller logs every term (STYLE.md rule 8).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrkit.multitask.targets import IGNORE


def _masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    # weights are 0/1: with none known the sum is an exact 0 that stays in the graph, and dividing
    # by eps instead of 0 avoids both the NaN and a device-to-host sync
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).eps)


def classification_loss(logits: Tensor, labels: Tensor, known: Tensor) -> Tensor:
    """Multi-label binary cross-entropy over known labels.

    Args:
        logits: FloatTensor[B, F].
        labels: FloatTensor[B, F] in {0, 1}.
        known: FloatTensor[B, F], 1 where the label is known.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    return _masked_mean(bce, known.float())


def three_class_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of logits FloatTensor[B, 3] against Int64Tensor[B] (:data:`IGNORE` skipped)."""
    ce = F.cross_entropy(
        logits.float(), target, ignore_index=IGNORE, reduction="none"
    )  # 0: ignored
    return _masked_mean(ce, (target != IGNORE).float())


def reconstruction_loss(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error per sample, averaged over samples with ``weight`` 1.

    Args:
        prediction, target: FloatTensor[B, C, H, W].
        weight: FloatTensor[B]; 0 for samples without a reconstruction target.
    """
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return _masked_mean(per_sample, weight.float())


def segmentation_loss(logits: Tensor, masks: Tensor, known: Tensor) -> Tensor:
    """Per-pixel binary cross-entropy of each organ channel, over the known (image, organ) pairs.

    Args:
        logits: FloatTensor[B, S, H, W].
        masks: FloatTensor[B, S, H, W] in {0, 1}.
        known: FloatTensor[B, S].
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), masks.float(), reduction="none")
    return _masked_mean(bce.flatten(2).mean(dim=2), known.float())


def location_loss(logits: Tensor, regions: Tensor, known: Tensor) -> Tensor:
    """Binary cross-entropy of regions FloatTensor[B, R] for the images whose location is known."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), regions.float(), reduction="none")
    return _masked_mean(bce.mean(dim=1), known.float())


def total(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum(weights[name] * losses[name])``; a term without a weight counts once."""
    if not losses:
        raise ValueError("no loss terms")
    terms = [weights.get(name, 1.0) * value for name, value in losses.items()]
    return torch.stack(terms).sum()
