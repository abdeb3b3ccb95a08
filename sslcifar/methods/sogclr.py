"""SogCLR (Yuan et al., ICML 2022): SimCLR's encoder with the dynamic contrastive loss,
whose per-sample estimator u is indexed by dataset index."""
from dataclasses import dataclass


from ..distributed import gather, gather_with_grad
from ..losses import SogCLRLoss
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register


@dataclass
class SogCLRConfig(ProjectorConfig):
    pass


@dataclass
class SogCLRLossConfig(TemperatureConfig):
    gamma: float = declared("(0, 1]")            # weight of the new estimate in the moving average u
    branch: str = declared(choices=SogCLRLoss.BRANCHES)             # cifar | imagenet: the original code's first-visit rule (losses/sogclr.py)


@register
class SogCLR(Method):
    name = "sogclr"
    loss_name = "sogclr"
    Config = SogCLRConfig
    Loss = SogCLRLossConfig

    def __init__(self, backbone, projector, loss: SogCLRLoss):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.criterion = loss          # holds u [num_samples, 1]: saved with the model

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SogCLR":
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, cfg.method)
        lc = cfg.loss
        return cls(backbone, projector, SogCLRLoss(num_train, lc.gamma, lc.temperature, lc.branch))

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)
        # every rank sees the global batch and its indices, so u stays identical everywhere
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        loss = self.criterion(z1, z2, gather(batch.index))
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z1)}
