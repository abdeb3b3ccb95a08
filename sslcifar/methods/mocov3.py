"""MoCo v3 (Chen, Xie & He, 2021): a query encoder with a predictor, a momentum encoder
for the keys, the other images of the (global) batch as negatives, the loss symmetrised
and scaled by 2T, as the MoCo v3 code."""
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING

from ..distributed import gather, gather_with_grad
from ..errors import UserError
from ..losses import mocov3_infonce
from ..models import projection_mlp
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register
from .ema import CosineMomentumConfig, check_momentum_order, cosine_momentum, frozen_copy


@dataclass
class MoCoV3Config(ProjectorConfig, CosineMomentumConfig):
    pred_hidden_dim: int = declared("[1, inf)")        # the predictor: proj_out_dim -> this -> proj_out_dim
    # MoCo v3's --stop-grad-conv1 (a ViT's patch embedding stays at its random initialisation,
    # their fix for the training instability of ViTs): for the whole run, as the authors' code;
    # stop_grad_conv1_epochs=N frees it after the first N epochs instead
    stop_grad_conv1: bool = MISSING
    stop_grad_conv1_epochs: Optional[int] = declared("[1, inf)")


@dataclass
class MoCoV3LossConfig(TemperatureConfig):
    pass


@register
class MoCoV3(Method):
    name = "mocov3"
    loss_name = "mocov3_infonce"
    Config = MoCoV3Config
    Loss = MoCoV3LossConfig
    # as MoCo v3's builder: the momentum update, then the keys, at each step
    ema_timing = "before_forward"

    def __init__(self, backbone, projector, predictor, temperature: float,
                 stop_grad_conv1: bool = MISSING, stop_grad_conv1_epochs: Optional[int] = None):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.backbone_k = frozen_copy(backbone)           # the momentum encoder
        self.projector_k = frozen_copy(projector)
        self.T = temperature
        self.frozen_embedding = patch_embedding(backbone) if stop_grad_conv1 else []
        self.frozen_epochs = stop_grad_conv1_epochs

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "MoCoV3":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        # MoCo v3's predictor: every Linear without bias, no BatchNorm after the last
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2,
                                   last_bias=False)
        return cls(backbone, projector, predictor, cfg.loss.temperature, m.stop_grad_conv1,
                   m.stop_grad_conv1_epochs)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_momentum_order(cfg)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        return {"momentum": cosine_momentum(cfg, total_steps)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_k), (self.projector, self.projector_k)]

    def after_backward(self, now) -> None:
        # no gradient: no optimizer update and no weight decay (AdamW, SGD and LARS skip a
        # parameter without one), as requires_grad=False in the authors' code; set to None
        # rather than untracked, so DistributedDataParallel sees the same parameters all run
        if self.frozen_embedding and (self.frozen_epochs is None or now.epoch < self.frozen_epochs):
            for p in self.frozen_embedding:
                p.grad = None

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        q = self.predictor(self.projector(h))                     # [2B, D] queries
        with torch.no_grad():       # the keys, by the encoder the loop has just updated
            k = self.projector_k(self.encode(batch.views, self.backbone_k))
        q1, q2 = gather_with_grad(q[:b]), gather_with_grad(q[b:])
        k1, k2 = gather(k[:b]), gather(k[b:])
        loss = mocov3_infonce(q1, k2, self.T) + mocov3_infonce(q2, k1, self.T)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(q[:b])}


def patch_embedding(backbone) -> list:
    """The parameters of a ViT's patch embedding (timm's patch_embed.proj, MoCo v3's conv1)."""
    proj = getattr(getattr(getattr(backbone, "model", None), "patch_embed", None), "proj", None)
    if proj is None:
        raise UserError("method.stop_grad_conv1=true freezes a ViT's patch embedding: use a ViT "
                        "backbone (backbone=vit_tiny|vit_small|vit_base) or leave it false")
    return list(proj.parameters())
