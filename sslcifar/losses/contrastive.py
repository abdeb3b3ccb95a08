"""Contrastive losses as pure functions: NT-Xent (two views or many), SupCon, MoCo's InfoNCE,
MoCo v3's in-batch InfoNCE, NNCLR's neighbour contrast, ReSSL's relational loss, DCL's
decoupled contrast (DCLW weighted), DenseCL's position-by-position contrast.

Shapes: N samples in the (global) batch, V views, D embedding size, K queue size.
Similarities are computed in float32 even under bf16 autocast: the softmax over
thousands of negatives needs the precision.
"""
import torch
import torch.nn.functional as F


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 from autocast are promoted; float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the loss of SimCLR (Chen et al., 2020, "A Simple Framework for
    Contrastive Learning of Visual Representations", eq. 1).

    Each of the 2N embeddings is an anchor; its positive is the other view of the
    same image, and the other 2N-2 embeddings are its negatives (self-similarity
    is excluded). The loss is the cross-entropy over those 2N-1 candidates,
    averaged over the 2N anchors.

    The SimCLR-CIFAR10 repository clamps cosine similarities at 1e-7 before the
    softmax; we do not, on purpose: that clamp zeroes every negative similarity.

    Args:
        z1: [N, D] embeddings of the first views, not yet normalised.
        z2: [N, D] embeddings of the second views (row i pairs with z1[i]).
        temperature: T > 0.

    Returns:
        Scalar loss. With all embeddings identical it equals log(2N - 1).

    Examples:
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
        >>> nt_xent(z1, z2, temperature=0.5).shape
        torch.Size([])
    """
    _check_temperature(temperature)
    n = z1.shape[0]
    z = F.normalize(_fp32(torch.cat([z1, z2])), dim=1)                   # [2N, D]
    logits = z @ z.T / temperature                                        # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    # anchor i (first views) pairs with i + N, and i + N with i
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


def nt_xent_multi(z: torch.Tensor, ids: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over any number of views per image (multi-crop SimCLR), with the semantics
    of the contrastive-learning-methods repository / solo-learn's `simclr_loss_func`:
    every crop is an anchor; its positives are the other crops with the same id, and
    they are *summed* inside the log:

        loss_a = -log( sum_{p in P(a)} exp(s_ap / T) / sum_{k != a} exp(s_ak / T) )

    averaged over the anchors (s: cosine similarity). With two views per image this is
    exactly `nt_xent`. With ids = class labels it is that repository's supervised
    variant (SimCLR "with labels").

    Args:
        z: [M, D] embeddings of all crops (any order), not yet normalised.
        ids: [M] int64: the image index of each crop (or its label).
        temperature: T > 0.

    Returns:
        Scalar loss.
    """
    _check_temperature(temperature)
    z = F.normalize(_fp32(z), dim=1)
    logits = z @ z.T / temperature                                        # [M, M]
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    pos = (ids[:, None] == ids[None, :]) & ~self_mask
    # log of the summed positives minus log of the summed others, computed stably
    log_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - log_pos).mean()


