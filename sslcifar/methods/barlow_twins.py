"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of the two views' embeddings,
standardised over the *global* batch, is pushed towards the identity."""
from dataclasses import dataclass


from ..distributed import gather_with_grad
from ..losses import barlow_twins
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class BarlowTwinsConfig(ProjectorConfig):
    pass


@dataclass
class BarlowTwinsLossConfig(LossConfig):
    lambd: float = declared("[0, inf)")        # weight of the off-diagonal (redundancy) term
    scale: float = declared("(0, inf)")        # overall factor (solo-learn's scale_loss: 0.1 on CIFAR)


@register
class BarlowTwins(Method):
    name = "barlow_twins"
    loss_name = "barlow_twins"
    Config = BarlowTwinsConfig
    Loss = BarlowTwinsLossConfig

    def __init__(self, backbone, projector, lambd: float, scale: float):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.lambd, self.scale = lambd, scale

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "BarlowTwins":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.loss.lambd, cfg.loss.scale)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)
        # the statistics and the correlation over the global batch, differentiably: the
        # gradient reaches every rank in full (a plain all_reduce of c would not)
        loss = barlow_twins(gather_with_grad(z[:b]), gather_with_grad(z[b:]), self.lambd,
                            scale=self.scale)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
