"""Per-step schedules, computed once per run and read as `values[step]`: the learning
rate, the weight decay, and a method's own quantities (EMA momentum, temperatures).

    lr_schedule       the learning rate: linear warm-up from base/W, then cosine or constant
    warmup_cosine     any quantity: linear warm-up from a start value, then cosine to a final one
    cosine_momentum   the EMA momentum of BYOL / MoCo v3 / DINO at one step (closed form)
"""
import math
from typing import Optional

import torch


def lr_schedule(base_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0,
                kind: str = "cosine", warmup_start: Optional[float] = None) -> torch.Tensor:
    """[total_steps] float64 learning rates.

    1. warm-up: step s < W gets base_lr * (s + 1) / W (linear, never exactly 0); with
       warmup_start, start + s * (base - start) / (W - 1) instead (solo-learn's
       LinearWarmupCosineAnnealingLR: from 3e-5 at step 0 to base at step W - 1);
    2. cosine: then final + (base - final) * (1 + cos(pi * t / (total - W - 1))) / 2 with
       t = s - W, so the first step after warm-up is base_lr and the last is final_lr;
    3. constant: base_lr after the warm-up.
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {kind!r}: use cosine or constant")
    warmup_steps = min(warmup_steps, total_steps)
    steps = torch.arange(total_steps, dtype=torch.float64)
    lrs = torch.full((total_steps,), float(base_lr), dtype=torch.float64)
    if warmup_steps > 0 and warmup_start is not None:
        lrs[:warmup_steps] = torch.linspace(warmup_start, base_lr, warmup_steps, dtype=torch.float64)
    elif warmup_steps > 0:
        lrs[:warmup_steps] = base_lr * (steps[:warmup_steps] + 1) / warmup_steps
    if kind == "cosine":
        span = max(total_steps - warmup_steps - 1, 1)
        t = steps[warmup_steps:] - warmup_steps
        lrs[warmup_steps:] = final_lr + (base_lr - final_lr) * 0.5 * (1 + torch.cos(math.pi * t / span))
    return lrs


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> torch.Tensor:
    """[total_steps] float64: linear from warmup_start to base over the first warmup_steps
    (step W-1 reaches base), then cosine from base (step W) to final (the last step).
    With base == final after the warm-up it is a warm-up then a constant (DINO's teacher
    temperature)."""
    warmup_steps = min(warmup_steps, total_steps)
    out = torch.full((total_steps,), float(base), dtype=torch.float64)
    if warmup_steps > 0:
        out[:warmup_steps] = torch.linspace(warmup_start, base, warmup_steps, dtype=torch.float64)
    rest = total_steps - warmup_steps
    if rest > 0:
        t = torch.arange(rest, dtype=torch.float64) / max(rest - 1, 1)
        out[warmup_steps:] = final + (base - final) * 0.5 * (1 + torch.cos(math.pi * t))
    return out


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """The target network's EMA momentum at `step` (BYOL, Grill et al. 2020, sec. 3.2;
    solo-learn's `cosine_scheduler`): final - (final - base) * (cos(pi * step / total) + 1) / 2,
    base at step 0 rising to final at step total."""
    return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1) / 2
