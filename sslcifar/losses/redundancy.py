"""Losses that decorrelate the embedding's dimensions instead of contrasting images:
Barlow Twins, VICReg, All4One's feature term and TiCo's covariance contrast. They need the statistics of the *global* batch: call them on
embeddings gathered across processes with `sslcifar.distributed.gather_with_grad`, so
every rank computes the same loss and the gradients reach every rank in full.

Shapes: N samples (the global batch), D embedding size.
"""
import torch
import torch.nn.functional as F

from .contrastive import _fp32

BN_EPS = 1e-5          # BatchNorm1d's eps: Barlow Twins standardises with BN(affine=False)
VICREG_EPS = 1e-4      # inside the square root of VICReg's variance term


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix [D, D], flattened [D*D - D]."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, *,
                 scale: float) -> torch.Tensor:
    """Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", eq. 1).

    Each view is standardised per feature with the batch mean and the biased variance plus
    1e-5 (a BatchNorm1d(affine=False) in training mode), then

        c = z1_hat^T z2_hat / N                                    [D, D]
        loss = scale * ( sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2 )

    (solo-learn multiplies by scale_loss = 0.1 on CIFAR; the authors use scale 1.)

    Args:
        z1, z2: [N, D] embeddings of the two views (row i: the same image).
        lambd: weight of the redundancy-reduction (off-diagonal) term.
        scale: overall factor (no default: the authors' 1 and solo-learn's 0.1 on CIFAR
            both have their users; the recipes set it in conf/loss/barlow_twins.yaml).

    Returns:
        Scalar loss. Identical, standardised views with uncorrelated features give
        lambd * sum of the off-diagonal squares of their correlation matrix.
    """
    z1, z2 = _fp32(z1), _fp32(z2)
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + BN_EPS)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + BN_EPS)
    c = z1.T @ z2 / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


def vicreg(x: torch.Tensor, y: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0) -> torch.Tensor:
    """VICReg (Bardes et al., ICLR 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning"), as the authors' `main_vicreg.py`:

        invariance = mean over all N*D entries of (x - y)^2
        variance   = mean_d relu(1 - sqrt(var_d(x) + 1e-4)) / 2 + the same for y
                     (var: unbiased, over the batch)
        covariance = sum_{i != j} cov(x)_ij^2 / D + the same for y
                     (cov = centred x^T x / (N - 1))
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

    solo-learn's variance term leaves out the two halves (twice this); we follow the
    authors, whose recipe the coefficients 25/25/1 were tuned with. With the same
    coefficients a solo-learn run weighs the variance term twice as much.

    Args:
        x, y: [N, D] embeddings of the two views.

    Returns:
        Scalar loss.
    """
    x, y = _fp32(x), _fp32(y)
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    std_x = torch.sqrt(x.var(0) + VICREG_EPS)
    std_y = torch.sqrt(y.var(0) + VICREG_EPS)
    variance = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    covariance = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


def all4one_redundancy(zt1: torch.Tensor, zt2: torch.Tensor, z1: torch.Tensor,
                       z2: torch.Tensor) -> torch.Tensor:
    """All4One's feature (redundancy-reduction) term (Estepa et al., ICCV 2023, "All4One:
    Symbiotic Neighbour Contrastive Learning via Self-Attention and Redundancy Reduction",
    sec. 3.4), as solo-learn's All4One (9187ea39): the cross-correlation of the momentum
    projections of one view with the online projections of the other, each column
    L2-normalised over the batch,

        C_12 = normalize_cols(zt1)^T normalize_cols(z2)      [D, D]   (C_21 likewise)
        on  = sqrt( (mean_i (C_12[i,i] - 1)^2 + mean_i (C_21[i,i] - 1)^2) / 2 )
        off = sqrt( (mean_{i!=j} C_12[i,j]^2 + mean_{i!=j} C_21[i,j]^2) / 2 )
        loss = (on + off) / 2

    (the method weights it by 10 x 0.5). zt1, zt2 receive no gradient.

    Args:
        zt1, zt2: [N, D] the momentum encoder's (row-normalised) projections of views 1, 2.
        z1, z2: [N, D] the online projections of views 1, 2.

    Returns:
        Scalar in [0, ...): 0 when both correlation matrices are the identity.
    """
    def corr(a, b):
        return F.normalize(_fp32(a).detach(), dim=0).T @ F.normalize(_fp32(b), dim=0)
    c12, c21 = corr(zt1, z2), corr(zt2, z1)
    on = ((c12.diagonal() - 1).pow(2).mean() + (c21.diagonal() - 1).pow(2).mean()) / 2
    off = (_off_diagonal(c12).pow(2).mean() + _off_diagonal(c21).pow(2).mean()) / 2
    return (on.sqrt() + off.sqrt()) / 2


def tico_loss(z1: torch.Tensor, z2: torch.Tensor, C: torch.Tensor, beta: float = 0.9,
              rho: float = 8.0):
    """TiCo's loss (Zhu et al., 2022, "TiCo: Transformation Invariance and Covariance
    Contrast for Self-Supervised Visual Representation Learning", eq. 5), as lightly's
    `TiCoLoss` (lightly e8d317fc, lightly/loss/tico_loss.py). With z1, z2 normalised:

        C_new = beta C + (1 - beta) z1^T z1 / N           (no gradient: a running covariance)
        loss  = 1 - mean_n <z1_n, z2_n>  +  rho mean_n z1_n^T C_new z1_n

    the invariance term pulls the views together, the covariance contrast pushes z1 away
    from the directions the recent batches filled. The method keeps C in a buffer (zeros
    at the start, as lightly) and stores C_new after each step.

    Args:
        z1: [N, D] online embeddings (not yet normalised); the gradient flows here.
        z2: [N, D] embeddings of the other views (the momentum encoder's in TiCo).
        C: [D, D] the running covariance before this step.
        beta: the running covariance's EMA coefficient (0.9).
        rho: the covariance contrast's weight (8, lightly's default and the paper's).

    Returns:
        (loss, C_new): the scalar loss and the [D, D] covariance to keep (detached).
    """
    z1 = F.normalize(_fp32(z1), dim=1)
    z2 = F.normalize(_fp32(z2), dim=1)
    batch_cov = (z1.T @ z1).detach() / z1.shape[0]
    C_new = beta * C.to(z1.dtype) + (1 - beta) * batch_cov
    invariance = 1 - (z1 * z2).sum(1).mean()
    contrast = ((z1 @ C_new) * z1).sum(1).mean()
    return invariance + rho * contrast, C_new
