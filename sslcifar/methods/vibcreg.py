"""VIbCReg (Lee & Aune, 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization
for Self-Supervised Learning on Time Series"): VICReg whose projector ends in IterNorm
whitening and whose decorrelation term is taken on the normalised covariance (the
correlation matrix), `sslcifar.losses.vibcreg_loss`.

As the authors' code (ML4ITS/vibcreg, vibcreg/frameworks/vibcreg_.py) and solo-learn
(9187ea39, solo/methods/vibcreg.py): a 3-layer projector (Linear, BatchNorm, activation)
x 2 then Linear, IterNorm (64 groups, 5 iterations, affine) last, each view through IterNorm
on its own (its running statistics move twice per step). The authors' activation is ReLU;
solo-learn's is GELU (`method.proj_activation=gelu`, the preset's).

Where we differ from both: IterNorm whitens each view over the *global* batch (gathered with
its gradient), so 2 processes train exactly as 1; theirs uses each process's batch.
"""
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from ..distributed import gather_with_grad
from ..losses import vibcreg_loss, whiten_iterative
from ..ranges import declared
from .base import LossConfig, Method, ProjectorConfig, register

ITERNORM_EPS = 1e-5          # added to each group's covariance (both references)
ITERNORM_MOMENTUM = 0.1      # of its running mean and whitening matrix (both references)


@dataclass
class VIbCRegConfig(ProjectorConfig):
    proj_activation: str = declared(choices=("relu", "gelu"))   # relu: the authors'; gelu: solo-learn's
    iternorm: bool = MISSING                           # IterNorm whitening after the projector
    iternorm_groups: int = declared("[1, inf)")       # feature groups whitened separately
    iternorm_iterations: int = declared("[1, inf)")   # Newton's iterations (T)


@dataclass
class VIbCRegLossConfig(LossConfig):
    sim_coeff: float = declared("[0, inf)")        # invariance (MSE) weight
    std_coeff: float = declared("[0, inf)")        # variance weight
    cov_coeff: float = declared("[0, inf)")        # weight of the normalised covariance term


def iternorm_group_size(num_features: int, num_groups: int) -> int:
    """The references' grouping: ceil(D / num_groups) features per group, halved until it
    divides D (2048 features in 64 groups: 32 each)."""
    size = (num_features - 1) // num_groups + 1
    while num_features % size:
        size //= 2
    return size


class IterNorm(nn.Module):
    """IterNorm (Huang et al., CVPR 2019) with an affine output, as the references'
    `IterNorm(D, num_groups, T, dim=2, affine=True)`. Training mode: the batch [N, D] is
    whitened by `whiten_iterative`, and the running mean and whitening matrix move towards
    the batch's by ITERNORM_MOMENTUM; eval mode: the running ones whiten. Both are buffers,
    so checkpoints and exact resume carry them."""

    def __init__(self, num_features: int, num_groups: int, iterations: int):
        super().__init__()
        self.group_size = iternorm_group_size(num_features, num_groups)
        self.iterations = iterations
        groups = num_features // self.group_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(groups, self.group_size, 1))
        self.register_buffer("running_wm", torch.eye(self.group_size).repeat(groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out, mean, wm = whiten_iterative(x, self.group_size, self.iterations, ITERNORM_EPS)
            with torch.no_grad():
                m = ITERNORM_MOMENTUM
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_wm.mul_(1 - m).add_(m * wm.to(self.running_wm.dtype))
        else:
            n, d = x.shape
            xc = x.T.reshape(-1, self.group_size, n) - self.running_mean.to(x.dtype)
            out = (self.running_wm.to(x.dtype) @ xc).reshape(d, n).T
        return out * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, group_size={self.group_size}, T={self.iterations}"


@register
class VIbCReg(Method):
    name = "vibcreg"
    loss_name = "vibcreg"
    Config = VIbCRegConfig
    Loss = VIbCRegLossConfig

    def __init__(self, backbone, projector, iternorm, sim_coeff: float, std_coeff: float,
                 cov_coeff: float):
        super().__init__()
        self.backbone, self.projector, self.iternorm = backbone, projector, iternorm
        self.coeffs = (sim_coeff, std_coeff, cov_coeff)

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "VIbCReg":
        m, lc = cfg.method, cfg.loss
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        if m.proj_activation == "gelu":
            for i, layer in enumerate(projector):
                if isinstance(layer, nn.ReLU):
                    projector[i] = nn.GELU()
        iternorm = (IterNorm(m.proj_out_dim, m.iternorm_groups, m.iternorm_iterations)
                    if m.iternorm else nn.Identity())
        return cls(backbone, projector, iternorm, lc.sim_coeff, lc.std_coeff, lc.cov_coeff)

    def forward(self, batch) -> dict:
        b = batch.views[0].shape[0]
        h = self.encode(batch.views)
        z = self.projector(h)                                     # [2B, D]
        # IterNorm's statistics and the loss's over the global batch, view by view
        z1 = self.iternorm(gather_with_grad(z[:b]))
        z2 = self.iternorm(gather_with_grad(z[b:]))
        loss = vibcreg_loss(z1, z2, *self.coeffs)
        return {"loss": loss, "features": h[:b].detach(), "z_std": self.collapse_std(z1)}
