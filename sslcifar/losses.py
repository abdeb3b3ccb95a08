"""TEMPORARY minimal losses (being replaced by the documented module)."""
import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1, z2, temperature=0.5):
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


def supcon(features, labels=None, temperature=0.07, base_temperature=0.07):
    n, v, _ = features.shape
    if labels is None:
        labels = torch.arange(n, device=features.device)
    f = features.transpose(0, 1).reshape(n * v, -1).float()
    lab = labels.repeat(v)
    logits = f @ f.T / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=f.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    cnt = pos.sum(1)
    mean_pos = (log_prob.masked_fill(~pos, 0)).sum(1) / cnt.clamp_min(1)
    loss = -(temperature / base_temperature) * mean_pos
    keep = cnt > 0
    return loss[keep].mean() if keep.any() else 0 * features.sum()


def moco_infonce(q, k, queue, temperature):
    k, queue = k.detach(), queue.detach()
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], 1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class SogCLRLoss(nn.Module):
    def __init__(self, num_samples, gamma=0.9, temperature=0.3):
        super().__init__()
        self.gamma, self.T = gamma, temperature
        self.register_buffer("u", torch.zeros(num_samples, 1))

    def forward(self, z1, z2, index):
        h1, h2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        b = h1.shape[0]
        eye = torch.eye(b, device=h1.device)
        labels = torch.cat([eye, torch.zeros_like(eye)], 1)
        aa = h1 @ h1.T - eye * 1e9
        bb = h2 @ h2.T - eye * 1e9
        ab_aa = torch.cat([h1 @ h2.T, aa], 1)
        ba_bb = torch.cat([h2 @ h1.T, bb], 1)
        neg1 = torch.exp(ab_aa / self.T) * (1 - labels)
        neg2 = torch.exp(ba_bb / self.T) * (1 - labels)
        old = self.u[index]
        g = 1.0 if old.sum() == 0 else self.gamma
        u1 = (1 - g) * old + g * neg1.sum(1, keepdim=True) / (2 * (b - 1))
        u2 = (1 - g) * old + g * neg2.sum(1, keepdim=True) / (2 * (b - 1))
        self.u[index] = (u1 + u2).detach() / 2
        w1, w2 = (neg1 / u1).detach(), (neg2 / u2).detach()
        la = -(labels * (ab_aa - (w1 * ab_aa).sum(1, keepdim=True) / (2 * (b - 1)))).sum(1)
        lb = -(labels * (ba_bb - (w2 * ba_bb).sum(1, keepdim=True) / (2 * (b - 1)))).sum(1)
        surrogate = (la + lb).mean()
        pos = (h1 * h2).sum(1)
        reported = torch.cat([-pos / self.T + torch.log(u1.squeeze(1)),
                              -pos / self.T + torch.log(u2.squeeze(1))]).mean()
        return surrogate + (reported - surrogate).detach()
