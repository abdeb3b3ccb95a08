"""Losses that whiten the embedding: W-MSE (a Cholesky whitening of sub-batches, then the
MSE of the normalised positives) and VIbCReg (VICReg's terms on an IterNorm-whitened
projection, with the decorrelation term on the normalised covariance), and the two
whitening transforms themselves.

Each needs statistics of the *global* batch: call the losses on embeddings gathered across
processes with `sslcifar.distributed.gather_with_grad`, so every rank computes the same
loss and the gradients reach every rank in full.

Shapes: N samples (the global batch), D embedding size, V views.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .contrastive import _fp32
from .redundancy import VICREG_EPS


def whiten_cholesky(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """W-MSE's whitening (Ermolov et al., ICML 2021, "Whitening for Self-Supervised
    Representation Learning", eq. 4), as `Whitening2d` of the authors' code
    (htdt/self-supervised d9662c8, methods/whitening.py) and of solo-learn (9187ea39,
    solo/utils/whitening.py):

        xc  = x - mean(x)                                  [n, D]
        cov = (1 - eps) * xc^T xc / (n - 1) + eps * I      [D, D]   (unbiased; eps: shrinkage)
        L   = cholesky(cov)                                (cov = L L^T)
        out = xc L^-T                                      [n, D]   (cov(out) = I)

    The whitening matrix L^-1 depends on x, and the gradient flows through it.

    Args:
        x: [n, D] embeddings, n > D unless eps > 0 (the covariance must be positive definite).
        eps: shrinkage of the covariance towards the identity (both codes: 0).

    Returns:
        [n, D] whitened embeddings: zero mean, identity (unbiased) covariance.
    """
    x = _fp32(x)
    n, d = x.shape
    xc = x - x.mean(0)
    cov = xc.T @ xc / (n - 1)
    if eps:
        cov = (1 - eps) * cov + eps * torch.eye(d, dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(cov)
    # xc L^-T as a triangular solve (L^-1 xc^T) rather than an explicit inverse
    return torch.linalg.solve_triangular(chol, xc.T, upper=False).T


def wmse_loss(views: Union[torch.Tensor, Sequence[torch.Tensor]], w_size: int,
              perms: Optional[torch.Tensor] = None, eps: float = 0.0,
              detach_second: bool = False) -> torch.Tensor:
    """W-MSE (Ermolov et al., ICML 2021, eq. 6 with the sub-batches of sec. 3.1), as the
    authors' `WMSE.forward` (htdt/self-supervised d9662c8, methods/w_mse.py):

        for each permutation p of the N samples (w_iter of them):
            split p into sub-batches of w_size;
            in each, whiten every view separately (whiten_cholesky);
        loss = mean over permutations, over the V(V-1)/2 pairs of views i < j, over the N
               samples of || normalize(w_i) - normalize(w_j) ||^2     (= 2 - 2 cos)

    The authors back-propagate through both views of a pair. solo-learn (9187ea39,
    solo/losses/wmse.py) detaches the second (`detach_second=True`): with two views the
    second view's projection then gets no gradient at all.

    Args:
        views: [V, N, D] (or V tensors [N, D]), V >= 2: the embeddings of each view (row k:
            the same image).
        w_size: samples per whitening sub-batch; must divide N and, unless eps > 0, exceed D.
        perms: [w_iter, N] permutations of range(N) that form the sub-batches (the
            randomness is the caller's); None: one pass in the given order.
        eps: the whitening's shrinkage (whiten_cholesky).
        detach_second: solo-learn's stop-gradient on the second view of each pair.

    Returns:
        Scalar in [0, 4]: 0 when the whitened views point the same way for every sample.
    """
    views = [_fp32(v) for v in views]
    n = views[0].shape[0]
    if len(views) < 2:
        raise ValueError(f"wmse_loss needs at least 2 views, got {len(views)}")
    if n % w_size:
        raise ValueError(f"w_size {w_size} must divide the batch {n}")
    if perms is None:
        perms = torch.arange(n, device=views[0].device)[None]
    total = views[0].new_zeros(())
    for perm in perms:
        for idx in perm.view(-1, w_size):
            w = [F.normalize(whiten_cholesky(v[idx], eps), dim=1) for v in views]
            for i in range(len(w) - 1):
                for j in range(i + 1, len(w)):
                    other = w[j].detach() if detach_second else w[j]
                    total = total + (2 - 2 * (w[i] * other).sum(1)).sum()
    pairs = len(views) * (len(views) - 1) // 2
    return total / (n * len(perms) * pairs)


def whiten_iterative(x: torch.Tensor, group_size: int, iterations: int, eps: float
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IterNorm's whitening in training mode (Huang et al., CVPR 2019, "Iterative
    Normalization: Beyond Standardization towards Efficient Whitening", alg. 1), as
    `iterative_normalization_py` of solo-learn (9187ea39, solo/utils/whitening.py) and of the
    VIbCReg authors (ML4ITS/vibcreg, vibcreg/normalization/iter_norm.py). The D features are
    cut into G = D / group_size consecutive groups, each whitened on its own:

        xc      = x_g - mean(x_g)                       [C, N]   (C = group_size)
        Sigma   = eps * I + xc xc^T / N                 [C, C]   (biased)
        Sigma_N = Sigma / tr(Sigma)
        P_0 = I,  P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N   (Newton's iterations, T of them)
        W       = P_T / sqrt(tr(Sigma))                 (~ Sigma^-1/2)
        out_g   = W xc

    The gradient is autograd's through these operations (the references write it out by hand).
    In exact arithmetic W tends to Sigma^-1/2 as T grows; in floating point this uncoupled
    iteration amplifies rounding after some 10-15 steps (the references' too): T stays small.

    Args:
        x: [N, D] features; group_size must divide D.
        group_size: C, features whitened together.
        iterations: T, Newton's iterations.
        eps: added to Sigma's diagonal.

    Returns:
        (out [N, D], mean [G, C, 1], W [G, C, C]): the whitened features, and the batch mean
        and whitening matrix that running statistics track.
    """
    x = _fp32(x)
    n, d = x.shape
    if d % group_size:
        raise ValueError(f"group_size {group_size} must divide the feature size {d}")
    g = d // group_size
    xg = x.T.reshape(g, group_size, n)
    mean = xg.mean(-1, keepdim=True)
    xc = xg - mean
    eye = torch.eye(group_size, dtype=x.dtype, device=x.device).expand(g, -1, -1)
    sigma = eps * eye + xc @ xc.transpose(1, 2) / n
    r_tr = 1 / sigma.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]       # [G, 1, 1]
    sigma_n = sigma * r_tr
    p = eye
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
    wm = p * r_tr.sqrt()
    return (wm @ xc).reshape(d, n).T, mean, wm


def vibcreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0,
                 std_coeff: float = 25.0, cov_coeff: float = 200.0) -> torch.Tensor:
    """VIbCReg (Lee & Aune, 2021, "VIbCReg: Variance-Invariance-better-Covariance
    Regularization for Self-Supervised Learning on Time Series"), as the authors' losses
    (ML4ITS/vibcreg, vibcreg/losses/) and solo-learn's `vibcreg_loss_func` (9187ea39):

        invariance  = mean over all N*D entries of (z1 - z2)^2
        variance    = mean_d relu(1 - sqrt(var_d(z1) + 1e-4)) + the same for z2
                      (var: unbiased, over the batch; no /2, unlike vicreg)
        covariance  = mean over all D*D entries of offdiag(C(z1))^2 + the same for z2,
                      C(z) = zn^T zn, zn = z centred and each column L2-normalised over the
                      batch (the correlation matrix, its diagonal set to 0)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

    Args:
        z1, z2: [N, D] (whitened) projections of the two views.

    Returns:
        Scalar loss.
    """
    z1, z2 = _fp32(z1), _fp32(z2)
    invariance = F.mse_loss(z1, z2)
    variance = (F.relu(1 - torch.sqrt(z1.var(0) + VICREG_EPS)).mean()
                + F.relu(1 - torch.sqrt(z2.var(0) + VICREG_EPS)).mean())

    def offdiag_corr_sq(z):
        zn = F.normalize(z - z.mean(0), dim=0)
        c = zn.T @ zn
        return (c - torch.diag_embed(c.diagonal())).pow(2).mean()

    covariance = offdiag_corr_sq(z1) + offdiag_corr_sq(z2)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
