"""Optimizers: SGD and AdamW from torch, LARS (three variants) written out, and learning-rate
scaling."""
import math
from typing import Iterable, List

import torch
from torch import nn

from .errors import UserError


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017, "Large Batch Training of Convolutional Networks") in the
    three variants the replicated repositories use. For a parameter p with gradient g:

    `sogclr` (SogCLR, MoCo v3, and the Barlow Twins / VICReg authors' code):
        if p.ndim > 1 (conv and linear weights):
            d = g + wd * p
            d = d * eta * ||p|| / ||d||          (factor 1 when either norm is 0)
        else (biases, BatchNorm): d = g          (no weight decay, no scaling)
    `solo` (solo-learn's LARS with exclude_bias_n_norm, the recipes of its CIFAR scripts):
        if p.ndim > 1 and ||p|| > 0 and ||g|| > 0:
            r = eta * ||p|| / (||g|| + wd * ||p|| + eps)
            r = min(r / lr, 1) with clip_lr       (the step is then min(eta * trust, lr))
            d = (g + wd * p) * r
        else: d = g                              (no weight decay, no scaling)
    `torchlars` (torchlars, which the invariance-by-gradient reproduction wraps around SGD):
        as `solo`, on every parameter (biases and BatchNorm too), without clipping, and
        with r = 1 (weight decay still added) when a norm is 0.
    then, for all:
        mu = m * mu + d                          (mu starts at 0, so the first mu is d)
        p  = p - lr * mu
    """

    VARIANTS = ("sogclr", "solo", "torchlars")

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001,
                 variant: str = "sogclr", clip_lr: bool = False, eps: float = 1e-8):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if variant not in self.VARIANTS:
            raise ValueError(f"LARS variant {variant!r}: use one of {', '.join(self.VARIANTS)}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, variant=variant,
                                      clip_lr=clip_lr, eps=eps))

    @staticmethod
    def _direction(p, g, group):
        """d of the docstring; torch.where, not `if`: no host-device sync on the GPU."""
        wd, eta, variant = group["weight_decay"], group["trust_coefficient"], group["variant"]
        if p.ndim <= 1 and variant != "torchlars":
            return g
        p_norm = torch.norm(p)
        if variant == "sogclr":
            d = g.add(p, alpha=wd)
            d_norm = torch.norm(d)
            q = torch.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm,
                            torch.ones_like(p_norm))
            return d.mul(q)
        g_norm = torch.norm(g)
        ok = (p_norm > 0) & (g_norm > 0)
        r = eta * p_norm / (g_norm + wd * p_norm + group["eps"])
        if group["clip_lr"] and group["lr"] > 0:
            r = torch.clamp(r / group["lr"], max=1.0)
        # without a usable ratio: solo-learn's LARS takes the plain gradient (no weight decay),
        # torchlars a ratio of 1 (weight decay still added)
        fallback = g.add(p, alpha=wd) if variant == "torchlars" else g
        return torch.where(ok, g.add(p, alpha=wd) * r, fallback)

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
                d = self._direction(p, p.grad, group)
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


def build_optimizer(params, o, lr: float) -> torch.optim.Optimizer:
    """The optimizer described by cfg.optimizer (`o`) at learning rate `lr`:
    sgd: weight decay on every parameter, as SimCLR-CIFAR10, MoCo and SupContrast do;
    lars: see LARS (o.lars_variant, o.clip_lr); adam: torch's Adam (weight decay added to the
    gradient, solo-learn's W-MSE recipe); adamw: torch's AdamW (decoupled weight decay).
    `params`: parameters or parameter groups (a group's own weight_decay wins)."""
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    if o.name == "lars":
        return LARS(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                    trust_coefficient=o.trust_coefficient, variant=o.lars_variant, clip_lr=o.clip_lr)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer {o.name!r}: use sgd, lars, adam or adamw")


def exclude_from_decay(groups: List[dict], model: nn.Module) -> List[dict]:
    """optimizer.exclude_bias_n_norm_wd: each group split in two, its weights and the rest
    with weight decay 0 (never scheduled): biases and norms (ndim <= 1, as solo-learn's
    exclude_bias_n_norm_wd and DINO's get_params_groups) and the names a timm backbone lists
    in `no_weight_decay()` (position embeddings, class token: the ViT recipes). A group with
    its own weight_decay is left as it is."""
    exempt = {id(p) for p in model.parameters() if p.ndim <= 1}
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "no_weight_decay"):
        names = backbone.no_weight_decay()
        exempt |= {id(p) for n, p in backbone.named_parameters() if n in names}
    out = []
    for g in groups:
        if "weight_decay" in g:
            out.append(g)
            continue
        params = list(g["params"])
        decay = [p for p in params if id(p) not in exempt]
        free = [p for p in params if id(p) in exempt]
        if decay:
            out.append({**g, "params": decay})
        if free:
            out.append({**g, "params": free, "weight_decay": 0.0})
    return out


def layer_decay_groups(backbone: nn.Module, layer_decay: float, weight_decay: float) -> List[dict]:
    """Layer-wise learning-rate decay for fine-tuning a ViT (BEiT's, as MAE's
    util/lr_decay.param_groups_lrd at facebookresearch/mae efb2a80): with L = blocks + 1, the
    patch embedding, position embedding and class token get lr x layer_decay^L, block i
    lr x layer_decay^(L-1-i), the final norm lr x 1 (the classifier, outside the backbone,
    lr x 1 too). As MAE, 1-D parameters (biases, norms) and the backbone's no_weight_decay()
    names get weight decay 0. Returns groups with "lr_scale" (the loop multiplies its lr by
    it) and "weight_decay"; frozen parameters are left out."""
    blocks = getattr(getattr(backbone, "model", None), "blocks", None)
    if blocks is None:
        raise UserError(f"layer_decay={layer_decay} is not allowed: layer-wise lr decay needs a "
                        "ViT encoder (its blocks); leave layer_decay=1 for this one")
    num_layers = len(blocks) + 1
    exempt = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
    groups: dict = {}
    for name, p in backbone.named_parameters():
        if not p.requires_grad:
            continue
        short = name[len("model."):] if name.startswith("model.") else name
        if short in ("cls_token", "pos_embed") or short.startswith("patch_embed"):
            layer = 0
        elif short.startswith("blocks."):
            layer = int(short.split(".")[1]) + 1
        else:
            layer = num_layers
        decay = 0.0 if p.ndim == 1 or name in exempt else weight_decay
        g = groups.setdefault((layer, decay), {"params": [], "weight_decay": decay,
                                               "lr_scale": layer_decay ** (num_layers - layer)})
        g["params"].append(p)
    return list(groups.values())
