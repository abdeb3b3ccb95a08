"""DeepCluster V2 (Caron et al., 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", the SwAV paper, sec. 3 and appendix A): targets from
spherical k-means on a memory bank of embeddings, and the cross-entropy to them.

    spherical_kmeans     k-means on the unit sphere (cosine similarity), vectorised, in
                         chunks of rows, with an explicit generator for its initialisation
    deepclusterv2_loss   cross-entropy between the prototype scores / T and the k-means
                         assignments, averaged over the prototype sets
    smog_loss            SMoG's groups, moved by momentum towards this step's samples, and
                         the cross-entropy to the momentum encoder's group (k-means resets
                         the groups every few hundred steps: spherical_kmeans)

Both follow the authors' code (facebookresearch/swav 06b1b7c, main_deepclusterv2.py:
`cluster_memory` and the loss in `train`); solo-learn 9187ea39 (solo/utils/kmeans.py,
solo/losses/deepclusterv2.py) computes the same.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .contrastive import _check_temperature, _fp32


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """[M] index of the centroid of largest dot product with each row of x, computed on
    `chunk_rows` rows at a time (M x K scores never all in memory at once)."""
    return torch.cat([(xc @ centroids.T).argmax(dim=1) for xc in x.split(chunk_rows)])


def _cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int, chunk_rows: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per cluster, the sum of its rows [K, D] and its size [K]. A one-hot matrix product
    per chunk rather than index_add_: on a GPU that is deterministic (index_add_ adds with
    atomics, in an order that changes from run to run), so a resumed run and every rank
    find the same centroids to the last bit."""
    sums = x.new_zeros(k, x.shape[1])
    for xc, ac in zip(x.split(chunk_rows), assign.split(chunk_rows)):
        one_hot = x.new_zeros(len(ac), k).scatter_(1, ac.unsqueeze(1), 1.0)    # [chunk, K]
        sums += one_hot.T @ xc
    counts = torch.bincount(assign, minlength=k)
    return sums, counts


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 10,
                     generator: Optional[torch.Generator] = None, chunk_rows: int = 16384
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means as DeepCluster V2's `cluster_memory`.

        init   the centroids are k distinct rows of x, drawn by randperm(M, generator)[:k]
               (the authors draw them on rank 0 from the global RNG and broadcast them; here
               the generator is explicit and the draw is on the CPU, so every device and
               every rank draws the same rows)
        E      each row goes to the centroid of largest dot product (x's rows are unit
               vectors: the nearest on the sphere); ties go to the lowest index (argmax)
        M      each centroid becomes the mean of its rows, then is L2-normalised; a
               centroid that lost all its rows keeps its place (normalised again)
    `iterations` (E, M) rounds, then a last E step gives the assignments to the returned
    centroids (the authors' loop of iterations + 1 E steps).

    x: [M, D] (float; unit rows), k <= M, iterations >= 0. Runs on x's device, vectorised:
    the only Python loops are over the iterations and over chunks of `chunk_rows` rows.
    Returns (centroids [k, D] unit rows, x's dtype; assignments [M] int64 in [0, k)).
    """
    m = x.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k-means with k={k} needs 1 <= k <= the {m} rows it clusters")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    rows = torch.randperm(m, generator=generator)[:k].to(x.device)
    centroids = x[rows].clone()
    for it in range(iterations + 1):
        assign = _nearest(x, centroids, chunk_rows)
        if it == iterations:
            break
        sums, counts = _cluster_sums(x, assign, k, chunk_rows)
        filled = (counts > 0).unsqueeze(1)
        centroids = torch.where(filled, sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype),
                                centroids)
        centroids = F.normalize(centroids, dim=1)
    return centroids, assign


def deepclusterv2_loss(scores: Sequence[torch.Tensor], assignments: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """DeepCluster V2's loss: for each prototype set h (K_h prototypes, the k-means centroids
    of the last epoch's bank) and each crop v of each image n that has an assignment a[h, n],
    the cross-entropy between softmax(scores[h][v, n] / T) and the one-hot of a[h, n]:

        loss = 1/H sum_h  mean over {(v, n): a[h, n] >= 0}  of
                          -log( exp(s[h][v, n, a] / T) / sum_k exp(s[h][v, n, k] / T) )

    Every crop of an image is trained towards the same target (the authors repeat the
    assignments over the crops); images without an assignment (-1: not in the last epoch's
    bank) are left out of the mean, as the authors' ignore_index. A prototype set without
    any assigned image contributes 0 with a zero gradient (PyTorch's mean would be 0/0 =
    NaN): the epoch before the first clustering.

    scores: H tensors [V, N, K_h], the dot products of the unit embeddings of V crops of N
        images with the K_h unit centroids (any float dtype; computed in >= float32).
    assignments: [H, N] int64, each in [0, K_h) or -1 (none).
    Returns a scalar.
    """
    _check_temperature(temperature)
    if len(scores) != assignments.shape[0]:
        raise ValueError(f"{len(scores)} score tensors for {assignments.shape[0]} rows of assignments")
    total = 0.0
    for s, a in zip(scores, assignments):
        v, n, k = s.shape
        logits = _fp32(s).reshape(v * n, k) / temperature
        target = a.repeat(v)                                     # crop-major, as the scores
        ce = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
        total = total + ce / (target >= 0).sum().clamp(min=1)
    return total / len(scores)


def smog_loss(p: torch.Tensor, z: torch.Tensor, z_target: torch.Tensor, groups: torch.Tensor,
              beta: float = 0.99, temperature: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor]:
    """SMoG's synchronous momentum grouping (Pang et al., ECCV 2022, "Unsupervised Visual
    Representation Learning by Synchronous Momentum Grouping", eqs. 3-5), as lightly's
    `SMoGPrototypes` and benchmark `SMoGModel` (lightly e8d317fc):

        target_n = argmax_g cos(z_target_n, groups_g)               (no gradient)
        a_n      = argmax_g cos(z_n, groups_g)
        groups'_g = beta groups_g + (1 - beta) mean_{n: a_n = g} z_n  for every g some z_n chose
        loss     = CE( cos(p_n, groups'_g) / T , target_n )   averaged over n

    The groups are updated with this step's samples *before* they score the predictions
    (synchronous), and, as in lightly, the gradient flows through the updated groups into
    z as well as through p.

    Args:
        p: [N, D] the online predictions of one view.
        z: [N, D] the online projections of the same view (they move the groups).
        z_target: [N, D] the momentum encoder's projections of the other view.
        groups: [G, D] the group features before this step.
        beta: the groups' momentum (0.99).
        temperature: T > 0 (0.1).

    Returns:
        (loss, groups'): the scalar loss and the [G, D] groups to keep (detached).
    """
    _check_temperature(temperature)
    p, z, groups = _fp32(p), _fp32(z), groups.to(_fp32(z).dtype)
    unit_groups = F.normalize(groups, dim=1)
    with torch.no_grad():
        target = (F.normalize(_fp32(z_target), dim=1) @ unit_groups.T).argmax(1)
        assign = (F.normalize(z, dim=1) @ unit_groups.T).argmax(1)
        counts = torch.bincount(assign, minlength=groups.shape[0]).to(z.dtype)
    sums = torch.zeros_like(groups).index_add(0, assign, z)
    moved = beta * groups + (1 - beta) * sums / counts.clamp_min(1).unsqueeze(1)
    new = torch.where((counts > 0).unsqueeze(1), moved, groups)
    logits = F.normalize(p, dim=1) @ F.normalize(new, dim=1).T / temperature
    return F.cross_entropy(logits, target), new.detach()
