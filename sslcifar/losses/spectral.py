"""Losses on the singular values of a batch of embeddings: MMCR's nuclear norms.

Shapes: N images (the global batch), V views per image, D embedding size. The singular
values are computed in float32 at least (no bf16 SVD).
"""
import torch
import torch.nn.functional as F

from .contrastive import _fp32


def mmcr_loss(z: torch.Tensor, lmbda: float = 0.0) -> torch.Tensor:
    """Maximum Manifold Capacity Representations (Yerxa et al., NeurIPS 2023, "Learning
    Efficient Coding of Natural Images with Maximum Manifold Capacity Representations",
    eq. 3), as the authors' `MMCR_Loss` (ThomasYerxa/mmcr 287db455,
    mmcr/cifar_stl/loss_mmcr.py): each image's views, normalised, form a manifold whose
    centroid is their mean; the loss is the negative nuclear norm of the [N, D] matrix of
    centroids (their spread), plus lmbda times the mean nuclear norm of each image's
    [D, V] matrix of views (the local term, 0 in the authors' CIFAR runs):

        c_n = 1/V sum_v z[n, v] / |z[n, v]|
        loss = -||C||_* + lmbda / N sum_n ||Z_n||_*

    lightly's `MMCRLoss` does not normalise and takes online and momentum outputs; this is
    the authors' loss. Call it on the global batch.

    Args:
        z: [N, V, D] embeddings, view by view for each image.
        lmbda: weight of the local nuclear norms (>= 0).

    Returns:
        Scalar loss, at least -min(N, D) (orthogonal unit centroids: views that agree).
    """
    if lmbda < 0:
        raise ValueError(f"lmbda must be >= 0, got {lmbda}")
    z = F.normalize(_fp32(z), dim=-1)
    loss = -torch.linalg.svdvals(z.mean(1)).sum()
    if lmbda:
        loss = loss + lmbda * torch.linalg.svdvals(z).sum() / z.shape[0]
    return loss
