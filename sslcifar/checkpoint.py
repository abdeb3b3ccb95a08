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
