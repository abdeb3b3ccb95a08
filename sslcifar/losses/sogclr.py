"""SogCLR's dynamic contrastive loss: a small module, since it keeps a per-sample state."""
import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import _check_temperature, _fp32


class SogCLRLoss(nn.Module):
    """SogCLR's dynamic contrastive loss (Yuan et al., ICML 2022, "Provable Stochastic
    Optimization for Global Contrastive Learning: Small Batch Does Not Harm
    Performance").

    SimCLR's loss normalises each anchor's positive by the mean of exp(sim/T) over
    the negatives *in this mini-batch*, which is a biased estimate of the global
    mean when the batch is small. SogCLR keeps a moving-average estimate u_i of that
    mean for every training image i (a buffer indexed by the dataset index):

        g_i   = mean over the 2(B-1) in-batch negatives of exp(cos/T), per direction
        u1_i  = (1 - gamma) · u_i + gamma · g1_i,   u2_i likewise from view 2

    and the two directions' average is stored for the next visit, u_i <- (u1_i + u2_i) / 2.
    The branches of the original code differ in the first visit:
        branch="cifar"    (the CIFAR branch, the one the SogCLR seed points to, at its tip
                          35adf2e of 2023-03-01 that `git clone -b cifar` gives): gamma on
                          the first visit too (u_i starts at 0, so u1_i = gamma · g1_i)
        branch="imagenet" (the ImageNet branch, PyTorch): gamma = 1 for a batch whose every
                          u is 0 (a batch never seen)
    (Earlier commits of the CIFAR branch stored the sum u1_i + u2_i; its tip fixed that to
    the average, which both branches now store.)

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
        branch: "cifar" (default) or "imagenet", the original's first-visit rules above.

    Call: loss(z1 [B, D], z2 [B, D], index [B] int64) -> scalar; z not yet normalised.
    u is a buffer [num_samples, 1]: saved with the model, restored on resume.
    """

    LARGE = 1e9

    BRANCHES = ("cifar", "imagenet")

    def __init__(self, num_samples: int, gamma: float = 0.9, temperature: float = 0.3,
                 branch: str = "cifar"):
        super().__init__()
        _check_temperature(temperature)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if branch not in self.BRANCHES:
            raise ValueError(f"branch {branch!r}: use cifar or imagenet")
        self.gamma, self.temperature, self.branch = gamma, temperature, branch
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
            if self.branch == "imagenet":       # gamma 1 on a batch never seen (a host sync)
                gamma = 1.0 if u_old.sum() == 0 else self.gamma
            else:
                gamma = self.gamma
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
