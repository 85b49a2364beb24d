"""LARS (You et al. 2017) without device-to-host synchronisation.

The update is lightly's ``lightly.utils.lars.LARS`` (1.6), parameter by parameter::

    if weight_decay != 0 and |p| != 0 and |g| != 0:
        d = (g + weight_decay * p) * trust_coefficient * |p| / (|g| + weight_decay * |p| + eps)
    else:
        d = g
    buf = d (first step) | momentum * buf + (1 - dampening) * d
    p -= lr * (buf | d + momentum * buf if nesterov)

lightly tests ``p_norm != 0 and g_norm != 0`` in Python: two ``bool(tensor)`` per parameter, each
a device-to-host copy that waits for every queued kernel (112 per ResNet-50 + projector step). Here
the test is a ``torch.where`` on the device, as in the original Barlow Twins code
(facebookresearch/barlowtwins ``main.py``), so a step queues its kernels and never waits.
``weight_decay`` is a Python number per group: the branch on it costs nothing.

The update is lightly's, not the original's: Barlow Twins' (and BarlowTwins-CXR's) trust ratio is
``eta * |p| / |g + weight_decay * p|`` with its momentum buffer started at zero; lightly's
denominator is ``|g| + weight_decay * |p| + eps``. cxrkit kept lightly's update when it moved to
this optimiser, so runs before and after agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rate scaling; the same update as lightly's ``LARS``.

    Args:
        params: parameters or parameter groups; a group with ``weight_decay=0`` gets neither
            weight decay nor LARS adaptation (cxrkit passes biases and norm parameters so).
        lr: learning rate.
        momentum, dampening, nesterov: as in ``torch.optim.SGD``.
        weight_decay: L2 penalty, added to the gradient before the LARS scaling.
        trust_coefficient: LARS eta.
        eps: added to the denominator of the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"LARS needs lr, momentum and weight_decay >= 0, got {lr}, {momentum}, "
                f"{weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter with a gradient; no host synchronisation."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:
                    d_p = self._adapted(p, d_p, group)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss

    @staticmethod
    def _adapted(p: Tensor, grad: Tensor, group: dict[str, Any]) -> Tensor:
        """Weight decay + trust-ratio scaling where both norms are non-zero, else ``grad``.

        The branch is taken on 0-dim device tensors (a factor and a decay of 1 and 0 where
        lightly would skip), so the full-size work is two passes, as lightly's
        ``d_p.add(p, alpha=wd)`` then ``d_p *= lars_lr``.
        """
        weight_decay = group["weight_decay"]
        p_norm, g_norm = torch.norm(p), torch.norm(grad)
        lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"])
        lars_lr = lars_lr * group["trust_coefficient"]
        adapt = (p_norm != 0) & (g_norm != 0)  # a device tensor: no host round trip
        factor = torch.where(adapt, lars_lr, 1.0)
        decay = adapt * weight_decay  # weight_decay where adapted, else 0
        return torch.addcmul(grad, p, decay).mul_(factor)
