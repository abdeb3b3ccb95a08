"""DCL and DCLW (Yeh et al., ECCV 2022, "Decoupled Contrastive Learning"): SimCLR's network
(one encoder, a projection MLP) trained with NT-Xent whose denominator leaves out the
positive (`sslcifar.losses.dcl_loss`); DCLW also weights each positive by a negative von
Mises-Fisher weight (loss.weight_sigma). As lightly's benchmark models `DCL` and `DCLW`
(lightly e8d317fc, docs/.../cifar10_benchmark.py): a 512 -> 512 -> 128 head with BatchNorm
after both layers (the last one affine), T 0.1.
"""
from dataclasses import dataclass
from typing import Optional

from ..distributed import gather_with_grad
from ..losses import dcl_loss
from ..models import projection_mlp
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register


@dataclass
class DCLConfig(ProjectorConfig):
    pass


@dataclass
class DCLLossConfig(TemperatureConfig):
    # DCLW's sigma of the positive's weight; null: DCL (every positive weighted 1)
    weight_sigma: Optional[float] = declared("(0, inf)")


@register
class DCL(Method):
    name = "dcl"
    loss_name = "dcl"
    Config = DCLConfig
    Loss = DCLLossConfig

    def __init__(self, backbone, projector, temperature: float, weight_sigma: Optional[float]):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.temperature, self.weight_sigma = temperature, weight_sigma

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "DCL":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        # lightly's SimCLRProjectionHead: its last BatchNorm keeps its affine parameters
        projector = projection_mlp(backbone.num_features, m.proj_hidden_dim, m.proj_out_dim,
                                   m.proj_layers, m.proj_bn, m.proj_last_bn, last_bn_affine=True)
        return cls(backbone, projector, cfg.loss.temperature, cfg.loss.weight_sigma)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)                                  # [2B, F]
        z = self.projector(h)                                         # [2B, D]
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])     # [B_global, D] each
        loss = dcl_loss(z1, z2, self.temperature, self.weight_sigma)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}


@register
class DCLW(DCL):
    """DCL with the weighted positive: the same network, loss.weight_sigma 0.5."""
    name = "dclw"
    loss_name = "dclw"
