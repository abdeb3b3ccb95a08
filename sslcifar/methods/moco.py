"""MoCo v2 (He et al., 2020; Chen et al., 2020): a query encoder trained by
SGD, a key encoder that follows it as an exponential moving average, and a
queue of the K most recent keys as negatives."""
import copy
from typing import List, Optional

import torch
from torch import nn

from .. import distributed as dist
from ..losses import moco_infonce


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module, queue_size: int,
                 momentum: float, temperature: float, symmetric: bool, shuffle_bn: bool):
        super().__init__()
        self.backbone = backbone                     # query encoder = backbone + projector
        self.projector = projector
        self.backbone_k = copy.deepcopy(backbone)    # key encoder: starts as a copy, never trained
        self.projector_k = copy.deepcopy(projector)
        for p in list(self.backbone_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad = False
        self.K, self.m, self.T = queue_size, momentum, temperature
        self.symmetric, self.shuffle_bn = symmetric, shuffle_bn
        dim = projector[-1].out_features
        queue = nn.functional.normalize(torch.randn(queue_size, dim), dim=1)
        self.register_buffer("queue", queue)                          # [K, D], rows are keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        """theta_k <- m * theta_k + (1 - m) * theta_q (the key BN keeps its own running stats)."""
        for q, k in ((self.backbone, self.backbone_k), (self.projector, self.projector_k)):
            torch._foreach_lerp_(list(k.parameters()), list(q.parameters()), 1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor):
        """keys [N, D] (gathered over ranks) replace the oldest N rows, wrapping around."""
        keys = dist.gather(keys)
        n = keys.shape[0]
        rows = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.K
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % self.K)

    def _encode_k(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projector_k(self.backbone_k(x)), dim=1)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys [N, D] of x [N, 3, H, W], in x's order. With shuffle_bn the
        key encoder sees the batch in a random order, so BatchNorm cannot use in-batch
        statistics to find the positive (MoCo's 'cheating' through BN): across ranks
        when there are several, within the batch on one process (which matters with
        method.bn_splits > 1, where each BN group is a random subset of the keys)."""
        encode = self._encode_k
        if not self.shuffle_bn:
            return encode(x)
        if not dist.is_distributed():
            perm = torch.randperm(x.shape[0], device=x.device)
            return encode(x[perm])[torch.argsort(perm)]
        x_all = dist.gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        torch.distributed.broadcast(perm, src=0)
        b, r = x.shape[0], dist.rank()
        k_all = dist.gather(encode(x_all[perm[r * b:(r + 1) * b]]))
        return k_all[torch.argsort(perm)][r * b:(r + 1) * b]

    def forward(self, views: List[torch.Tensor], index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> dict:
        x1, x2 = views
        h1 = self.backbone(x1)
        q1 = nn.functional.normalize(self.projector(h1), dim=1)      # queries: [N, D]
        self._momentum_update_key_encoder()
        k2 = self._keys(x2)                                           # keys: [N, D]
        # the loss uses the queue as it was before this batch's keys are enqueued
        loss = moco_infonce(q1, k2, self.queue.clone(), self.T)
        keys = k2
        if self.symmetric:
            q2 = nn.functional.normalize(self.projector(self.backbone(x2)), dim=1)
            k1 = self._keys(x1)
            # the sum, as the MoCo CIFAR-10 demo (`loss_12 + loss_21`), not the mean
            loss = loss + moco_infonce(q2, k1, self.queue.clone(), self.T)
            keys = torch.cat([k1, k2])
        self._dequeue_and_enqueue(keys)
        return {"loss": loss, "features": h1.detach()}
