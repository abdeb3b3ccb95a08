"""LeJEPA's losses (Balestriero & LeCun, 2025, "LeJEPA: Provable and Scalable
Self-Supervised Learning Without the Heuristics"): SIGReg, a sketched test that embeddings
are an isotropic Gaussian, and the invariance of every view to the mean of the global views.

Shapes: V views, N images (the global batch), D embedding size, S slices (random unit
directions), K knots of the frequency grid. Computed in float32 at least.
"""
from typing import Optional

import torch

from .contrastive import _fp32


def sigreg_loss(z: torch.Tensor, num_slices: int = 1024, generator: Optional[torch.Generator] = None,
                knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """SIGReg (LeJEPA, sec. 4): the Epps-Pulley statistic of the embeddings projected on
    `num_slices` random unit directions, against the standard normal, averaged over the
    directions (and over views), as lightly's `SIGReg` (lightly e8d317fc,
    lightly/loss/lejepa_loss.py, after the authors' galilai-group/lejepa). For one
    direction a and the projections x_n = <z_n, a>:

        EP = N * integral_{-t_max}^{t_max} |1/N sum_n exp(i t x_n) - exp(-t^2/2)|^2 exp(-t^2/2) dt

    the integral by the trapezoidal rule on `knots` points of [0, t_max] (the integrand is
    even). The directions are drawn from `generator` (on the CPU, then moved): give every
    rank the same generator state and 2 processes equal 1 (lightly broadcasts rank 0's).

    Args:
        z: [..., N, D] embeddings (e.g. [V, N, D]: each view tested on its own).
        num_slices: S random directions.
        generator: the draw of the directions; None: torch's global generator.
        knots: K points of the frequency grid (> 1).
        t_max: the grid's end (> 0).

    Returns:
        Scalar: the mean statistic. Near 0 for Gaussian embeddings, about N * const for a
        collapsed batch.
    """
    if knots < 2 or t_max <= 0 or num_slices < 1:
        raise ValueError(f"sigreg_loss needs knots > 1, t_max > 0, num_slices >= 1; got "
                         f"{knots}, {t_max}, {num_slices}")
    z = _fp32(z)
    n, d = z.shape[-2], z.shape[-1]
    a = torch.randn(d, num_slices, generator=generator, dtype=torch.float64)
    a = (a / a.norm(dim=0)).to(device=z.device, dtype=z.dtype)             # [D, S] unit columns
    t = torch.linspace(0, t_max, knots, dtype=z.dtype, device=z.device)   # [K]
    gauss = torch.exp(-t.square() / 2)                                    # the target's CF
    dt = t_max / (knots - 1)
    weights = torch.full_like(t, 2 * dt)                                  # both halves of the axis
    weights[[0, -1]] = dt
    xt = (z @ a).unsqueeze(-1) * t                                        # [..., N, S, K]
    err = (xt.cos().mean(-3) - gauss).square() + xt.sin().mean(-3).square()   # [..., S, K]
    return (n * (err @ (weights * gauss))).mean()


def lejepa_loss(z: torch.Tensor, num_global: int, lambda_param: float = 0.05,
                num_slices: int = 1024, generator: Optional[torch.Generator] = None,
                knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """LeJEPA's loss, as lightly's `LeJEPALoss` (lightly e8d317fc): SIGReg of every view's
    embeddings plus the invariance of every view (global and local) to the mean of the
    global views' embeddings of the same image,

        loss = lambda * SIGReg(z) + (1 - lambda) * mean_{v,n,d} (c[n, d] - z[v, n, d])^2,
        c = mean of z[:num_global] over the global views.

    Args:
        z: [V, N, D] projections, the `num_global` global views first, then the local ones.
        num_global: how many of the V views are global (the first ones).
        lambda_param: SIGReg's weight in [0, 1] (0.05, the reference's).
        num_slices, generator, knots, t_max: as `sigreg_loss`.

    Returns:
        Scalar loss.
    """
    if not 0 <= lambda_param <= 1 or not 1 <= num_global <= z.shape[0]:
        raise ValueError(f"lejepa_loss needs lambda_param in [0, 1] and 1 <= num_global <= "
                         f"{z.shape[0]}; got {lambda_param}, {num_global}")
    z = _fp32(z)
    centre = z[:num_global].mean(0)                                       # [N, D]
    invariance = (centre - z).square().mean()
    return (lambda_param * sigreg_loss(z, num_slices, generator, knots, t_max)
            + (1 - lambda_param) * invariance)
