"""VICRegL (Bardes, Ponce & LeCun, NeurIPS 2022, "VICRegL: Self-Supervised Learning of Local
Visual Features"): VICReg on the pooled embeddings of the views, plus VICReg on the
positions of their feature maps, paired by nearest neighbours twice: by the positions'
locations in the original image and by the distance of their embeddings.

As the authors' code (facebookresearch/VICRegL at its tip 803ae4c, main_vicregl.py:
`global_loss`, `local_loss`, `_local_loss`, `_vicreg_loss`, `neirest_neighbores`):
- the global and local losses pair each of the first `num_global` views with every other
  view (the authors write `range(2)`: their two global views) and average over the pairs;
- the global variance and covariance terms are per view, averaged over the views (so the
  covariance is half of VICReg's two-view sum: lightly's VICRegLLoss halves nu for this);
- a local pair (a, b) matches a -> b and b -> a, by features (every position: the authors'
  `--l2_all_matches 1`) and by location (the `num_matches` = (20, 4) closest positions),
  each direction a VICReg with statistics per matched slot over the batch; the two
  directions are averaged, the feature and location matchings summed;
- the matched positions keep their order in the map (the authors'; lightly's sorts them by
  distance, which changes the variance and covariance terms, as its docstring says).
Ties (equal distances, common on regular location grids) go to the lower index here, by a
stable sort; the authors' `topk`/`sort` leave them to the kernel.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .contrastive import _fp32
from .redundancy import VICREG_EPS


def nearest_matches(inputs: torch.Tensor, candidates: torch.Tensor, distances: torch.Tensor,
                    num_matches: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each input position's nearest candidate, keeping the num_matches closest pairs.

    Args:
        inputs: [N, S, D] one image's positions per row.
        candidates: [N, T, D] the other view's positions of the same images.
        distances: [N, S, T] between them (any distance: features or locations).
        num_matches: how many of the S input positions to keep (the ones whose nearest
            candidate is closest); None, or more than S: all of them.

    Returns:
        (inputs [N, M, D], their nearest candidates [N, M, D]): the kept input positions
        in increasing position order, each beside its nearest candidate.
    """
    s = inputs.shape[1]
    m = s if num_matches is None or num_matches > s else num_matches
    with torch.no_grad():
        nearest_d, nearest = distances.min(dim=2)                      # [N, S]: first of ties
        keep = nearest_d.argsort(dim=1, stable=True)[:, :m].sort(dim=1).values   # [N, M]
        partner = nearest.gather(1, keep)                              # [N, M]
    d = inputs.shape[2]
    return (inputs.gather(1, keep[..., None].expand(-1, -1, d)),
            candidates.gather(1, partner[..., None].expand(-1, -1, d)))


def _variance(x: torch.Tensor) -> torch.Tensor:
    """[N, M, D] -> mean over (M, D) of relu(1 - std over the batch N): VICReg's hinge."""
    x = x - x.mean(0)
    return F.relu(1 - torch.sqrt(x.var(0) + VICREG_EPS)).mean()


def _covariance(x: torch.Tensor) -> torch.Tensor:
    """[N, M, D] -> mean over the M slots of sum_{i != j} cov_ij^2 / D, each slot's covariance
    over the batch N (centred, / (N - 1))."""
    n, _, d = x.shape
    x = (x - x.mean(0)).transpose(0, 1)                     # [M, N, D]
    cov = x.transpose(1, 2) @ x / (n - 1)                   # [M, D, D]
    off = ~torch.eye(d, dtype=torch.bool, device=x.device)
    return cov[:, off].pow(2).sum(-1).div(d).mean()


