"""The invariance gradient penalty of Foster et al. (ICLR 2021), "Improving Transformation
Invariance in Contrastive Representation Learning", eq. 7, as their invclr.py computes it."""
from typing import Optional

import torch
import torch.nn.functional as F


def gradient_penalty(h: torch.Tensor, theta: torch.Tensor, theta_extra: torch.Tensor,
                     signs: Optional[torch.Tensor] = None, normalize: bool = True,
                     upper_limit: Optional[float] = 1.0,
                     generator: Optional[torch.Generator] = None,
                     reduce: bool = True) -> torch.Tensor:
    """How much the representation moves when the nuisance parameters do.

        h_hat = h / ||h|| per row (normalize)                               [B, D]
        G = d( sum_{b,k} s_bk h_hat_bk ) / d theta                           [B, P]
            (s: Rademacher signs, a cheap random projection of the Jacobian)
        penalty = mean over m, b of ( sum_t G_bt (theta'_mbt - theta_bt) )^2, at most upper_limit

    G is computed with create_graph=True, so the penalty back-propagates into the encoder
    (a double backward). Above upper_limit the clamp makes its gradient 0, as the original.

    Args:
        h: [B, D] representations computed from theta (view 1 of a batch).
        theta: [B, P] the nuisance parameters that made the view; requires grad.
        theta_extra: [M, B, P] fresh draws of the parameters (the original: M = 100).
        signs: [B, D] of +-1, or None to draw them (from `generator`).
        normalize: differentiate h / ||h|| (the original's default) instead of h.
        upper_limit: clamp of the penalty (None: no clamp).
        reduce: False returns the terms (sum_t G_bt (theta'_mbt - theta_bt))^2 [M, B], to be
            averaged (and clamped) over the global batch by the caller.

    Returns:
        Scalar penalty, >= 0 (or its terms [M, B]).
    """
    hh = F.normalize(h, dim=1) if normalize else h
    if signs is None:
        signs = torch.randint(0, 2, hh.shape, generator=generator, device=hh.device,
                              dtype=hh.dtype) * 2 - 1
    (grad,) = torch.autograd.grad((signs * hh).sum(), theta, create_graph=True)   # [B, P]
    delta = theta_extra - theta.detach()[None]                                     # [M, B, P]
    terms = (grad[None] * delta).sum(dim=2) ** 2                                  # [M, B]
    if not reduce:
        return terms
    penalty = terms.mean()
    return penalty if upper_limit is None else torch.clamp(penalty, max=upper_limit)
