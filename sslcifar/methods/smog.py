"""SMoG (Pang et al., ECCV 2022, "Unsupervised Visual Representation Learning by Synchronous
Momentum Grouping"): an online network (backbone, projector, predictor) and a momentum
encoder; G group features, moved at each step towards the online projections assigned to
them, score the online predictions, and the momentum encoder's group of the other view is
the target (`sslcifar.losses.smog_loss`). Every `reset_every` steps the groups restart from
k-means on a bank of recent projections and the momentum encoder from the online weights.

As lightly's benchmark `SMoGModel` (lightly e8d317fc, docs/.../cifar10_benchmark.py): 300
groups of 128-d, beta 0.99, T 0.1, momentum 0.99 (before the forward), a bank of 10,000
projections, resets every 300 steps, the views swapped at every odd step. Where we differ:
k-means is spherical_kmeans on the bank's unit rows (lightly: scikit-learn's Euclidean
KMeans on the raw projections), seeded by (seed, step) so resume and every rank agree; the
odd step is the run's (lightly's: the epoch's batch index). The groups and the bank are
buffers.
"""
from dataclasses import dataclass

import torch

from ..distributed import gather, gather_with_grad
from ..losses import smog_loss, spherical_kmeans
from ..models import projection_mlp
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register, require
from .ema import frozen_copy
from .support_set import SupportSet, SupportSetConfig


@dataclass
class SMoGConfig(ProjectorConfig, SupportSetConfig):
    pred_hidden_dim: int = declared("[1, inf)")       # the predictor: out -> this -> out
    num_groups: int = declared("[1, inf)")            # G group features
    momentum: float = declared("[0, 1]")              # the momentum encoder's EMA
    reset_every: int = declared("[1, inf)")           # steps between k-means resets
    kmeans_iters: int = declared("[0, inf)")


@dataclass
class SMoGLossConfig(TemperatureConfig):
    beta: float = declared("[0, 1]")                  # the groups' momentum


@register
class SMoG(Method):
    name = "smog"
    loss_name = "smog"
    Config = SMoGConfig
    Loss = SMoGLossConfig
    ema_timing = "before_forward"

    def __init__(self, backbone, projector, predictor, m, loss_cfg, seed: int):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.backbone_t, self.projector_t = frozen_copy(backbone), frozen_copy(projector)
        self.bank = SupportSet(m.queue_size, m.proj_out_dim)
        # lightly's start: uniform [0, 1) rows, normalised
        self.register_buffer("groups", torch.nn.functional.normalize(
            torch.rand(m.num_groups, m.proj_out_dim), dim=1))
        self.reset_every, self.kmeans_iters, self.seed = m.reset_every, m.kmeans_iters, seed
        self.beta, self.temperature = loss_cfg.beta, loss_cfg.temperature

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "SMoG":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        predictor = projection_mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2)
        return cls(backbone, projector, predictor, m, cfg.loss, cfg.seed)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        m = cfg.method
        require(m.queue_size >= m.num_groups, "method.queue_size", m.queue_size,
                f"k-means needs at least method.num_groups={m.num_groups} rows in the bank")

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        # a constant momentum, and 0 at each reset step: the target becomes the online weights
        steps = torch.arange(total_steps)
        reset = (steps > 0) & (steps % cfg.method.reset_every == 0)
        momentum = torch.full((total_steps,), float(cfg.method.momentum), dtype=torch.float64)
        return {"momentum": momentum.masked_fill(reset, 0.0)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_t), (self.projector, self.projector_t)]

    @torch.no_grad()
    def before_step(self, now) -> None:
        if now.step > 0 and now.step % self.reset_every == 0:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + now.step) % 2**63)
            centroids, _ = spherical_kmeans(self.bank.queue, self.groups.shape[0],
                                            self.kmeans_iters, g)
            self.groups.copy_(centroids)

    def forward(self, batch) -> dict:
        xa, xb = batch.views if batch.now.step % 2 == 0 else batch.views[::-1]
        h = self.backbone(xa)                                     # [B, F]
        z = self.projector(h)                                     # [B, D]
        p = self.predictor(z)
        with torch.no_grad():
            zt = self.projector_t(self.backbone_t(xb))
        loss, groups = smog_loss(gather_with_grad(p), gather_with_grad(z), gather(zt),
                                 self.groups, self.beta, self.temperature)
        self.groups.copy_(groups)
        self.bank.push(z.detach(), batch.labels)
        return {"loss": loss, "features": h.detach(), "z_std": self.collapse_std(z)}
