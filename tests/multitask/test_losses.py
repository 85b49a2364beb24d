"""Loss terms: reference formulas, masking of unknown targets, and exact zeros without targets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrkit.multitask import losses
from cxrkit.multitask.targets import IGNORE


def test_classification_loss_only_known_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    known = torch.tensor([[1.0, 0.0], [1.0, 1.0]])

    # the reference: mean BCE over the three known entries, written out
    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(2.0, 1) + bce(0.5, 0) + bce(3.0, 1)) / 3
    assert math.isclose(
        losses.classification_loss(logits, labels, known).item(), expected, rel_tol=1e-6
    )


def test_reconstruction_loss_without_any_mask_is_exact_zero_with_gradient_path() -> None:
    pred = torch.rand(3, 1, 8, 8, requires_grad=True)
    target = torch.rand(3, 1, 8, 8)
    loss = losses.reconstruction_loss(pred, target, torch.zeros(3))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph (DDP sees the decoder used)
    assert pred.grad is not None and pred.grad.abs().sum() == 0


def test_reconstruction_loss_averages_masked_samples_only() -> None:
    pred = torch.zeros(3, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)])
    weight = torch.tensor([1.0, 0.0, 1.0])
    # per-sample MSE: 1, 4, 9; samples 0 and 2 count -> (1 + 9) / 2
    assert losses.reconstruction_loss(pred, target, weight).item() == 5.0
    assert torch.isclose(
        losses.reconstruction_loss(pred, target, torch.ones(3)), F.mse_loss(pred, target)
    )


def test_three_class_loss_ignores_unknown_and_all_ignored_is_zero() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    target = torch.tensor([0, IGNORE])
    assert torch.isclose(
        losses.three_class_loss(logits, target), F.cross_entropy(logits[:1], target[:1])
    )
    none = losses.three_class_loss(logits, torch.tensor([IGNORE, IGNORE]))
    assert none.item() == 0.0 and not torch.isnan(none)


def test_segmentation_and_location_losses_respect_known() -> None:
    logits = torch.randn(2, 2, 4, 4)
    masks = (torch.rand(2, 2, 4, 4) > 0.5).float()
    known = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    ref = F.binary_cross_entropy_with_logits(logits[0, 0], masks[0, 0])
    assert torch.isclose(losses.segmentation_loss(logits, masks, known), ref)
    assert losses.segmentation_loss(logits, masks, torch.zeros(2, 2)).item() == 0.0
    loc = torch.randn(2, 6)
    regions = (torch.rand(2, 6) > 0.5).float()
    ref = F.binary_cross_entropy_with_logits(loc[1], regions[1])
    assert torch.isclose(losses.location_loss(loc, regions, torch.tensor([0.0, 1.0])), ref)


def test_total_weights_terms() -> None:
    terms = {"loss_cls": torch.tensor(1.0), "loss_rec": torch.tensor(2.0)}
    assert math.isclose(losses.total(terms, {"loss_rec": 0.8}).item(), 2.6, rel_tol=1e-6)
