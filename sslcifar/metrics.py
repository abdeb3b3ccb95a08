"""Run outputs: metrics.jsonl (one JSON object per epoch), steps.jsonl (the loss and lr of
each log step), TensorBoard scalars and, with wandb=true, the same scalars and figures in
Weights & Biases.

The history of rows also travels inside each checkpoint, so that a resumed
run rewrites metrics.jsonl to exactly what the checkpoint had seen: no
duplicated or missing rows after a crash between a row and a checkpoint.
"""
import json
import math
from pathlib import Path
from typing import Dict, List, Optional


class WandbRun:
    """A Weights & Biases run in the run directory (`WANDB_MODE=offline` writes it under
    <run dir>/wandb/ for `wandb sync` later). Its id is kept in <run dir>/wandb_run_id, so
    a resumed run continues the same W&B run. Every scalar is logged against the training
    step as the metric `trainer/step` (not W&B's own step, which may not go back after a
    resume from an earlier checkpoint)."""

    ID_FILE = "wandb_run_id"

    def __init__(self, run_dir: Path, config: dict, project: str, entity: Optional[str],
                 name: Optional[str]):
        import wandb
        run_dir = Path(run_dir)
        id_file = run_dir / self.ID_FILE
        import secrets
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.wandb = wandb
        self.run = wandb.init(project=project, entity=entity, name=name or run_dir.name,
                              id=run_id, resume="allow", dir=str(run_dir), config=config)
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")

    def log(self, values: Dict[str, float], step: int) -> None:
        self.run.log({"trainer/step": step, **values})

    def image(self, name: str, path: Path, step: int) -> None:
        self.run.log({"trainer/step": step, name: self.wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True,
                 wandb: Optional[WandbRun] = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.steps_path = Path(run_dir) / "steps.jsonl"
        self.rows: List[dict] = []
        self.enabled = enabled
        self.tb = None
        self.wandb = wandb if enabled else None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def restore(self, rows: List[dict], step: Optional[int] = None) -> None:
        """Resume: metrics.jsonl becomes the checkpoint's history, and steps.jsonl loses the
        log steps after `step` (those of an attempt that did not reach a checkpoint)."""
        self.rows = list(rows)
        if not self.enabled:
            return
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        if step is not None and self.steps_path.exists():
            kept = [r for r in read_metrics(self.steps_path) if r.get("step", 0) <= step]
            self.steps_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """A log step's loss and lr: steps.jsonl (the curves' per-step lines), TensorBoard
        and W&B."""
        if self.enabled:
            with open(self.steps_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
        self.scalars({"train/loss": loss, "train/lr": lr}, step)

    def write(self, row: Dict[str, float]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        self.rows.append(row)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {f"epoch/{k}": v for k, v in row.items()
                   if k not in ("epoch", "step") and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**scalars, "epoch": row["epoch"]}, row["step"])

    def scalars(self, values: Dict[str, float], step: int) -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step)

    def image(self, name: str, path: Path, step: int) -> None:
        """A figure of the run (tsne.png, curves.png): to W&B (TensorBoard reads the PNGs)."""
        if self.wandb is not None and Path(path).exists():
            self.wandb.image(name, path, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()


def progress_enabled(flag: bool) -> bool:
    """Progress bars only where someone watches them: with `progress=true` and stderr a
    terminal (in a log file, a SLURM job's or a redirected one, their carriage-return
    updates would pile up; the epoch's log line says the same once)."""
    import sys
    return bool(flag) and sys.stderr.isatty()


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
    the online probe's top-1 on the training batches."""
    n = max(meters["seen"].item(), 1)
    row = {"epoch": epoch, "step": step, "loss": meters["loss_sum"].item() / n, "lr": lr,
           "images_per_s": images_per_s}
    if has_probe:
        # the probe's accuracy on the augmented training batches, before each of its updates
        row["online_train_top1"] = 100.0 * meters["probe_correct"].item() / max(meters["probe_seen"].item(), 1)
    for k, v in meters.items():
        if k not in ("loss_sum", "seen", "probe_correct", "probe_seen"):
            row[k] = v.item() / n
    return row
