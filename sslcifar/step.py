"""One optimizer step of a method, exactly as the training loop takes it (the loop and the
tests call this one function, so a test of a method trains it the way a run does)."""
from contextlib import nullcontext
import torch

from .methods.ema import update_targets
from .schedule import Now


def train_step(model, method, optimizer, batch, now: Now, scaler=None, autocast=None) -> dict:
    """The method's hooks around forward, backward and the optimizer step, in order:

        before_step(now); EMA of momentum_pairs() if ema_timing == "before_forward"
        forward(batch) under autocast, with batch.now = now
        backward (loss-scaled for fp16); after_backward(now) on unscaled gradients
        optimizer step; EMA of momentum_pairs() if ema_timing == "after_step"

    `model` is what runs the forward (the method itself, or it wrapped in DDP or compiled);
    `method` the plain module whose hooks are called. No host-device synchronisation: the
    loss stays a device tensor. Returns the forward's outputs."""
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    method.before_step(now)
    _ema(method, now, "before_forward")
    batch.now = now
    with autocast if autocast is not None else nullcontext():
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)          # clipping must see the true gradients
    method.after_backward(now)
    scaler.step(optimizer)
    scaler.update()
    _ema(method, now, "after_step")
    return out


def _ema(method, now: Now, when: str) -> None:
    if method.ema_timing == when and "momentum" in now.values:
        update_targets(method, now["momentum"])


def check_schedules(method, schedules: dict) -> None:
    """A method with momentum_pairs() schedules a "momentum", and the reverse; its
    ema_timing is one of the two the loop knows. (Bugs of a method, not user errors.)"""
    if bool(method.momentum_pairs()) != ("momentum" in schedules):
        raise ValueError(f"{type(method).__name__}: momentum_pairs() and schedules()['momentum'] "
                         f"go together (one is missing)")
    if method.ema_timing not in ("before_forward", "after_step"):
        raise ValueError(f"{type(method).__name__}.ema_timing={method.ema_timing!r}: use "
                         f"before_forward or after_step")
