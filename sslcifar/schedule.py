"""Time: every quantity that changes during a run, as one value per optimizer step,
computed once before the first step and read as `values[step]` (DINO's `cosine_scheduler`).

    cosine_scheduler   the one per-step array builder: learning rate, weight decay, EMA
                       momentum, teacher temperature, the linear probe's learning rate
    per_epoch          one value per epoch, repeated for each step of that epoch
    Schedules          a run's arrays together; `at(step)` -> the `Now` handed to a method
    Now                one step's values: the step, the epoch and each scheduled quantity

The loop builds the learning-rate and weight-decay arrays, asks the method for its own
(`Method.schedules`: EMA momentum, teacher temperature, frozen layers), and hands the
method each step's values; no method keeps a step counter or a schedule formula.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch


def cosine_scheduler(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                     warmup_start: Optional[float] = None) -> torch.Tensor:
    """[total_steps] float64: a linear warm-up, then a half cosine from `base` to `final`.

    1. warm-up, steps s < W (W = min(warmup_steps, total_steps)):
       with warmup_start: linear from warmup_start at step 0 to base at step W - 1
       (solo-learn's LinearWarmupCosineAnnealingLR from 3e-5; DINO's teacher temperature);
       without: base * (s + 1) / W (SimCLR's and MoCo v3's ramp: never exactly 0);
    2. cosine: final + (base - final) * (1 + cos(pi * t / (total - W - 1))) / 2 with
       t = s - W, so step W takes `base` and the last step `final`.

    base == final after the warm-up gives a constant. A cosine that should reach `final`
    only one step *after* the run (BYOL's EMA momentum, the per-epoch probe lr of SogCLR's
    lincls.py) is `cosine_scheduler(base, final, total + 1)[:total]`.
    """
    warmup_steps = max(0, min(warmup_steps, total_steps))
    steps = torch.arange(total_steps, dtype=torch.float64)
    out = torch.full((total_steps,), float(base), dtype=torch.float64)
    if warmup_steps > 0 and warmup_start is not None:
        out[:warmup_steps] = torch.linspace(warmup_start, base, warmup_steps, dtype=torch.float64)
    elif warmup_steps > 0:
        out[:warmup_steps] = base * (steps[:warmup_steps] + 1) / warmup_steps
    span = max(total_steps - warmup_steps - 1, 1)
    t = steps[warmup_steps:] - warmup_steps
    out[warmup_steps:] = final + (base - final) * 0.5 * (1 + torch.cos(math.pi * t / span))
    return out


def per_epoch(values: torch.Tensor, steps_per_epoch: int) -> torch.Tensor:
    """[epochs] -> [epochs * steps_per_epoch]: each epoch's value on each of its steps."""
    return values.repeat_interleave(steps_per_epoch)


@dataclass(frozen=True)
class Now:
    """What the loop hands a method for the optimizer step about to be taken: the step
    (0-based, counted over the whole run), its epoch, and this step's value of each of the
    method's schedules (`now["momentum"]`, `now["teacher_temp"]`)."""
    step: int = 0
    epoch: int = 0
    values: Mapping[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class Schedules:
    """A run's per-step arrays by name, each [total_steps] (host floats: reading one costs
    no device synchronisation)."""

    def __init__(self, arrays: Dict[str, torch.Tensor], steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.arrays = {name: v.tolist() for name, v in arrays.items()}
        lengths = {len(v) for v in self.arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"schedules of different lengths: {sorted(lengths)}")

    def __getitem__(self, name: str):
        return self.arrays[name]

    def at(self, step: int, names=None) -> Now:
        """The values of `names` (default: every array) at `step`."""
        names = self.arrays if names is None else names
        return Now(step, step // self.steps_per_epoch, {k: self.arrays[k][step] for k in names})
