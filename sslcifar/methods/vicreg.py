"""VICReg (Bardes et al., ICLR 2022): invariance between the views, a variance floor and
decorrelation of each view's embedding, over the *global* batch."""
from dataclasses import dataclass


from ..distributed import gather_with_grad
from ..losses import vicreg
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class VICRegConfig(ProjectorConfig):
    pass


@dataclass
class VICRegLossConfig(LossConfig):
    sim_coeff: float = declared("[0, inf)")        # invariance (MSE) weight
    std_coeff: float = declared("[0, inf)")        # variance weight
    cov_coeff: float = declared("[0, inf)")        # covariance weight


@register
class VICReg(Method):
    name = "vicreg"
    loss_name = "vicreg"
    Config = VICRegConfig
    Loss = VICRegLossConfig

    def __init__(self, backbone, projector, sim_coeff: float, std_coeff: float, cov_coeff: float):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.coeffs = (sim_coeff, std_coeff, cov_coeff)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "VICReg":
        backbone = cls.make_backbone(cfg)
        lc = cfg.loss
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   lc.sim_coeff, lc.std_coeff, lc.cov_coeff)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)
        loss = vicreg(gather_with_grad(z[:b]), gather_with_grad(z[b:]), *self.coeffs)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
