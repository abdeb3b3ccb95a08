"""TEMPORARY minimal optim (being replaced)."""
import math
import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    pn, dn = torch.norm(p), torch.norm(d)
                    q = torch.where((pn > 0) & (dn > 0), g["trust_coefficient"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                mu = st["mu"]
                mu.mul_(g["momentum"]).add_(d)
                p.add_(mu, alpha=-g["lr"])


def scaled_lr(base_lr, batch_size, rule):
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(rule)


def build_optimizer(params, name, lr, weight_decay, momentum=0.9, nesterov=False,
                    betas=(0.9, 0.999), trust_coefficient=0.001):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr, momentum, weight_decay, trust_coefficient)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(name)
