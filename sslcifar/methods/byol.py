"""BYOL (Grill et al., 2020): an online network (backbone, projector, predictor) predicts
the projection of the other view by a target network that follows it as an EMA, with
the momentum on a cosine from base_momentum to 1 over the run. No negatives."""
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from ..distributed import gather, gather_with_grad
from ..losses import byol
from ..models import projection_mlp
from ..schedule import cosine_momentum
from .base import LossConfig, Method, ProjectorConfig, register, require
from .ema import ema_update, frozen_copy


@dataclass
class BYOLConfig(ProjectorConfig):
    pred_hidden_dim: int = MISSING        # the predictor: proj_out_dim -> this -> proj_out_dim
    base_momentum: float = MISSING        # tau at step 0 (0.99 in solo-learn's CIFAR recipe)
    final_momentum: float = MISSING       # tau at the last step (1)


@dataclass
class BYOLLossConfig(LossConfig):
    pass


def check_momentum(cfg) -> None:
    m = cfg.method
    require(0 <= m.base_momentum <= m.final_momentum <= 1, "method.base_momentum",
            m.base_momentum, f"needs 0 <= base_momentum <= final_momentum ({m.final_momentum}) <= 1")


@register
class BYOL(Method):
    name = "byol"
    loss_name = "byol"
    Config = BYOLConfig
    Loss = BYOLLossConfig

    def __init__(self, backbone, projector, predictor, base_momentum: float, final_momentum: float):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.backbone_t = frozen_copy(backbone)           # the target: EMA of the online net
        self.projector_t = frozen_copy(projector)
        self.base_momentum, self.final_momentum = base_momentum, final_momentum

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "BYOL":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        return cls(backbone, projector, predictor, m.base_momentum, m.final_momentum)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum(cfg)

    def after_step(self, step: int, total_steps: int) -> None:
        # after the online step, as BYOL and solo-learn (tau of this step, cosine to 1)
        tau = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.backbone_t, self.backbone, tau)
        ema_update(self.projector_t, self.projector, tau)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)                              # [2B, F]
        z = self.projector(h)
        p = self.predictor(z)                                     # [2B, D]
        with torch.no_grad():
            zt = self.projector_t(self.encode(batch.views, self.backbone_t))
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        zt1, zt2 = gather(zt[:b]), gather(zt[b:])
        # the two directions summed, as BYOL and solo-learn (range [0, 8])
        loss = byol(p1, zt2) + byol(p2, zt1)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
