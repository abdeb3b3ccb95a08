"""LeJEPA (Balestriero & LeCun, 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning
Without the Heuristics"): one encoder and projector over global and local crops; every
view's projection is pulled to the mean of the image's global views, and SIGReg keeps the
projections an isotropic Gaussian (`sslcifar.losses.lejepa_loss`). No predictor, no
momentum encoder, no stop-gradient.

As lightly's LeJEPA (lightly e8d317fc: lightly/loss/lejepa_loss.py, LeJEPAProjectionHead,
benchmarks/imagenet/vitb16/lejepa.py): a 3-layer projector 2048 -> 2048 -> 64 with
BatchNorm, lambda 0.05, 1024 slices on 17 knots of [0, 3], AdamW without weight decay on
biases and norms. The global views are the view groups' (augment.groups), the local ones
multi-crop's (augment.small_crops). The slices are drawn from a generator seeded by
(seed, step), the same on every rank and after a resume.
"""
from dataclasses import dataclass

import torch

from ..distributed import gather_with_grad
from ..losses import lejepa_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class LeJEPAConfig(ProjectorConfig):
    pass


@dataclass
class LeJEPALossConfig(LossConfig):
    lambda_param: float = declared("[0, 1]")   # SIGReg's weight; the invariance gets 1 - lambda
    num_slices: int = declared("[1, inf)")     # random directions SIGReg tests per step
    knots: int = declared("[2, inf)")          # points of the frequency grid on [0, t_max]
    t_max: float = declared("(0, inf)")


@register
class LeJEPA(Method):
    name = "lejepa"
    loss_name = "lejepa"
    Config = LeJEPAConfig
    Loss = LeJEPALossConfig
    views = (2, None)
    same_size_views = False

    def __init__(self, backbone, projector, num_global: int, loss_cfg, seed: int):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.num_global, self.seed = num_global, seed
        self.lambda_param, self.num_slices = loss_cfg.lambda_param, loss_cfg.num_slices
        self.knots, self.t_max = loss_cfg.knots, loss_cfg.t_max

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "LeJEPA":
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, cfg.method)
        num_global = sum(g.count for g in cfg.augment.groups)
        return cls(backbone, projector, num_global, cfg.loss, cfg.seed)

    def param_groups(self):
        # the reference's AdamW: weight decay on the weights, none on biases and norms
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        h = self.encode(views)                                    # [V*B, F]
        z = self.projector(h)                                     # [V*B, D]
        z_all = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())   # [N, V, D]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + batch.now.step) % 2**63)
        loss = lejepa_loss(z_all.transpose(0, 1), self.num_global, self.lambda_param,
                           self.num_slices, g, self.knots, self.t_max)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
