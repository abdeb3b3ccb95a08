"""BYOL (Grill et al., 2020): an online network (backbone, projector, predictor) predicts
the projection of the other view by a target network that follows it as an EMA, with
the momentum on a cosine from base_momentum to 1 over the run. No negatives."""
from dataclasses import dataclass

import torch

from ..distributed import gather, gather_with_grad
from ..losses import byol
from ..models import projection_mlp
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy


@dataclass
class BYOLConfig(ProjectorConfig, CosineMomentumConfig):
    pred_hidden_dim: int = declared("[1, inf)")        # the predictor: proj_out_dim -> this -> proj_out_dim


@dataclass
class BYOLLossConfig(LossConfig):
    pass


@register
class BYOL(Method):
    name = "byol"
    loss_name = "byol"
    Config = BYOLConfig
    Loss = BYOLLossConfig

    def __init__(self, backbone, projector, predictor):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.backbone_t = frozen_copy(backbone)           # the target: EMA of the online net
        self.projector_t = frozen_copy(projector)

    @classmethod
    def online_network(cls, cfg):
        """(backbone, projector, predictor) described by cfg (NNBYOL builds the same)."""
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        return backbone, projector, predictor

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "BYOL":
        return cls(*cls.online_network(cfg))

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        return {"momentum": cosine_momentum(cfg, total_steps)}

    def momentum_pairs(self):
        # after the online step (ema_timing), as BYOL and solo-learn: tau of this step
        return [(self.backbone, self.backbone_t), (self.projector, self.projector_t)]

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
