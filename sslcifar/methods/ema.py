"""Target networks that follow the online network as an exponential moving average
(MoCo's key encoder, BYOL's target, MoCo v3's momentum encoder, DINO's teacher)."""
import copy

import torch
from torch import nn


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
