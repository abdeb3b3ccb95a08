"""TEMPORARY minimal schedule (being replaced)."""
import math
import torch


def lr_schedule(base_lr, total_steps, warmup_steps=0, final_lr=0.0, kind="cosine"):
    out = []
    for s in range(total_steps):
        if s < warmup_steps:
            out.append(base_lr * (s + 1) / warmup_steps)
        elif kind == "constant":
            out.append(base_lr)
        else:
            T = max(total_steps - warmup_steps - 1, 1)
            t = s - warmup_steps
            out.append(final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * t / T)))
    return torch.tensor(out, dtype=torch.float64)
