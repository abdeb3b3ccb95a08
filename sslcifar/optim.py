"""Optimizers: SGD and AdamW from torch, LARS written out, and learning-rate scaling."""
import math
from typing import Iterable, Sequence

import torch


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017, "Large Batch Training of Convolutional Networks") as
    SogCLR and MoCo v3 use it. For each parameter p with gradient g:

        if p.ndim > 1 (conv and linear weights):
            d = g + wd * p
            d = d * eta * ||p|| / ||d||      (factor 1 when either norm is 0)
        else (biases, BatchNorm): d = g       (no weight decay, no scaling)
        mu = m * mu + d                       (mu starts at 0, so the first mu is d)
        p  = p - lr * mu
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    # torch.where, not an `if`: no host-device sync on the GPU
                    q = torch.where((p_norm > 0) & (d_norm > 0),
                                    group["trust_coefficient"] * p_norm / d_norm,
                                    torch.ones_like(p_norm))
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The learning rate for a global batch:
    none -> base_lr; linear -> base_lr * B / 256 (Goyal et al.; SimCLR-CIFAR10, MoCo);
    sqrt -> base_lr * sqrt(B) (SimCLR's square-root rule, used by SogCLR: 0.075 * sqrt(B)
    on ImageNet, 1.0 * sqrt(B) on CIFAR with LARS)."""
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(f"unknown lr scaling rule {rule!r}: use none, linear or sqrt")


def build_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, betas: Sequence[float] = (0.9, 0.999),
                    trust_coefficient: float = 0.001) -> torch.optim.Optimizer:
    """sgd: weight decay on every parameter, as SimCLR-CIFAR10, MoCo and SupContrast do;
    lars: see LARS; adamw: torch's AdamW (decoupled weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=trust_coefficient)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use sgd, lars or adamw")
