"""The support set of NNCLR, NNBYOL and NNSiam (Dwibedi et al., 2021, "With a Little Help
from My Friends", sec. 3.2): a FIFO queue of recent projections, and each view's
projection replaced by its nearest neighbour (cosine) there.

One module, shared by the three methods, All4One (k neighbours each) and ReSSL (its
queue). Semantics of solo-learn at 9187ea39 (`find_nn`, `dequeue_and_enqueue` of
solo/methods/nnclr.py), the reference, as the NNCLR authors released no code:
- the queue starts as random unit vectors, so the first queue_size / batch steps also find
  random neighbours (solo-learn's start; the paper does not say);
- neighbours are looked up in the queue as it was before this step's projections enter it;
- one view's projections are enqueued per step (the first view's), gathered over every
  rank, with their labels (for the logged neighbour accuracy `nn_acc`, never for training).
solo-learn requires the queue size to be a multiple of the global batch; ours wraps
around like MoCo's queue, so any size at least the global batch works.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..losses.contrastive import _fp32
from ..ranges import declared
from .base import require


@dataclass
class SupportSetConfig:
    queue_size: int = declared("[1, inf)")     # projections kept in the support set (FIFO)


def check_support_set(cfg) -> None:
    """The queue must hold at least one step's projections (the global batch)."""
    require(cfg.method.queue_size >= cfg.batch_size, "method.queue_size", cfg.method.queue_size,
            f"needs >= the projections enqueued per step (batch_size={cfg.batch_size})")


class SupportSet(nn.Module):
    """queue [K, D] of unit vectors, their labels [K] (-1: none yet), and the next row."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The nearest neighbour by cosine of each row of z [N, D] (any scale): its index
        [N] in the queue and the queue row [N, D] (unit length, no gradient)."""
        sim = F.normalize(_fp32(z), dim=1) @ self.queue.to(_fp32(z).dtype).T      # [N, K]
        idx = sim.argmax(dim=1)
        return idx, self.queue[idx].to(z.dtype)

    @torch.no_grad()
    def neighbours(self, z: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The k nearest rows by cosine of each row of z [N, D], nearest first: their indices
        [N, k] and the rows [N, k, D] (All4One's sequences of neighbours; the first is
        `nearest`'s up to ties)."""
        sim = F.normalize(_fp32(z), dim=1) @ self.queue.to(_fp32(z).dtype).T      # [N, K]
        idx = sim.topk(k, dim=1).indices
        return idx, self.queue[idx].to(z.dtype)

    @torch.no_grad()
    def neighbour_accuracy(self, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """% of rows whose neighbour has the same label (a monitor, as solo-learn's nn_acc;
        0 while the queue holds no labelled projection)."""
        return (self.labels[idx] == labels).float().mean() * 100

    @torch.no_grad()
    def push(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """z [N, D] (normalised here) and labels [N] of this rank, gathered over every rank
        in rank order, replace the oldest rows (wrapping around)."""
        z, labels = dist.gather(F.normalize(_fp32(z), dim=1)), dist.gather(labels)
        rows = (self.ptr + torch.arange(z.shape[0], device=z.device)) % self.size
        self.queue[rows] = z.to(self.queue.dtype)
        self.labels[rows] = labels.to(self.labels.device)
        self.ptr.copy_((self.ptr + z.shape[0]) % self.size)
