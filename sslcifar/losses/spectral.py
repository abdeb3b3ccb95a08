"""Losses on the spectrum of a batch of embeddings: MMCR's nuclear norms, EMP-SSL's total
coding rate (a log-determinant).

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


def total_coding_rate(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """The total coding rate of N embeddings (Ma et al., 2007; Yu et al., 2020, MCR^2), as
    the EMP-SSL authors' `TotalCodingRate.compute_discrimn_loss` (tsb0601/EMP-SSL bce1514c,
    loss.py), eps not squared as theirs (the paper writes eps^2):

        R(Z) = 1/2 logdet(I_D + D / (N eps) Z^T Z)

    The number of bits (in nats) to code the embeddings up to precision eps: large when
    they spread over many directions, 0 when they are all 0.

    Args:
        z: [N, D] embeddings (EMP-SSL's are unit rows).
        eps: the precision, > 0 (0.2 in EMP-SSL).

    Returns:
        Scalar R >= 0.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    z = _fp32(z)
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.logdet(eye + d / (n * eps) * z.T @ z) / 2


def emp_ssl_loss(z: torch.Tensor, eps: float = 0.2, inv_coef: float = 200.0) -> torch.Tensor:
    """EMP-SSL's loss (Tong et al., 2023, "EMP-SSL: Towards Self-Supervised Learning in One
    Training Epoch", eq. 3), as the authors' main.py (tsb0601/EMP-SSL bce1514c): over the V
    patches of each image, the coding rate of each patch's batch is maximised and each
    patch pulled to the mean of its image's patches,

        loss = -1/V sum_v R(z_v)  -  inv_coef / V sum_v mean_n cos(z[v, n], zbar_n),
        zbar_n = 1/V sum_v z[v, n]     (not detached, not renormalised)

    lightly's `EMPSSLLoss` adds +R instead of -R (it minimises the coding rate); this is the
    authors' sign, confirmed in their issue tracker.

    Args:
        z: [V, N, D] unit embeddings, patch by patch (call it on the global batch).
        eps: the coding rate's precision (0.2).
        inv_coef: the invariance term's weight (200, the authors' patch_sim).

    Returns:
        Scalar loss.
    """
    z = _fp32(z)
    rate = torch.stack([total_coding_rate(zv, eps) for zv in z]).mean()
    invariance = F.cosine_similarity(z, z.mean(0, keepdim=True), dim=-1).mean()
    return -rate - inv_coef * invariance
