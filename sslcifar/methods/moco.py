"""MoCo v2 (He et al., 2020; Chen et al., 2020): a query encoder trained by
SGD, a key encoder that follows it as an exponential moving average, and a
queue of the K most recent keys as negatives."""
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from .. import distributed as dist
from ..losses import moco_infonce
from ..models import split_batchnorm
from ..ranges import declared
from .base import Method, ProjectorConfig, TemperatureConfig, register, require
from .ema import frozen_copy


@dataclass
class MoCoConfig(ProjectorConfig):
    queue_size: int = declared("[1, inf)")        # K: negatives kept in the queue (moco.py: moco_k)
    momentum: float = declared("[0, 1]")        # m: EMA coefficient of the key encoder (moco.py: moco_m)
    symmetric: bool = MISSING        # symmetrised loss (both views as queries), summed
    shuffle_bn: bool = MISSING       # shuffle the key batch (across ranks; within it on one process)
    bn_splits: int = declared("[1, inf)")         # backbone BatchNorm statistics per group of batch/bn_splits
                                     # images (MoCo CIFAR demo: 8, one GPU acting as 8)


@dataclass
class MoCoInfoNCEConfig(TemperatureConfig):
    pass


@register
class MoCo(Method):
    name = "moco"
    loss_name = "moco_infonce"
    Config = MoCoConfig
    Loss = MoCoInfoNCEConfig
    preset = "moco_v2_cifar10"
    # as MoCo's builder: the key encoder's momentum update, then the keys, at each step
    ema_timing = "before_forward"

    def __init__(self, backbone: nn.Module, projector: nn.Module, queue_size: int,
                 temperature: float, symmetric: bool, shuffle_bn: bool):
        super().__init__()
        self.backbone = backbone                     # query encoder = backbone + projector
        self.projector = projector
        self.backbone_k = frozen_copy(backbone)      # key encoder: starts as a copy, never trained
        self.projector_k = frozen_copy(projector)
        self.K, self.T = queue_size, temperature
        self.symmetric, self.shuffle_bn = symmetric, shuffle_bn
        dim = projector[-1].out_features
        queue = nn.functional.normalize(torch.randn(queue_size, dim), dim=1)
        self.register_buffer("queue", queue)                          # [K, D], rows are keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "MoCo":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        if m.bn_splits > 1:
            split_batchnorm(backbone, m.bn_splits)      # before MoCo copies it for the keys
        return cls(backbone, projector, m.queue_size, cfg.loss.temperature, m.symmetric,
                   m.shuffle_bn)

    @classmethod
    def schedules(cls, cfg, total_steps, steps_per_epoch):
        # a constant m: theta_k <- m * theta_k + (1 - m) * theta_q (the key BN keeps its own
        # running statistics)
        return {"momentum": torch.full((total_steps,), float(cfg.method.momentum),
                                       dtype=torch.float64)}

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_k), (self.projector, self.projector_k)]

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        m = cfg.method
        keys_per_step = cfg.batch_size * (2 if m.symmetric else 1)
        require(m.queue_size >= keys_per_step, "moco_k (method.queue_size)", m.queue_size,
                f"needs >= the keys enqueued per step ({keys_per_step})")

    @classmethod
    def check_data(cls, cfg, source, world: int) -> None:
        super().check_data(cfg, source, world)
        per_process = cfg.batch_size // world
        require(per_process % cfg.method.bn_splits == 0, "method.bn_splits", cfg.method.bn_splits,
                f"must divide the batch of each process ({per_process}); use a divisor of it, "
                f"or 1 for plain BatchNorm")

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor, name: str = "queue"):
        """keys [N, D] (gathered over ranks) replace the oldest N rows of the queue buffer
        `name` (its pointer: `name`_ptr), wrapping around."""
        queue, ptr = getattr(self, name), getattr(self, name + "_ptr")
        keys = dist.gather(keys)
        n = keys.shape[0]
        rows = (ptr + torch.arange(n, device=keys.device)) % self.K
        queue[rows] = keys.to(queue.dtype)
        ptr.copy_((ptr + n) % self.K)

    def _encode_k(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projector_k(self.backbone_k(x)), dim=1)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor, encode=None):
        """Normalised keys [N, D] of x [N, 3, H, W] (or the tuple of tensors [N, ...] that
        `encode` returns: DenseCL's), in x's order. With shuffle_bn the key encoder sees the
        batch in a random order, so BatchNorm cannot use in-batch statistics to find the
        positive (MoCo's 'cheating' through BN): across ranks when there are several,
        within the batch on one process (which matters with method.bn_splits > 1, where
        each BN group is a random subset of the keys)."""
        encode = encode or self._encode_k
        if not self.shuffle_bn:
            return encode(x)
        each = lambda out, f: tuple(map(f, out)) if isinstance(out, tuple) else f(out)  # noqa: E731
        if not dist.is_distributed():
            perm = torch.randperm(x.shape[0], device=x.device)
            return each(encode(x[perm]), lambda k: k[torch.argsort(perm)])
        x_all = dist.gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        torch.distributed.broadcast(perm, src=0)
        b, r = x.shape[0], dist.rank()
        k_all = each(encode(x_all[perm[r * b:(r + 1) * b]]), dist.gather)
        return each(k_all, lambda k: k[torch.argsort(perm)][r * b:(r + 1) * b])

    def forward(self, batch) -> dict:
        x1, x2 = batch.views
        h1 = self.backbone(x1)
        q1 = nn.functional.normalize(self.projector(h1), dim=1)      # queries: [N, D]
        k2 = self._keys(x2)               # keys: [N, D], by the encoder the loop just updated
        # the loss uses the queue as it was before this batch's keys are enqueued, over the
        # global batch (the mean over every rank's queries, as DDP's gradient average of
        # MoCo's per-GPU losses; the logged value is then the global one too)
        loss = moco_infonce(dist.gather_with_grad(q1), dist.gather(k2), self.queue.clone(), self.T)
        keys = k2
        if self.symmetric:
            q2 = nn.functional.normalize(self.projector(self.backbone(x2)), dim=1)
            k1 = self._keys(x1)
            # the sum, as the MoCo CIFAR-10 demo (`loss_12 + loss_21`), not the mean
            loss = loss + moco_infonce(dist.gather_with_grad(q2), dist.gather(k1),
                                       self.queue.clone(), self.T)
            keys = torch.cat([k1, k2])
        self._dequeue_and_enqueue(keys)
        return {"loss": loss, "features": h1.detach(), "z_std": self.collapse_std(q1)}
