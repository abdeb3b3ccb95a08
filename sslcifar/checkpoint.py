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
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from .errors import UserError
from .version import code_version

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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} refused: it holds objects other than tensors and "
                        f"plain data, and is loaded with weights_only=True ({first}). Fix: use a "
                        f"checkpoint written by sslcifar or a plain state_dict") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first})") from None
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

def training_state(step: int, epochs_done: int, method, optimizer, scaler, probe, config: dict,
                   overrides, metrics_rows, meters) -> dict:
    """Everything `restore` needs to continue a run exactly. `epoch`: completed epochs,
    as MoCo and SupContrast store it (the schedules follow `step`)."""
    state = {"step": step, "epoch": epochs_done, "model": method.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "config": config, "overrides": overrides, "metrics": metrics_rows,
             "meters": {k: v.cpu() for k, v in meters.items()},
             "rng": {"torch": torch.get_rng_state()}, "code": code_version()}
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    if probe is not None:
        state["probe"] = probe.state_dict()
        state["probe_optimizer"] = probe.opt.state_dict()
    return state


def restore(state: dict, method, optimizer, scaler, probe, metrics, meters) -> int:
    """Load a training_state into the run's objects; returns the step to continue from."""
    try:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"the checkpoint does not fit this config ({str(e).splitlines()[0]}). "
                        f"Fix: resume with the same method/backbone/optimizer overrides") from None
    scaler.load_state_dict(state["scaler"])
    if probe is not None and "probe" in state:
        probe.load_state_dict(state["probe"])
        probe.opt.load_state_dict(state["probe_optimizer"])
    # a row of a run stopped mid-epoch by max_steps is redone when the epoch ends
    metrics.restore([r for r in state.get("metrics", []) if not r.get("partial")])
    for k, v in state.get("meters", {}).items():
        meters[k] = v.to(meters["seen"].device)
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def estimated_bytes(method, probe, optimizer_name: str) -> int:
    """About the size of a checkpoint: the model's tensors, the optimizer's state (one
    tensor per parameter for SGD and LARS momentum, two for AdamW), the probe's."""
    def size(module):
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    per_param = 2 if optimizer_name == "adamw" else 1
    return size(method) + per_param * params + (3 * size(probe) if probe is not None else 0)
