"""Crash-safe checkpoints.

Writing: the state goes to a temporary file in the same folder, is flushed
and fsync'ed, and only then renamed over `last.pt` (the previous `last.pt`
becomes `prev.pt` first). A process killed at any moment therefore leaves
at least one complete checkpoint, and at most the last two are kept.

Reading: `torch.load(weights_only=True)` only: tensors and plain Python data.
A file crafted to run code when unpickled is refused, with nothing executed.
A truncated or corrupt `last.pt` falls back to `prev.pt`, saying so.
"""
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch import nn

from .errors import UserError
from .version import code_version

if TYPE_CHECKING:                   # for the annotation only: metrics imports nothing of ours
    from .metrics import MetricsLog

log = logging.getLogger(__name__)

LAST, PREV = "last.pt", "prev.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(state: dict, path: Path) -> None:
    """torch.save to `path` such that `path` is either the old or the new file, never partial."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # serialise in memory first: a full disk then surfaces as a plain OSError (ENOSPC)
    # from write(), not as an opaque error from inside torch's zip writer
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}. Fix: free disk "
                        f"space or choose a writable run directory (hydra.run.dir=...); "
                        f"the previous checkpoint is untouched") from None
    _fsync_dir(path.parent)


def save_last(state: dict, folder: Path) -> Path:
    """Write folder/last.pt, keeping the previous one as folder/prev.pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / LAST
    tmp = folder / f".{LAST}.new"
    atomic_save(state, tmp)
    if last.exists():
        os.replace(last, folder / PREV)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def load(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint safely; UserError naming the file when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; checkpoints of old PyTorch versions, a raw pickle
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise UserError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}). Fix: "
                        f"pretrained= a checkpoint file (.pt, .pth, .pth.tar) or a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:          # noqa: BLE001 -- damaged bytes raise many types
        # RuntimeError, EOFError, BadZipFile, OSError, ValueError, UnpicklingError, and from
        # the weights-only unpickler IndexError, KeyError, ...: for the user one of two problems
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise UserError(f"checkpoint {path} refused: it holds objects other than tensors "
                            f"and plain data, and is loaded with weights_only=True ({first}). "
                            f"Fix: use a checkpoint written by sslcifar or a plain state_dict") from None
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
                        f"{first[:200]}). Fix: use another checkpoint (prev.pt, epoch_N.pt) "
                        f"or train again") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of state")
    return state


def load_latest(folder: Path, map_location="cpu") -> Tuple[Optional[dict], Optional[Path]]:
    """The newest loadable checkpoint in `folder` (last.pt, else prev.pt), or (None, None)
    when there is none at all. Raises UserError when checkpoints exist but none loads."""
    folder = Path(folder)
    # a complete `.last.pt.new` exists only if a save died between its renames: newest then
    candidates = [folder / f".{LAST}.new", folder / LAST, folder / PREV]
    errors = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = load(path, map_location)
        except UserError as e:
            log.error("%s", e)
            errors.append(str(e))
            continue
        if errors:
            log.warning("resuming from the previous good checkpoint %s", path)
        return state, path
    if errors:
        raise UserError(f"no loadable checkpoint in {folder}: {errors[0]}")
    return None, None


# ---------------------------------------------------------------------- a training run's state

@dataclass
class RunState:
    """Everything a training run changes as it goes, saved and restored as one thing:
    the method (weights, EMA targets, queues, centres: its state_dict), the optimizer, the
    grad scaler, the online probe, the metrics history, the epoch's running meters, the
    step, and what the run is (its resolved config and command-line overrides)."""
    method: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler"
    probe: Optional[nn.Module]           # the online probe (with its own `.opt`), or None
    metrics: "MetricsLog"
    meters: dict
    config: dict
    overrides: list
    steps_per_epoch: int
    step: int = 0

    def snapshot(self) -> dict:
        """The checkpoint's dict. `epoch`: completed epochs, as MoCo and SupContrast store
        it (the schedules follow `step`)."""
        state = {"step": self.step, "epoch": self.step // self.steps_per_epoch,
                 "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "config": self.config,
                 "overrides": self.overrides, "metrics": self.metrics.rows,
                 "meters": {k: v.cpu() for k, v in self.meters.items()},
                 "rng": {"torch": torch.get_rng_state()}, "code": code_version()}
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
            state["probe_optimizer"] = self.probe.opt.state_dict()
        return state

    def restore(self, saved: dict) -> None:
        """Load a snapshot into this run's objects; the step continues from the saved one."""
        try:
            self.method.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"the checkpoint does not fit this config ({str(e).splitlines()[0]}). "
                            f"Fix: resume with the same method/backbone/optimizer overrides") from None
        self.scaler.load_state_dict(saved["scaler"])
        if self.probe is not None and "probe" in saved:
            self.probe.load_state_dict(saved["probe"])
            self.probe.opt.load_state_dict(saved["probe_optimizer"])
        # a row of a run stopped mid-epoch by max_steps is redone when the epoch ends
        self.metrics.restore([r for r in saved.get("metrics", []) if not r.get("partial")],
                             step=int(saved["step"]))
        for k, v in saved.get("meters", {}).items():
            self.meters[k] = v.to(self.meters["seen"].device)
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        self.step = int(saved["step"])


def estimated_bytes(method, probe, optimizer_name: str) -> int:
    """About the size of a checkpoint: the model's tensors, the optimizer's state (one
    tensor per parameter for SGD and LARS momentum, two for Adam and AdamW), the probe's."""
    def size(module):
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    per_param = 2 if optimizer_name in ("adam", "adamw") else 1
    return size(method) + per_param * params + (3 * size(probe) if probe is not None else 0)