def vicreg_matched(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' `_vicreg_loss` before its coefficients, on matched positions.

    Args:
        x, y: [N, M, D] slot m of x matched with slot m of y, per image.

    Returns:
        (invariance, variance, covariance): the mean squared difference over all entries;
        (variance(x) + variance(y)) / 2 and (covariance(x) + covariance(y)) / 2, with the
        statistics of each slot over the batch.
    """
    return (F.mse_loss(x, y), (_variance(x) + _variance(y)) / 2,
            (_covariance(x) + _covariance(y)) / 2)


def _local_pair(a: torch.Tensor, b: torch.Tensor, grid_a: torch.Tensor, grid_b: torch.Tensor,
                num_matches: Sequence[int], l2_all_matches: bool) -> torch.Tensor:
    """[3] (invariance, variance, covariance) of one pair of views' maps: feature matching
    plus location matching, each the mean of its two directions."""
    l2 = (None, None) if l2_all_matches else tuple(num_matches)
    terms = []
    for dist_ab, (m_ab, m_ba) in ((torch.cdist(a.detach(), b.detach()), l2),
                                  (_sq_dist(grid_a, grid_b), tuple(num_matches))):
        one = torch.stack(vicreg_matched(*nearest_matches(a, b, dist_ab, m_ab)))
        two = torch.stack(vicreg_matched(*nearest_matches(b, a, dist_ab.transpose(1, 2), m_ba)))
        terms.append((one + two) / 2)
    return terms[0] + terms[1]


def _sq_dist(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[N, S, 2], [N, T, 2] -> [N, S, T] squared distances, elementwise (no matrix product):
    the same bits on every machine, so equal location distances tie exactly. Squared
    distances order the neighbours as the authors' cdist does."""
    return (p[:, :, None, :] - q[:, None, :, :]).pow(2).sum(-1)


def vicregl_loss(z: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                 grids: Sequence[torch.Tensor], num_global: int = 2, alpha: float = 0.75,
                 sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 num_matches: Sequence[int] = (20, 4), l2_all_matches: bool = True
                 ) -> torch.Tensor:
    """VICRegL's loss: alpha * global + (1 - alpha) * local.

        global = sim * mean_{i < G, j != i} mse(z_i, z_j)
                 + std * mean_v variance(z_v) + cov * mean_v covariance(z_v)
        local  = mean_{i < G, j != i} [sim, std, cov] . (features(i, j) + locations(i, j))

    where variance(x) = mean_d relu(1 - sqrt(var_d(x) + 1e-4)), covariance(x) =
    sum_{d != e} cov(x)_de^2 / D (VICReg's terms for one view), and features / locations
    are `_local_pair`'s matchings (the module docstring).

    Args:
        z: V tensors [N, D], the pooled embeddings of each view (the first num_global views
            are the global ones).
        maps: V tensors [N, S_v, E], each view's embedded feature-map positions (S_v = h*w,
            row-major; local crops have smaller maps).
        grids: V tensors [N, S_v, 2], each position's (row, column) in the original image.
        num_matches: (a -> b, b -> a) location matches kept per pair (clamped to the map);
            also the feature matches when not l2_all_matches.

    Returns:
        Scalar loss.
    """
    z = [_fp32(x) for x in z]
    maps = [_fp32(m) for m in maps]
    grids = [_fp32(g) for g in grids]
    pairs = [(i, j) for i in range(num_global) for j in range(len(z)) if j != i]
    coeffs = torch.tensor([sim_coeff, std_coeff, cov_coeff], device=z[0].device)
    invariance = torch.stack([F.mse_loss(z[i], z[j]) for i, j in pairs]).mean()
    variance = torch.stack([_variance(x[:, None]) for x in z]).mean()
    covariance = torch.stack([_covariance(x[:, None]) for x in z]).mean()
    global_loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    local = torch.stack([_local_pair(maps[i], maps[j], grids[i], grids[j], num_matches,
                                     l2_all_matches) for i, j in pairs]).mean(0)
    return alpha * global_loss + (1 - alpha) * (coeffs * local).sum()


def location_grid(box: torch.Tensor, flip: torch.Tensor, height: int, width: int,
                  flip_grid: bool = False) -> torch.Tensor:
    """Where each position of a view's h x w feature map lies in the original image: the
    centre of its cell of the crop box (the authors' `_location_to_NxN_grid`).

    Args:
        box: [N, 4] the crops' (top, left, height, width) in the image's pixels.
        flip: [N] bool, the views flipped horizontally.
        height, width: the feature map's size.
        flip_grid: mirror the columns of flipped views (lightly's grids). False: the
            authors' default (`--no-flip-grid 1`), which ignores the flip.

    Returns:
        [N, height * width, 2] (row, column) per position, row-major as fmap.flatten(2).
    """
    box = box.to(torch.float32)
    top, left, h, w = box.unbind(1)
    rows = top[:, None] + (torch.arange(height, device=box.device) + 0.5) * (h / height)[:, None]
    cols = left[:, None] + (torch.arange(width, device=box.device) + 0.5) * (w / width)[:, None]
    if flip_grid:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    grid = torch.stack(torch.broadcast_tensors(rows[:, :, None], cols[:, None, :]), dim=-1)
    return grid.reshape(box.shape[0], height * width, 2)
