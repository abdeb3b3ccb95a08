"""Run outputs: metrics.jsonl (one JSON object per epoch) and TensorBoard scalars.

The history of rows also travels inside each checkpoint, so that a resumed
run rewrites metrics.jsonl to exactly what the checkpoint had seen: no
duplicated or missing rows after a crash between a row and a checkpoint.
"""
import json
import math
from pathlib import Path
from typing import Dict, List, Optional


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.rows: List[dict] = []
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def restore(self, rows: List[dict]) -> None:
        """Resume: the file becomes the checkpoint's history."""
        self.rows = list(rows)
        if self.enabled:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: Dict[str, float]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        self.rows.append(row)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, row["step"])
            self.tb.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> List[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue            # a line cut by a crash
    return rows


def last_value(rows: List[dict], key: str) -> Optional[float]:
    for r in reversed(rows):
        if r.get(key) is not None:
            return r[key]
    return None


# ---------------------------------------------------------------------- the loop's meters

def new_meters(device) -> dict:
    """Running sums of one epoch, kept on the device (read once per epoch)."""
    import torch
    z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    return {"loss_sum": z(), "seen": z(), "probe_correct": z(), "probe_seen": z()}


def epoch_row(epoch: int, step: int, meters: dict, lr: float, images_per_s: float,
              has_probe: bool) -> dict:
    """The metrics.jsonl row of an epoch: mean loss and every method metric, lr, speed,
    online probe top-1."""
    n = max(meters["seen"].item(), 1)
    row = {"epoch": epoch, "step": step, "loss": meters["loss_sum"].item() / n, "lr": lr,
           "images_per_s": images_per_s}
    if has_probe:
        row["online_top1"] = 100.0 * meters["probe_correct"].item() / max(meters["probe_seen"].item(), 1)
    for k, v in meters.items():
        if k not in ("loss_sum", "seen", "probe_correct", "probe_seen"):
            row[k] = v.item() / n
    return row
