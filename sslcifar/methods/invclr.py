"""SimCLR with the invariance gradient penalty (Foster et al., ICLR 2021, "Improving
Transformation Invariance in Contrastive Representation Learning"): NT-Xent plus
gp_weight x how much view 1's representation moves with its nuisance parameters (the
colour-jitter factors on images; the six nuisance parameters of Spirograph, through the
differentiable renderer). View 1 is re-made from its parameters with the gradient on."""
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from .. import distributed as dist
from ..distributed import gather_with_grad
from ..errors import UserError
from ..losses import gradient_penalty, nt_xent
from ..ranges import declared
from .base import register, require
from .simclr import NTXentConfig, SimCLR, SimCLRConfig


@dataclass
class InvCLRConfig(SimCLRConfig):
    gp_weight: float = declared("[0, inf)")        # lambda
    gp_upper_limit: float = declared("(0, inf)")   # the penalty is clamped at this value
    gp_samples: int = declared("[1, inf)")         # M fresh draws of the nuisance parameters (100)
    gp_normalize: bool = MISSING      # differentiate h / ||h|| (the original's default)


@register
class InvCLR(SimCLR):
    name = "invclr"
    loss_name = "nt_xent"
    Config = InvCLRConfig
    Loss = NTXentConfig
    views = (2, 2)
    same_size_views = True
    needs_replay = True

    def __init__(self, backbone, projector, temperature: float, cfg_method):
        super().__init__(backbone, projector, temperature, use_labels=False)
        m = cfg_method
        self.gp_weight, self.gp_upper_limit = m.gp_weight, m.gp_upper_limit
        self.gp_samples, self.gp_normalize = m.gp_samples, m.gp_normalize

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "InvCLR":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.loss.temperature, cfg.method)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        if cfg.dataset.name != "spirograph":
            require(cfg.augment.jitter_p > 0, "augment.jitter_p", cfg.augment.jitter_p,
                    "method=invclr penalises the colour jitter's factors: needs > 0")

    def forward(self, batch) -> dict:
        if batch.replay is None or batch.nuisance is None:
            raise UserError("method=invclr needs a batch that can re-make its views "
                            "(dataset.pipeline=device)")
        b = batch.views[0].shape[0]
        key = batch.nuisance.key
        # view 1 again, now as a function of its nuisance parameters theta (crop and flip
        # stay outside the gradient, as in the original's data loader)
        theta = batch.params[0][key].detach().clone().requires_grad_(True)       # [B, P]
        x1 = batch.replay(0, {**batch.params[0], key: theta})
        h = self.encode([x1, batch.views[1]])                                     # [2B, F]
        z = self.projector(h)
        loss_nce = nt_xent(gather_with_grad(z[:b]), gather_with_grad(z[b:]), self.temperature)
        out = {"features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
               "nt_xent": loss_nce.detach()}
        if self.gp_weight > 0:
            # the signs and the fresh draws from the step's own stream (exact resume), drawn
            # for the global batch and sliced: 2 processes draw what 1 process would
            g = torch.Generator(device=h.device).manual_seed(10_007 * batch.now.step + 1)
            n, r = b * dist.world_size(), dist.rank()
            mine = slice(r * b, (r + 1) * b)
            extra = batch.nuisance.draw(0, self.gp_samples, n, g)[:, mine].to(theta.dtype)
            signs = (torch.randint(0, 2, (n, h.shape[1]), generator=g, device=h.device) * 2 - 1)[mine]
            terms = gradient_penalty(h[:b].float(), theta, extra, signs.float(),
                                     self.gp_normalize, reduce=False)               # [M, B]
            # the mean (and its clamp) over the global batch: every rank the same penalty,
            # and the gradient of each term reaches its own rank
            penalty = gather_with_grad(terms.T.contiguous()).mean()
            penalty = torch.clamp(penalty, max=self.gp_upper_limit)
            out["gradient_penalty"] = penalty.detach()
            loss = loss_nce + self.gp_weight * penalty
        else:
            loss = loss_nce
        out["loss"] = loss
        return out