def supcon(features: torch.Tensor, labels: torch.Tensor = None, temperature: float = 0.07,
           base_temperature: float = 0.07, skip_anchors_without_positive: bool = False
           ) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al., 2020, "Supervised Contrastive
    Learning", eq. 2), with SupContrast's scaling by T / base_T.

    All N·V views are anchors. For anchor a with positives P(a) (the other views of
    the same class) and all other views A(a) as the denominator:
        loss_a = -(T / base_T) · mean_{p in P(a)} [ s_ap/T - log sum_{k in A(a)} exp(s_ak/T) ]
    averaged over the anchors. With labels=None every image is its own class and
    (V=2, T=base_T) this is exactly nt_xent. An anchor without any positive (a class
    seen once, V=1) contributes 0 and is counted in the mean, as SupContrast's current
    SupConLoss (its divisor of the positives is clamped to 1; the first release gave NaN);
    with skip_anchors_without_positive it is left out of the mean instead (if no anchor
    has a positive the result is then 0, still connected to the graph).

    Args:
        features: [N, V, D] L2-normalised embeddings.
        labels: [N] class indices, or None for the self-supervised case.
        temperature: T > 0.
        base_temperature: base_T; the loss is multiplied by T / base_T.
        skip_anchors_without_positive: leave such anchors out of the mean.

    Returns:
        Scalar loss.

    Examples:
        >>> f = F.normalize(torch.randn(8, 2, 128), dim=2)
        >>> supcon(f, torch.arange(8) % 3, temperature=0.1).shape
        torch.Size([])
    """
    _check_temperature(temperature)
    n, v, _ = features.shape
    if labels is None:
        labels = torch.arange(n, device=features.device)
    f = _fp32(features.transpose(0, 1).reshape(n * v, -1))             # [V*N, D], view-major
    lab = labels.repeat(v)                                                # [V*N]
    logits = f @ f.T / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=f.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)      # [V*N, V*N]
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    num_pos = pos.sum(1)
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0).sum(1) / num_pos.clamp_min(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    if not skip_anchors_without_positive:
        return loss.mean()                  # such anchors: 0, counted (SupContrast)
    # mean over the anchors that have a positive (0 when none has); written without
    # boolean indexing so that no host-device synchronisation happens on the GPU
    has_pos = (num_pos > 0).to(loss.dtype)
    return (loss * has_pos).sum() / has_pos.sum().clamp_min(1)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """InfoNCE of MoCo (He et al., 2020, "Momentum Contrast for Unsupervised Visual
    Representation Learning", eq. 1): for each query the positive is its key, the
    negatives are the K keys of the queue.

    logits = [q·k, q·queue^T] / T with the positive at index 0; mean cross-entropy.
    The keys and the queue are constants (no gradient flows into them): the key
    encoder is updated by its moving average only.

    Args:
        q: [N, D] normalised queries.
        k: [N, D] normalised keys (row i is the positive of q[i]).
        queue: [K, D] normalised keys of earlier batches (rows).
        temperature: T > 0.

    Returns:
        Scalar loss. With everything identical it equals log(K + 1).
    """
    _check_temperature(temperature)
    q = _fp32(q)
    l_pos = (q * k.detach().to(q.dtype)).sum(1, keepdim=True)             # [N, 1]
    l_neg = q @ queue.detach().to(q.dtype).T                              # [N, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature               # [N, 1+K]
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def mocov3_infonce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3's contrastive loss (Chen, Xie & He, 2021, "An Empirical Study of Training
    Self-Supervised Vision Transformers", Algorithm 1), as its `contrastive_loss`: the keys
    of the other images in the batch are the negatives (no queue), and the cross-entropy is
    multiplied by 2T, as the MoCo v3 code does (it makes the gradient's scale independent
    of T).

        logits = normalize(q) @ normalize(k)^T / T        [N, N], positive on the diagonal
        loss = 2T * mean cross-entropy

    Call it on the global batch (queries gathered with gradient, keys without): the mean
    over all N queries is what DDP's average of the original's per-rank losses gives.

    Args:
        q: [N, D] predictions (queries).
        k: [N, D] momentum-encoder projections (keys) of the other view; no gradient.
        temperature: T > 0.

    Returns:
        Scalar loss. With everything identical it equals 2T log N.
    """
    _check_temperature(temperature)
    q = F.normalize(_fp32(q), dim=1)
    k = F.normalize(_fp32(k).detach(), dim=1)
    logits = q @ k.T / temperature
    target = torch.arange(q.shape[0], device=q.device)
    return 2 * temperature * F.cross_entropy(logits, target)


def nnclr_loss(nn: torch.Tensor, p: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NNCLR's contrastive loss, one direction (Dwibedi et al., 2021, "With a Little Help from
    My Friends", eq. 2), as solo-learn's `nnclr_loss_func` (9187ea39): the nearest
    neighbour of view 1's projection is the anchor, the other view's prediction of the same
    image its positive, the other images' predictions its negatives.

        logits = normalize(nn) @ normalize(p)^T / T        [N, N], positive on the diagonal
        loss = mean cross-entropy over the N anchors

    NNCLR's nn is a support-set row (no gradient); All4One also calls it on two transformer
    outputs, and the gradient then flows into both. NNCLR symmetrises it:
    (nnclr_loss(nn1, p2) + nnclr_loss(nn2, p1)) / 2. The paper's T is 0.1 (this default);
    solo-learn's CIFAR and ImageNet scripts use 0.2. Call it on the global batch.

    Args:
        nn: [N, D] nearest neighbours of one view's projections (support-set rows): the anchors.
        p: [N, D] predictions for the other view (row i: the same image as nn[i]).
        temperature: T > 0.

    Returns:
        Scalar loss. With everything identical it equals log N.
    """
    _check_temperature(temperature)
    nn = F.normalize(_fp32(nn), dim=1)
    p = F.normalize(_fp32(p), dim=1)
    logits = nn @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(nn.shape[0], device=nn.device))


def ressl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, student_temp: float = 0.1,
               teacher_temp: float = 0.04) -> torch.Tensor:
    """ReSSL's relational loss (Zheng et al., NeurIPS 2021, "ReSSL: Relational Self-Supervised
    Learning with Weak Augmentation", eq. 4), as solo-learn's `ressl_loss_func` (9187ea39):
    the teacher's similarities of a weakly augmented view to a queue of earlier teacher
    embeddings, sharpened at T_t, are the target of the student's similarities of a strongly
    augmented view to the same queue at T_s:

        loss = mean_i  -sum_k softmax(k_i . queue_k / T_t) * log softmax(q_i . queue_k / T_s)

    No gradient flows into k or the queue. Call it on the global batch.

    Args:
        q: [N, D] normalised student embeddings (strong views).
        k: [N, D] normalised teacher embeddings (weak views of the same images).
        queue: [K, D] normalised teacher embeddings of earlier batches (rows).
        student_temp: T_s > 0 (0.1).
        teacher_temp: T_t > 0 (0.04), sharper than the student's.

    Returns:
        Scalar loss. When q = k it is the entropy of the teacher's distribution.
    """
    _check_temperature(student_temp)
    _check_temperature(teacher_temp)
    q = _fp32(q)
    queue = queue.detach().to(q.dtype)
    target = torch.softmax(k.detach().to(q.dtype) @ queue.T / teacher_temp, dim=1)   # [N, K]
    return -(target * torch.log_softmax(q @ queue.T / student_temp, dim=1)).sum(1).mean()


def dcl_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
             weight_sigma: float = None) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al., ECCV 2022, "Decoupled Contrastive Learning",
    eq. 6): NT-Xent without the positive in the denominator, as lightly's `DCLLoss` /
    `DCLWLoss` (lightly e8d317fc, lightly/loss/dcl_loss.py). With s the cosine similarity,
    for anchor i of view a and its positive in view b:

        l_i = -w_i s(a_i, b_i) / T + log( sum_{j != i} exp(s(a_i, a_j)/T)
                                          + sum_{j != i} exp(s(a_i, b_j)/T) )

    averaged over i, and the two directions (a, b) = (1, 2), (2, 1) averaged. DCL: w_i = 1.
    DCLW (`weight_sigma` = sigma, 0.5 in the paper and lightly) weights the positive by the
    negative von Mises-Fisher weight, no gradient through it,

        w_i = 2 - N exp(s(z1_i, z2_i)/sigma) / sum_k exp(s(z1_k, z2_k)/sigma),

    over the whole (global) batch: lightly computes it over each GPU's own batch, so on
    several GPUs its weights differ from one process's; here 2 processes equal 1.

    Args:
        z1: [N, D] embeddings of the first views, not yet normalised.
        z2: [N, D] embeddings of the second views (row i pairs with z1[i]).
        temperature: T > 0 (0.1, lightly's default and its CIFAR benchmark's).
        weight_sigma: sigma > 0 for DCLW; None: DCL.

    Returns:
        Scalar loss. With all embeddings identical (and w = 1) it equals
        -1/T + 1/T + log(2N - 2) = log(2N - 2).
    """
    _check_temperature(temperature)
    z1 = F.normalize(_fp32(z1), dim=1)
    z2 = F.normalize(_fp32(z2), dim=1)
    n = z1.shape[0]
    positive = (z1 * z2).sum(1)                                           # [N]
    if weight_sigma is not None:
        _check_temperature(weight_sigma)
        w = 2 - n * torch.softmax(positive.detach() / weight_sigma, dim=0)
    else:
        w = torch.ones_like(positive)
    off = ~torch.eye(n, dtype=torch.bool, device=z1.device)

    def one_direction(a, b):
        negatives = torch.cat([(a @ a.T)[off].view(n, n - 1),
                               (a @ b.T)[off].view(n, n - 1)], dim=1) / temperature
        return (-w * positive / temperature + torch.logsumexp(negatives, dim=1)).mean()

    return 0.5 * (one_direction(z1, z2) + one_direction(z2, z1))


def densecl_match(f_q: torch.Tensor, f_k: torch.Tensor) -> torch.Tensor:
    """DenseCL's correspondence between two views' positions (Wang et al., CVPR 2021,
    "Dense Contrastive Learning for Self-Supervised Visual Pre-Training", sec. 3.2): for each
    position of the query's backbone map, the key map's position of largest cosine
    similarity of the backbone features (not of the projections).

    Args:
        f_q: [N, C, S] the query view's backbone feature map, S = h * w positions.
        f_k: [N, C, S] the key view's.

    Returns:
        [N, S] int64: for query position s of image n, the matched key position.
    """
    with torch.no_grad():
        f_q, f_k = F.normalize(_fp32(f_q), dim=1), F.normalize(_fp32(f_k), dim=1)
        return torch.einsum("ncs,nct->nst", f_q, f_k).argmax(dim=2)


def densecl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, q_grid: torch.Tensor,
                 k_grid: torch.Tensor, match: torch.Tensor, dense_queue: torch.Tensor,
                 temperature: float = 0.2, loss_lambda: float = 0.5) -> torch.Tensor:
    """DenseCL's loss, as the authors' `DenseCL.forward_train` (WXinlong/DenseCL, openselfsup/
    models/densecl.py): MoCo's InfoNCE of the global projections against a queue of keys,
    and the same InfoNCE for every position of the dense projections, whose positive is
    the key view's dense projection at the matched position (`densecl_match`) and whose
    negatives are a second queue (of the keys' pooled dense projections):

        loss = (1 - lambda) moco_infonce(q, k, queue)
               + lambda moco_infonce(q_grid[n, :, s], k_grid[n, :, match[n, s]], dense_queue)
                 averaged over the N*S positions

    Args:
        q, k: [N, D] normalised global projections of the query and key views.
        queue: [K, D] the global keys of earlier batches.
        q_grid, k_grid: [N, D, S] dense projections, normalised along D.
        match: [N, S] the key position of each query position.
        dense_queue: [K, D] the pooled dense keys of earlier batches.
        temperature: T (0.2); loss_lambda: the dense term's weight (0.5).

    Returns:
        Scalar loss. With everything identical it equals log(K + 1).
    """
    d = q_grid.shape[1]
    k_matched = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, d, -1))    # [N, D, S]
    per_position = lambda g: g.permute(0, 2, 1).reshape(-1, d)                   # noqa: E731
    dense = moco_infonce(per_position(q_grid), per_position(k_matched), dense_queue, temperature)
    return (1 - loss_lambda) * moco_infonce(q, k, queue, temperature) + loss_lambda * dense
