"""Learning-rate schedules, precomputed per iteration and read as `lrs[step]`."""
import math

import torch


def lr_schedule(base_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0,
                kind: str = "cosine") -> torch.Tensor:
    """[total_steps] float64 learning rates.

    1. warm-up: step s < W gets base_lr * (s + 1) / W (linear, never exactly 0);
    2. cosine: then final + (base - final) * (1 + cos(pi * t / (total - W - 1))) / 2 with
       t = s - W, so the first step after warm-up is base_lr and the last is final_lr;
    3. constant: base_lr after the warm-up.
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {kind!r}: use cosine or constant")
    warmup_steps = min(warmup_steps, total_steps)
    steps = torch.arange(total_steps, dtype=torch.float64)
    lrs = torch.full((total_steps,), float(base_lr), dtype=torch.float64)
    if warmup_steps > 0:
        lrs[:warmup_steps] = base_lr * (steps[:warmup_steps] + 1) / warmup_steps
    if kind == "cosine":
        span = max(total_steps - warmup_steps - 1, 1)
        t = steps[warmup_steps:] - warmup_steps
        lrs[warmup_steps:] = final_lr + (base_lr - final_lr) * 0.5 * (1 + torch.cos(math.pi * t / span))
    return lrs
