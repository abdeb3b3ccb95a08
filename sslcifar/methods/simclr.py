"""SimCLR (Chen et al., 2020): every view through one encoder, NT-Xent over the batch.

Two views: `nt_xent`, the mean over the 2N anchors. More views (multi-crop, or
augment.groups.0.count=3): `nt_xent_multi`, every crop an anchor whose positives are
the other crops of the same image, as the contrastive-learning-methods repository
(`method.use_labels=true`: of every image of the same class, its supervised variant).
"""
from dataclasses import dataclass

from omegaconf import MISSING

from ..distributed import gather, gather_with_grad
from ..losses import nt_xent, nt_xent_multi
from .base import Method, ProjectorConfig, TemperatureConfig, register, require


@dataclass
class SimCLRConfig(ProjectorConfig):
    # positives = the crops of every image of the same class (the contrastive-learning-
    # methods repository's supervised SimCLR, "with labels"); false: of the same image
    use_labels: bool = MISSING


@dataclass
class NTXentConfig(TemperatureConfig):
    pass


@register
class SimCLR(Method):
    name = "simclr"
    loss_name = "nt_xent"
    Config = SimCLRConfig
    Loss = NTXentConfig
    views = (2, None)
    same_size_views = False

    def __init__(self, backbone, projector, temperature: float, use_labels: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.temperature = temperature
        self.use_labels = use_labels

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SimCLR":
        backbone = cls.make_backbone(cfg)
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   cfg.loss.temperature, cfg.method.use_labels)

    @classmethod
    def check_data(cls, cfg, source, world: int) -> None:
        super().check_data(cfg, source, world)
        if cfg.method.use_labels:
            require(bool((source.labels >= 0).all()), "method.use_labels", True,
                    "needs labels on every training image")

    def forward(self, batch) -> dict:
        views = batch.views
        b, v = views[0].shape[0], len(views)
        # one pass per view size: BatchNorm statistics over all the views of a size
        h = self.encode(views)                                        # [V*B, F]
        z = self.projector(h)                                         # [V*B, D]
        z_std = self.collapse_std(z[:b])                              # the collapse monitor
        if v == 2 and not self.use_labels:
            z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])  # [B_global, D] each
            loss = nt_xent(z1, z2, self.temperature)
        else:
            z = gather_with_grad(z.view(v, b, -1).transpose(0, 1).contiguous())   # [N, V, D]
            ids = gather(batch.labels if self.use_labels else batch.index)
            loss = nt_xent_multi(z.flatten(0, 1), ids.repeat_interleave(v), self.temperature)
        return {"loss": loss, "features": h[:b].detach(), "z_std": z_std}
