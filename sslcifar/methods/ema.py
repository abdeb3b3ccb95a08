"""Target networks that follow the online network as an exponential moving average
(MoCo's key encoder, BYOL's target, MoCo v3's momentum encoder, DINO's teacher).

A method lists its (online, target) pairs in `momentum_pairs()` and its momentum in
`schedules()["momentum"]`; the training loop runs the one update, `update_targets`,
before the forward (`ema_timing = "before_forward"`: MoCo v2, MoCo v3, whose keys come from
the encoder updated at this step) or after the optimizer step (`"after_step"`: BYOL, DINO).
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..ranges import declared
from ..schedule import cosine_scheduler
from .base import require


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that no gradient reaches: it moves only by `ema_update`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_o, parameters only: the target's BatchNorm
    keeps its own running statistics (it runs in train mode on its own batches), as MoCo,
    BYOL and solo-learn do."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1.0 - momentum)


def update_targets(method, momentum: float) -> None:
    """The loop's one EMA step: every (online, target) pair of the method."""
    for online, target in method.momentum_pairs():
        ema_update(target, online, momentum)


@dataclass
class CosineMomentumConfig:
    """The EMA momentum on BYOL's cosine, base_momentum at step 0 rising to final_momentum
    (BYOL, MoCo v3, DINO)."""
    base_momentum: float = declared("[0, 1]")        # tau at step 0 (0.99 in solo-learn's CIFAR recipes)
    final_momentum: float = declared("[0, 1]")       # tau at the step after the last (1)


def cosine_momentum(cfg, total_steps: int) -> torch.Tensor:
    """[total_steps] EMA momentum of cfg.method (a CosineMomentumConfig): BYOL's schedule
    (Grill et al. 2020, sec. 3.2; solo-learn's and DINO's cosine_scheduler),
        tau_s = final - (final - base) * (cos(pi * s / total) + 1) / 2,
    base at step 0, final one step after the last."""
    m = cfg.method
    return cosine_scheduler(m.base_momentum, m.final_momentum, total_steps + 1)[:total_steps]


def check_momentum_order(cfg) -> None:
    """base_momentum <= final_momentum (each in [0, 1]: its declared range)."""
    m = cfg.method
    require(m.base_momentum <= m.final_momentum, "method.base_momentum", m.base_momentum,
            f"needs <= method.final_momentum ({m.final_momentum})")
