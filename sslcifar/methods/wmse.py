"""W-MSE (Ermolov et al., ICML 2021, "Whitening for Self-Supervised Representation
Learning"): the projections of each view are whitened (Cholesky) on random sub-batches of
the *global* batch, then pulled together by the MSE of their L2-normalised whitened
vectors over every pair of views. Whitening, not negatives or a predictor, keeps the
embedding from collapsing. Any number of views.

The authors' code (htdt/self-supervised d9662c8, methods/w_mse.py) by default: the gradient
flows through both views of each pair. solo-learn (9187ea39, solo/methods/wmse.py) detaches
the second view of each pair (`loss.detach_second=true`, the preset's): with two views the
second view's projection gets no gradient. The sub-batches come from permutations of the
global batch drawn from a generator seeded by (seed, step): the same on every rank, and
again after a resume.
"""
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from ..distributed import gather_with_grad
from ..losses import wmse_loss
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register, require


@dataclass
class WMSEConfig(ProjectorConfig):
    pass


@dataclass
class WMSELossConfig(LossConfig):
    w_size: int = declared("[2, inf)")        # images per whitening sub-batch (global batch)
    w_iter: int = declared("[1, inf)")        # random partitions of the batch per step
    eps: float = declared("[0, 1)")           # shrinkage of each sub-batch's covariance towards I
    detach_second: bool = MISSING             # solo-learn's stop-gradient on each pair's second view


@register
class WMSE(Method):
    name = "wmse"
    loss_name = "wmse"
    Config = WMSEConfig
    Loss = WMSELossConfig
    views = (2, None)
    min_batch = (3, " to whiten a sub-batch")

    def __init__(self, backbone, projector, w_size: int, w_iter: int, eps: float,
                 detach_second: bool, seed: int):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.w_size, self.w_iter, self.eps = w_size, w_iter, eps
        self.detach_second, self.seed = detach_second, seed

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "WMSE":
        backbone = cls.make_backbone(cfg)
        lc = cfg.loss
        return cls(backbone, cls.make_projector(backbone.num_features, cfg.method),
                   lc.w_size, lc.w_iter, lc.eps, lc.detach_second, cfg.seed)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        w, d = cfg.loss.w_size, cfg.method.proj_out_dim
        require(cfg.batch_size % w == 0, "loss.w_size", w,
                f"must divide batch_size ({cfg.batch_size}): the batch is cut into whitening "
                f"sub-batches of w_size")
        # w_size embeddings span at most w_size - 1 directions once centred: below D + 1
        # their covariance is singular and its Cholesky factor does not exist
        require(w > d or cfg.loss.eps > 0, "loss.w_size", w,
                f"must exceed method.proj_out_dim ({d}) to whiten (or set loss.eps > 0)")

    def partitions(self, n: int, step: int) -> torch.Tensor:
        """[w_iter, n]: this step's random orders of the global batch, from a generator of
        its own seeded by (seed, step) on the CPU: every rank draws the same, a resumed run
        draws what the uninterrupted one did, and the global RNG is left alone."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % 2**63)
        return torch.stack([torch.randperm(n, generator=g) for _ in range(self.w_iter)])

    def forward(self, batch) -> dict:
        b, v = batch.views[0].shape[0], len(batch.views)
        h = self.encode(batch.views)
        z = self.projector(h)                                     # [V*B, D]
        # each view over the global batch: sub-batches and whitening as on one process
        views = [gather_with_grad(z[i * b:(i + 1) * b]) for i in range(v)]
        perms = self.partitions(views[0].shape[0], batch.now.step).to(z.device)
        loss = wmse_loss(views, self.w_size, perms, self.eps, self.detach_second)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z[:b])}
