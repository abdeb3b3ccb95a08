"""SupCon (Khosla et al., 2020): positives are all views of the same class."""
from dataclasses import dataclass

import torch.nn.functional as F
from omegaconf import MISSING

from ..distributed import gather, gather_with_grad
from ..losses import supcon
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register


@dataclass
class SupConConfig(ProjectorConfig):
    pass


@dataclass
class SupConLossConfig(TemperatureConfig):
    base_temperature: float = declared("(0, inf)")     # the loss is scaled by temperature / base_temperature
    # an anchor without a positive (one view, a class seen once): false counts it with 0 in
    # the mean, as SupContrast's SupConLoss; true leaves it out of the mean
    skip_anchors_without_positive: bool = MISSING


@register
class SupCon(Method):
    name = "supcon"
    loss_name = "supcon"
    Config = SupConConfig
    Loss = SupConLossConfig
    needs_labels = True
    views = (1, None)

    def __init__(self, backbone, projector, temperature: float, base_temperature: float,
                 skip_anchors_without_positive: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.skip = skip_anchors_without_positive

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SupCon":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.loss.temperature, cfg.loss.base_temperature,
                   cfg.loss.skip_anchors_without_positive)

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        h = self.encode(views)
        z = F.normalize(self.projector(h), dim=1)                 # [V*B, D]
        z = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())  # [N, V, D]
        loss = supcon(z, gather(batch.labels), self.temperature, self.base_temperature, self.skip)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:, 0])}
