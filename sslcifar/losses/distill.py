"""Losses between a network's outputs over K prototypes and targets made from them:
DINO's self-distillation (a teacher's centred, sharpened softmax) and SwAV's swapped
prediction of Sinkhorn-Knopp codes.

Shapes: B images (the global batch: call these on outputs gathered across processes,
as the methods do; every sum over the batch is then a sum over all processes' images,
which is what the originals' all-reduces compute), K prototypes, V crops.
Crop-major layout: rows [v*B, (v+1)*B) hold crop v of every image.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import _fp32


class DINOLoss(nn.Module):
    """DINO's loss (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision
    Transformers", Algorithm 1), with the centre as a buffer.

    For teacher crop t (a global crop) and student crop s != t:
        p_t = softmax((teacher_t - center) / teacher_temp)        (no gradient)
        H(t, s) = mean over images of -sum_k p_t log softmax(student_s / student_temp)
    loss = mean of H over every (t, s) pair of different crops. After the loss,
        center <- m * center + (1 - m) * mean over the images and global crops of teacher_out
    (the raw teacher output); the loss of this call uses the centre from before it.

    Args:
        out_dim: K.
        n_global: crops the teacher sees (the first n_global crops of the student's).
        student_temp: temperature of the student's softmax.
        center_momentum: m.

    Call: loss(student_out [V*B, K], teacher_out [n_global*B, K], teacher_temp) -> scalar.
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.n_global, self.student_temp, self.center_momentum = n_global, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor,
                teacher_temp: float) -> torch.Tensor:
        student_out, teacher_out = _fp32(student_out), _fp32(teacher_out).detach()
        b = teacher_out.shape[0] // self.n_global
        n_crops = student_out.shape[0] // b
        log_p = F.log_softmax(student_out / self.student_temp, dim=1).split(b)     # V x [B, K]
        targets = F.softmax((teacher_out - self.center) / teacher_temp, dim=1).split(b)
        total, pairs = 0.0, 0
        for t, q in enumerate(targets):
            for s in range(n_crops):
                if s != t:
                    total = total + (-q * log_p[s]).sum(dim=1).mean()
                    pairs += 1
        self.update_center(teacher_out)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype),
                                                    alpha=1 - self.center_momentum)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes (Caron et al., 2020, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", sec. 3.1 and its `distributed_sinkhorn`):
    an assignment of the B samples to the K prototypes that uses every prototype equally.

        Q = exp(scores / epsilon)^T, Q /= sum(Q)                   [K, B]
        repeat: rows  Q /= Q.sum(1); Q /= K     (each prototype gets 1/K of the mass)
                cols  Q /= Q.sum(0); Q /= B     (each sample gets 1/B)
        return (Q * B)^T                                            [B, K], rows sum to 1

    Pass the global batch (SwAV all-reduces these sums across processes; gathering the
    scores first gives the same codes).

    Args:
        scores: [B, K] similarities of the samples to the prototypes.
        epsilon: entropy regularisation (0.05).
        iterations: normalisation rounds (3).
    """
    q = torch.exp(_fp32(scores) / epsilon).T                                    # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def swav_loss(scores: torch.Tensor, nmb_crops: int, crops_for_assign: Sequence[int] = (0, 1),
              temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
              queue_scores: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al., 2020, eq. 3), as its main_swav.py.

    For each assignment crop a: codes q_a = sinkhorn(scores of crop a) (no gradient), and
        loss_a = mean over every other crop v of  -mean over images of sum_k q_a log softmax(scores_v / T)
    loss = mean over the assignment crops of loss_a.

    Args:
        scores: [nmb_crops * B, K] crop-major prototype scores of all crops.
        nmb_crops: V, the number of crops per image.
        crops_for_assign: the crops whose codes are predicted (the two global crops).
        temperature: T of the prediction softmax.
        queue_scores: per assignment crop, scores [Q, K] of queued embeddings of earlier
            batches, appended before Sinkhorn so that small batches are balanced over more
            samples (SwAV's queue); the batch's own rows are kept. None: no queue.
    """
    b = scores.shape[0] // nmb_crops
    crops = _fp32(scores).split(b)
    total = 0.0
    for i, a in enumerate(crops_for_assign):
        with torch.no_grad():
            extra = queue_scores[i] if queue_scores is not None else None
            s = crops[a] if extra is None else torch.cat([crops[a], _fp32(extra)])
            q = sinkhorn(s, epsilon, iterations)[:b]
        sub = 0.0
        for v in range(nmb_crops):
            if v != a:
                sub = sub + (-q * F.log_softmax(crops[v] / temperature, dim=1)).sum(dim=1).mean()
        total = total + sub / (nmb_crops - 1)
    return total / len(crops_for_assign)
