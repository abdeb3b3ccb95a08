"""NNBYOL (solo-learn's BYOL with NNCLR's support set, from Dwibedi et al., 2021): BYOL
whose target for each view is the nearest neighbour, in a support set of earlier target
projections, of the target network's projection of the other view.

Semantics of solo-learn 9187ea39 (solo/methods/nnbyol.py): the target projections are
normalised, their neighbours looked up in the queue before this step's first-view target
projections enter it, and the two directions' BYOL losses summed (range [0, 8]).
Everything else is BYOL's (`sslcifar.methods.byol`): heads, EMA target, momentum cosine.
"""
from dataclasses import dataclass

import torch

from ..distributed import gather, gather_with_grad
from ..losses import byol
from .base import register
from .byol import BYOL, BYOLConfig
from .support_set import SupportSet, SupportSetConfig, check_support_set


@dataclass
class NNBYOLConfig(BYOLConfig, SupportSetConfig):
    pass


@register
class NNBYOL(BYOL):
    name = "nnbyol"
    Config = NNBYOLConfig

    def __init__(self, backbone, projector, predictor, queue_size: int):
        super().__init__(backbone, projector, predictor)
        self.support = SupportSet(queue_size, predictor[-1].out_features)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "NNBYOL":
        return cls(*cls.online_network(cfg), cfg.method.queue_size)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        check_support_set(cfg)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)                              # [2B, F]
        z = self.projector(h)
        p = self.predictor(z)                                     # [2B, D]
        with torch.no_grad():
            zt = self.projector_t(self.encode(batch.views, self.backbone_t))
        idx1, nn1 = self.support.nearest(zt[:b])                  # unit rows, no gradient
        _, nn2 = self.support.nearest(zt[b:])
        p1, p2 = gather_with_grad(p[:b]), gather_with_grad(p[b:])
        loss = byol(p1, gather(nn2)) + byol(p2, gather(nn1))
        nn_acc = self.support.neighbour_accuracy(idx1, batch.labels)
        self.support.push(zt[:b], batch.labels)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b]),
                "nn_acc": nn_acc}
