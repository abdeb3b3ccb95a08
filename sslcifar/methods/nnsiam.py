"""NNSiam (solo-learn's SimSiam with NNCLR's support set, from Dwibedi et al., 2021):
SimSiam whose target for each view's prediction is the nearest neighbour, in a support set
of earlier projections, of the other view's projection.

Semantics of solo-learn 9187ea39 (solo/methods/nnsiam.py): the projections are normalised,
their neighbours looked up in the queue before this step's first-view projections enter
it, -1/2 (cos(p1, nn2) + cos(p2, nn1)). Everything else is SimSiam's
(`sslcifar.methods.simsiam`): heads, the predictor at a fixed learning rate.
"""
from dataclasses import dataclass

from ..distributed import gather, gather_with_grad
from ..losses import simsiam
from .base import register
from .simsiam import SimSiam, SimSiamConfig
from .support_set import SupportSet, SupportSetConfig, check_support_set


@dataclass
class NNSiamConfig(SimSiamConfig, SupportSetConfig):
    pass


@register
class NNSiam(SimSiam):
    name = "nnsiam"
    Config = NNSiamConfig

    def __init__(self, backbone, projector, predictor, fixed_predictor_lr: bool, queue_size: int):
        super().__init__(backbone, projector, predictor, fixed_predictor_lr)
        self.support = SupportSet(queue_size, predictor[-1].out_features)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "NNSiam":
        m = cfg.method
        return cls(*cls.network(cfg), m.fixed_predictor_lr, m.queue_size)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_support_set(cfg)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)                                     # [2B, D]
        p = self.predictor(z)
        idx1, nn1 = self.support.nearest(z[:b])                  # unit rows, no gradient
        _, nn2 = self.support.nearest(z[b:])
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        loss = simsiam(p1, p2, gather(nn1), gather(nn2))
        nn_acc = self.support.neighbour_accuracy(idx1, batch.labels)
        self.support.push(z[:b].detach(), batch.labels)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "nn_acc": nn_acc}
