"""Losses that regress one view's embedding onto the other's, with a stop-gradient:
BYOL, SimSiam and FastSiam (onto the mean of the other views). Without negatives, they
rely on the predictor and the stop-gradient (and, for BYOL, a slowly moving target) to
avoid collapse.

Shapes: N samples, D embedding size.
"""
import torch
import torch.nn.functional as F

from .contrastive import _fp32


def _mean_cos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(_fp32(p), _fp32(z).detach(), dim=1).mean()


def byol(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al., 2020, "Bootstrap Your Own Latent", eq. 2):
    the squared distance of the normalised prediction and target,
    ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), averaged over the batch; no gradient into z.
    The method sums it over the two directions (range [0, 8]).

    Args:
        p: [N, D] predictions of the online network for one view.
        z: [N, D] the target network's projections of the other view.

    Returns:
        Scalar in [0, 4]; 0 when p is parallel to z.
    """
    return 2 - 2 * _mean_cos(p, z)


def simsiam(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric loss (Chen & He, 2021, "Exploring Simple Siamese Representation
    Learning", eq. 2): -1/2 (mean cos(p1, sg(z2)) + mean cos(p2, sg(z1))), sg = stop-gradient.

    Args:
        p1, p2: [N, D] predictions for views 1 and 2.
        z1, z2: [N, D] projections of views 1 and 2 (no gradient flows into them here).

    Returns:
        Scalar in [-1, 1]; -1 when every prediction is parallel to the other view's projection.
    """
    return -0.5 * (_mean_cos(p1, z2) + _mean_cos(p2, z1))


def fastsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """FastSiam's loss (Pototzky et al., 2022, "FastSiam: Resource-Efficient Self-supervised
    Learning on a Single GPU"), as lightly's benchmark `FastSiamModel` (lightly e8d317fc):
    each view's prediction regresses, by negative cosine, the mean of the *other* views'
    projections, with a stop-gradient; averaged over the views and the batch:

        loss = -1/V sum_i mean_n cos(p[n, i], sg(1/(V-1) sum_{j != i} z[n, j]))

    With V = 2 it is SimSiam's symmetric loss.

    Args:
        p: [N, V, D] predictions, view by view.
        z: [N, V, D] projections of the same views (no gradient flows into them here).

    Returns:
        Scalar in [-1, 1]; -1 when every prediction is parallel to its target.
    """
    v = z.shape[1]
    z = _fp32(z).detach()
    targets = (z.sum(1, keepdim=True) - z) / (v - 1)            # [N, V, D]: the others' mean
    return -F.cosine_similarity(_fp32(p), targets, dim=2).mean()
