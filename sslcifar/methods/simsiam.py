"""SimSiam (Chen & He, 2021): BYOL without the target network. The predictor keeps a fixed
learning rate (`method.fixed_predictor_lr`, the paper's sec. 4.2 and solo-learn's static_lr)."""
from dataclasses import dataclass

from omegaconf import MISSING

from ..distributed import gather_with_grad
from ..losses import simsiam
from ..models import projection_mlp
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register


@dataclass
class SimSiamConfig(ProjectorConfig):
    pred_hidden_dim: int = declared("[1, inf)")        # the predictor's bottleneck (512 for a 2048 projection)
    fixed_predictor_lr: bool = MISSING    # the predictor at the base lr at every step


@dataclass
class SimSiamLossConfig(LossConfig):
    pass


@register
class SimSiam(Method):
    name = "simsiam"
    loss_name = "simsiam"
    Config = SimSiamConfig
    Loss = SimSiamLossConfig

    def __init__(self, backbone, projector, predictor, fixed_predictor_lr: bool):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.fixed_predictor_lr = fixed_predictor_lr

    @classmethod
    def network(cls, cfg):
        """(backbone, projector, predictor) described by cfg (NNSiam builds the same)."""
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        return backbone, projector, predictor

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SimSiam":
        return cls(*cls.network(cfg), cfg.method.fixed_predictor_lr)

    def param_groups(self):
        encoder = [p for n, p in self.named_parameters() if not n.startswith("predictor.")]
        return [{"params": encoder},
                {"params": list(self.predictor.parameters()), "fixed_lr": self.fixed_predictor_lr}]

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)                                     # [2B, D]
        p = self.predictor(z)
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        loss = simsiam(p1, p2, z1, z2)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
