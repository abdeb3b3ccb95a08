"""TiCo (Zhu et al., 2022, "TiCo: Transformation Invariance and Covariance Contrast for
Self-Supervised Visual Representation Learning"): an online network (backbone, projector)
embeds view 1, a momentum copy embeds view 2; the loss pulls the two together and pushes
view 1 away from a running covariance of recent embeddings (`sslcifar.losses.tico_loss`).

As lightly's TiCo (lightly e8d317fc: lightly/loss/tico_loss.py, examples/pytorch/tico.py):
one direction per step (view 1 online, view 2 momentum), a 512 -> 1024 -> 256 head, the
momentum on a cosine updated before the forward, C zeros at the start. The covariance C
is a buffer: it is in the checkpoint and made from the global batch on every rank.
"""
from dataclasses import dataclass

import torch

from ..distributed import gather, gather_with_grad
from ..losses import tico_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy


@dataclass
class TiCoConfig(ProjectorConfig, CosineMomentumConfig):
    pass


@dataclass
class TiCoLossConfig(LossConfig):
    beta: float = declared("[0, 1)")       # the running covariance's EMA coefficient
    rho: float = declared("[0, inf)")      # the covariance contrast's weight


@register
class TiCo(Method):
    name = "tico"
    loss_name = "tico"
    Config = TiCoConfig
    Loss = TiCoLossConfig
    # lightly's example moves the momentum encoder before the step's forward
    ema_timing = "before_forward"

    def __init__(self, backbone, projector, dim: int, beta: float, rho: float):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.backbone_t = frozen_copy(backbone)
        self.projector_t = frozen_copy(projector)
        self.beta, self.rho = beta, rho
        self.register_buffer("C", torch.zeros(dim, dim))     # the running covariance [D, D]

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "TiCo":
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, cfg.method)
        return cls(backbone, projector, cfg.method.proj_out_dim, cfg.loss.beta, cfg.loss.rho)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        return {"momentum": cosine_momentum(cfg, total_steps)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_t), (self.projector, self.projector_t)]

    def forward(self, batch) -> dict:
        x1, x2 = batch.views
        h = self.backbone(x1)                                     # [B, F]
        z = self.projector(h)                                     # [B, D]
        with torch.no_grad():
            zt = self.projector_t(self.backbone_t(x2))
        loss, C = tico_loss(gather_with_grad(z), gather(zt), self.C, self.beta, self.rho)
        self.C.copy_(C)
        return {"loss": loss, "features": h.detach(), "z_std": self.collapse_std(z)}
