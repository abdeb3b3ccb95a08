"""A run's life as machine-readable events: `<run dir>/events.jsonl`, one JSON object per line,
appended by the training loop (rank 0) as things happen, read by `sslcifar.report`.

    {"event": "started",  "time": ..., "step": 0, "restart": 0}
    {"event": "resumed",  "time": ..., "step": 37, "restart": 1, "checkpoint": ".../last.pt"}
    {"event": "epoch_end", "time": ..., "epoch": 0, "step": 8}
    {"event": "stopped",  "time": ..., "step": 37, "reason": "signal", "signal": "SIGUSR2"}
    {"event": "stopped",  "time": ..., "step": 3, "reason": "max_steps"}
    {"event": "finished", "time": ..., "step": 16}
    {"event": "failed",   "time": ..., "step": 5, "error": "loss is nan at epoch 0 step 5: ..."}

`time` is seconds since the epoch (time.time()); `restart` is SLURM's restart count (0 on
the first run). A log line can be reworded freely; these names and fields are the contract.
"""
import json
import time
from pathlib import Path
from typing import List, Optional

EVENTS = "events.jsonl"
KINDS = ("started", "resumed", "epoch_end", "stopped", "finished", "failed")


class Events:
    """Appends events to <run dir>/events.jsonl (a no-op when not enabled: ranks > 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / EVENTS
        self.enabled = enabled

    def write(self, event: str, **fields) -> None:
        if event not in KINDS:
            raise ValueError(f"unknown event {event!r}: one of {', '.join(KINDS)}")
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        except OSError:
            # an unwritable run directory has its own error (check_writable), which this
            # record must not replace
            if event != "failed":
                raise


def read_events(run_dir: Path) -> List[dict]:
    """The events of a run, oldest first ([] when it has none yet); a line cut by a crash
    is skipped."""
    path = Path(run_dir) / EVENTS
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") in KINDS:
            out.append(event)
    return out


def last_event(events: List[dict], *kinds: str) -> Optional[dict]:
    """The newest event of one of `kinds` (any kind when none is given)."""
    for event in reversed(events):
        if not kinds or event["event"] in kinds:
            return event
    return None
