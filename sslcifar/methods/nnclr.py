"""NNCLR (Dwibedi et al., ICCV 2021, "With a Little Help from My Friends"): SimCLR whose
anchor is not a view's projection but its nearest neighbour in a support set of earlier
projections, contrasted with the other view's prediction (a predictor MLP), symmetrised.

The authors released no code; the semantics are solo-learn's (9187ea39,
solo/methods/nnclr.py): a 3-layer projector ending in BatchNorm (with its affine
parameters), a 2-layer predictor, neighbours found among normalised projections of the
first view, enqueued after the loss. `sslcifar.methods.support_set` has the queue.
"""
from dataclasses import dataclass

from ..distributed import gather, gather_with_grad
from ..losses import nnclr_loss
from ..models import projection_mlp
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register
from .support_set import SupportSet, SupportSetConfig, check_support_set


@dataclass
class NNCLRConfig(ProjectorConfig, SupportSetConfig):
    pred_hidden_dim: int = declared("[1, inf)")        # the predictor: proj_out_dim -> this -> proj_out_dim


@dataclass
class NNCLRLossConfig(TemperatureConfig):
    pass


@register
class NNCLR(Method):
    name = "nnclr"
    loss_name = "nnclr"
    Config = NNCLRConfig
    Loss = NNCLRLossConfig

    def __init__(self, backbone, projector, predictor, queue_size: int, temperature: float):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.support = SupportSet(queue_size, predictor[-1].out_features)
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "NNCLR":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = projection_mlp(backbone.num_features, m.proj_hidden_dim, m.proj_out_dim,
                                   m.proj_layers, m.proj_bn, m.proj_last_bn, last_bn_affine=True)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        return cls(backbone, projector, predictor, m.queue_size, cfg.loss.temperature)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_support_set(cfg)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)                              # [2B, F]
        z = self.projector(h)                                     # [2B, D]
        p = self.predictor(z)
        # neighbours in the queue as it was before this step (no gradient), row by row, so
        # each rank's rows of the global batch are found as one process would find them
        idx1, nn1 = self.support.nearest(z[:b])
        _, nn2 = self.support.nearest(z[b:])
        nn1, nn2 = gather(nn1), gather(nn2)
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        loss = (nnclr_loss(nn1, p2, self.temperature) + nnclr_loss(nn2, p1, self.temperature)) / 2
        nn_acc = self.support.neighbour_accuracy(idx1, batch.labels)
        self.support.push(z[:b].detach(), batch.labels)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "nn_acc": nn_acc}
