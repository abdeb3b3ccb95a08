"""Contrastive losses as pure functions (and one small module for SogCLR's state).

Shapes: N samples in the (global) batch, V views, D embedding size, K queue size.
Similarities are computed in float32 even under bf16 autocast: the softmax over
thousands of negatives needs the precision.
"""
import torch
import torch.nn.functional as F
from torch import nn


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


def supcon(features: torch.Tensor, labels: torch.Tensor = None, temperature: float = 0.07,
           base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al., 2020, "Supervised Contrastive
    Learning", eq. 2), with SupContrast's scaling by T / base_T.

    All N·V views are anchors. For anchor a with positives P(a) (the other views of
    the same class) and all other views A(a) as the denominator:
        loss_a = -(T / base_T) · mean_{p in P(a)} [ s_ap/T - log sum_{k in A(a)} exp(s_ak/T) ]
    averaged over the anchors. With labels=None every image is its own class and
    (V=2, T=base_T) this is exactly nt_xent. Anchors without any positive (a class
    seen once, V=1) are left out of the mean instead of giving NaN; if no anchor
    has one, the result is 0 (still connected to the graph).

    Args:
        features: [N, V, D] L2-normalised embeddings.
        labels: [N] class indices, or None for the self-supervised case.
        temperature: T > 0.
        base_temperature: base_T; the loss is multiplied by T / base_T.

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


class SogCLRLoss(nn.Module):
    """SogCLR's dynamic contrastive loss (Yuan et al., ICML 2022, "Provable Stochastic
    Optimization for Global Contrastive Learning: Small Batch Does Not Harm
    Performance").

    SimCLR's loss normalises each anchor's positive by the mean of exp(sim/T) over
    the negatives *in this mini-batch*, which is a biased estimate of the global
    mean when the batch is small. SogCLR keeps a moving-average estimate u_i of that
    mean for every training image i (a buffer indexed by the dataset index):

        g_i   = mean over the 2(B-1) in-batch negatives of exp(cos/T), per direction
        u_i  <- (1 - gamma) · u_i + gamma · g_i     (gamma = 1 on a batch never seen)
        stored u_i = mean of the two directions' estimates

    and descends with the gradient  -∇pos + mean_j [exp(s_j/T) / u_i] ∇s_j  per anchor
    and direction, summed over the two directions and averaged over the batch: exactly
    the gradient of the original implementation (its cifar branch), scale included
    (T times the gradient of the contrastive loss with u in place of the batch mean),
    so its recipes (LARS, lr 1.0, sqrt scaling, T 0.3) transfer unchanged.

    Reported value: the original returns a surrogate whose value means nothing. We
    return `surrogate + (reported - surrogate).detach()`: its gradient is the
    surrogate's, its value the global contrastive loss estimate
        mean over the 2B anchors of ( -pos/T + log u_new ),
    close to 0 at the start and falling below 0 as it learns (with gamma=1 it is NT-Xent
    without the positive in the denominator, minus log(2(B-1))).

    Args:
        num_samples: size of the training set (u has one entry per image).
        gamma: weight of the new estimate in the moving average, 0 < gamma <= 1.
        temperature: T > 0.

    Call: loss(z1 [B, D], z2 [B, D], index [B] int64) -> scalar; z not yet normalised.
    u is a buffer [num_samples, 1]: saved with the model, restored on resume.
    """

    LARGE = 1e9

    def __init__(self, num_samples: int, gamma: float = 0.9, temperature: float = 0.3):
        super().__init__()
        _check_temperature(temperature)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma, self.temperature = gamma, temperature
        self.register_buffer("u", torch.zeros(num_samples, 1))

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        h1, h2 = F.normalize(_fp32(z1), dim=1), F.normalize(_fp32(z2), dim=1)
        b = h1.shape[0]
        eye = torch.eye(b, device=h1.device, dtype=h1.dtype)
        labels = torch.cat([eye, torch.zeros_like(eye)], dim=1)          # [B, 2B], positive first
        neg_mask = 1 - labels
        # row i: [sim(i, other view of every j), sim(i, same view of every j != i)]
        logits_ab_aa = torch.cat([h1 @ h2.T, h1 @ h1.T - eye * self.LARGE], dim=1)   # [B, 2B]
        logits_ba_bb = torch.cat([h2 @ h1.T, h2 @ h2.T - eye * self.LARGE], dim=1)
        neg1 = torch.exp(logits_ab_aa / T) * neg_mask
        neg2 = torch.exp(logits_ba_bb / T) * neg_mask

        with torch.no_grad():
            u_old = self.u[index].to(h1.dtype)                            # [B, 1]
            gamma = 1.0 if u_old.sum() == 0 else self.gamma               # first visit of the batch
        n_neg = 2 * (b - 1)
        u1 = (1 - gamma) * u_old + gamma * neg1.sum(1, keepdim=True).detach() / n_neg
        u2 = (1 - gamma) * u_old + gamma * neg2.sum(1, keepdim=True).detach() / n_neg
        with torch.no_grad():
            self.u[index] = ((u1 + u2) / 2).to(self.u.dtype)

        w1 = (neg1 / u1).detach()                                          # [B, 2B]
        w2 = (neg2 / u2).detach()
        # -pos + sum_j w_j * logit_j / (2(B-1)), on the raw cosine logits
        loss_a = -(labels * (logits_ab_aa - (w1 * logits_ab_aa).sum(1, keepdim=True) / n_neg)).sum(1)
        loss_b = -(labels * (logits_ba_bb - (w2 * logits_ba_bb).sum(1, keepdim=True) / n_neg)).sum(1)
        surrogate = (loss_a + loss_b).mean()

        with torch.no_grad():
            pos = (h1 * h2).sum(1)
            reported = torch.cat([-pos / T + u1.squeeze(1).log(),
                                  -pos / T + u2.squeeze(1).log()]).mean()
        return surrogate + (reported - surrogate).detach()
