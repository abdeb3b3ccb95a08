"""DenseCL (Wang et al., CVPR 2021, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training"): MoCo v2 with a second, dense head on the backbone's last feature map. Each
position of the query view's dense projection is contrasted against the key view's dense
projection at the position whose backbone features match best, with a second queue of
(pooled) dense keys as negatives (`sslcifar.losses.densecl_loss`, `densecl_match`).

As the authors' code (WXinlong/DenseCL: openselfsup/models/densecl.py, necks.py
DenseCLNeck): the global head is MoCo v2's MLP on the pooled features, the dense head
1x1 conv -> ReLU -> 1x1 conv, both normalised; lambda 0.5, one direction (view 1 queries,
view 2 keys); everything else (momentum encoder before the forward, shuffled key batch,
split BatchNorm) is MoCo's (`sslcifar.methods.moco`). Both queues are buffers.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import distributed as dist
from ..losses import densecl_loss, densecl_match
from ..models import split_batchnorm
from ..ranges import declared
from .base import TemperatureConfig, register, require
from .ema import frozen_copy
from .moco import MoCo, MoCoConfig


@dataclass
class DenseCLConfig(MoCoConfig):
    dense_hidden_dim: Optional[int] = declared("[1, inf)")   # the dense head's hidden channels; null: the backbone's


@dataclass
class DenseCLLossConfig(TemperatureConfig):
    loss_lambda: float = declared("[0, 1]")     # the dense term's weight; the global one gets 1 - lambda


def dense_head(channels: int, hidden: int, out: int) -> nn.Sequential:
    """DenseCLNeck's dense branch: a 1x1 conv MLP over every position of a feature map."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out, 1))


@register
class DenseCL(MoCo):
    name = "densecl"
    loss_name = "densecl"
    Config = DenseCLConfig
    Loss = DenseCLLossConfig
    preset = None
    needs_feature_map = True

    def __init__(self, backbone, projector, dense, queue_size: int, temperature: float,
                 loss_lambda: float, shuffle_bn: bool):
        super().__init__(backbone, projector, queue_size, temperature, False, shuffle_bn)
        self.dense_head = dense
        self.dense_head_k = frozen_copy(dense)
        self.loss_lambda = loss_lambda
        dim = dense[-1].out_channels
        self.register_buffer("dense_queue", nn.functional.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("dense_queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, num_train: int, num_classes: int) -> "DenseCL":
        m = cfg.method
        backbone = cls.make_backbone(cfg)
        projector = cls.make_projector(backbone.num_features, m)
        dense = dense_head(backbone.num_features, m.dense_hidden_dim or backbone.num_features,
                           m.proj_out_dim)
        if m.bn_splits > 1:
            split_batchnorm(backbone, m.bn_splits)      # before the key encoder is copied
        return cls(backbone, projector, dense, m.queue_size, cfg.loss.temperature,
                   cfg.loss.loss_lambda, m.shuffle_bn)

    @classmethod
    def check_config(cls, cfg, view_sizes) -> None:
        super().check_config(cfg, view_sizes)
        require(not cfg.method.symmetric, "method.symmetric", True,
                "DenseCL contrasts view 1's queries with view 2's keys only (the authors')")

    def momentum_pairs(self):
        return super().momentum_pairs() + [(self.dense_head, self.dense_head_k)]

    def _encode_k_dense(self, x: torch.Tensor):
        """The key encoder on x: (global key [N, D], dense keys [N, D, S], pooled dense key
        [N, D], backbone map [N, C, S]), normalised as the authors' (not the map)."""
        fmap = self.backbone_k.feature_map(x)
        k = nn.functional.normalize(self.projector_k(self.backbone_k.pool(fmap)), dim=1)
        grid = self.dense_head_k(fmap)                                    # [N, D, h, w]
        k_grid = nn.functional.normalize(grid.flatten(2), dim=1)
        k_pooled = nn.functional.normalize(grid.mean((2, 3)), dim=1)
        return k, k_grid, k_pooled, fmap.flatten(2)

    def forward(self, batch) -> dict:
        x1, x2 = batch.views
        fmap = self.backbone.feature_map(x1)                              # [N, C, h, w]
        h1 = self.backbone.pool(fmap)
        q = nn.functional.normalize(self.projector(h1), dim=1)            # [N, D]
        q_grid = nn.functional.normalize(self.dense_head(fmap).flatten(2), dim=1)   # [N, D, S]
        k, k_grid, k_pooled, fmap_k = self._keys(x2, self._encode_k_dense)
        match = densecl_match(dist.gather(fmap.detach().flatten(2)), dist.gather(fmap_k))
        loss = densecl_loss(dist.gather_with_grad(q), dist.gather(k), self.queue.clone(),
                            dist.gather_with_grad(q_grid), dist.gather(k_grid), match,
                            self.dense_queue.clone(), self.T, self.loss_lambda)
        self._dequeue_and_enqueue(k)
        self._dequeue_and_enqueue(k_pooled, "dense_queue")
        return {"loss": loss, "features": h1.detach(), "z_std": self.collapse_std(q)}
