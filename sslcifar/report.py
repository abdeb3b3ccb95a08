"""A sweep's results as a table and a plot.

    python -m sslcifar.report outputs/multirun/simclr/<date>_<time>
    python -m sslcifar.report DIR [DIR ...] --metric knn_top1 --x loss.temperature --lines batch_size

Writes into the first DIR `results.csv`, `results.md` (one row per job: its overrides,
final loss, kNN / online / linear accuracy where present, epochs done, wall time,
status) and `results.png` (the metric against --x, one line per value of --lines).
It reads only files the jobs write as they go, so it works on a sweep still running.
"""
import argparse
import csv
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from .metrics import read_metrics

METRICS = ("loss", "knn_top1", "knn_r2", "online_top1", "linear_top1")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def find_jobs(roots: List[Path]) -> List[Path]:
    """Job directories (with Hydra's .hydra/overrides.yaml) under the given folders."""
    jobs = []
    for root in roots:
        jobs += sorted(p.parent.parent for p in Path(root).glob("**/.hydra/overrides.yaml"))
    return jobs


def _overrides(job: Path) -> Dict[str, str]:
    out = {}
    for line in (job / ".hydra" / "overrides.yaml").read_text().splitlines():
        line = line.strip()
        if line.startswith("- ") and "=" in line:
            key, value = line[2:].strip("'\"").split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _log_lines(job: Path) -> List[str]:
    lines = []
    for log in sorted(job.glob("*.log")):
        lines += log.read_text(errors="replace").splitlines()
    return lines


def _submitit_stderr(job: Path) -> List[str]:
    """submitit's stderr of this job (array index = Hydra's job number)."""
    num = job.name.split("_", 1)[0]
    lines = []
    for err in job.parent.glob(f".submitit/*_{num}/*_log.err"):
        lines += err.read_text(errors="replace").splitlines()
    return lines


def _wall_time(lines: List[str]) -> Optional[float]:
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
              for m in map(_STAMP.match, lines) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) >= 2 else None


def job_row(job: Path) -> dict:
    """One job's row: overrides, final metrics, epochs done, wall time, status."""
    row = {"job": job.name, **_overrides(job)}
    rows = read_metrics(job / "metrics.jsonl")
    done = json.loads((job / "done.json").read_text()) if (job / "done.json").exists() else None
    final = done or (rows[-1] if rows else {})
    for key in METRICS:
        if final.get(key) is not None:
            row[key] = final[key]
    for key in ("knn_top1", "knn_r2", "online_top1"):     # latest value, also mid-run
        if key not in row:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                row[key] = values[-1]
    linear = job / "linear_eval.json"
    if linear.exists():
        row["linear_top1"] = json.loads(linear.read_text()).get("top1")
    row["epochs_done"] = (max(r["epoch"] for r in rows) + 1) if rows else 0
    log = _log_lines(job)
    if (job / "error.txt").exists():          # a user error, left by the entrypoint
        log += (job / "error.txt").read_text().splitlines()
    row["wall_s"] = _wall_time(log)
    errors = [l for l in log + _submitit_stderr(job) if l.startswith("error: ")
              or re.match(r"^\w+(Error|Exception)\b", l)]
    if done is not None:
        row["status"] = "finished"
    elif errors:
        row["status"] = "failed: " + errors[-1][:200]
    elif any("resumed from" in l for l in log):
        row["status"] = "requeued/running"
    else:
        row["status"] = "running"
    return row


def write_table(rows: List[dict], out: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def write_plot(rows: List[dict], out: Path, metric: str, x: str, lines_key: Optional[str]) -> Optional[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = [r for r in rows if r.get(metric) is not None and r.get(x) is not None]
    if not points:
        return None
    groups: Dict[str, list] = {}
    for r in points:
        groups.setdefault(str(r.get(lines_key, "all")) if lines_key else "all", []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rs in sorted(groups.items(), key=lambda kv: _num(kv[0])):
        rs = sorted(rs, key=lambda r: _num(r[x]))
        ax.plot([_num(r[x]) for r in rs], [r[metric] for r in rs], marker="o",
                label=f"{lines_key}={name}" if lines_key else None)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if lines_key:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="multirun directories")
    p.add_argument("--metric", default=None, help="y axis (default: knn_top1, else knn_r2, else loss)")
    p.add_argument("--x", default="loss.temperature", help="swept key on the x axis")
    p.add_argument("--lines", default="batch_size", help="swept key, one line per value")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"error: {missing[0]} is not a folder. Fix: pass a multirun directory "
                         f"such as outputs/multirun/simclr/<date>_<time>")
    rows = [job_row(j) for j in find_jobs(args.dirs)]
    if not rows:
        raise SystemExit(f"error: no job directories (with .hydra/overrides.yaml) under "
                         f"{', '.join(map(str, args.dirs))}")
    metric = args.metric or next((m for m in ("knn_top1", "knn_r2", "loss")
                                  if any(r.get(m) is not None for r in rows)), "loss")
    out = args.dirs[0]
    write_table(rows, out)
    plot = write_plot(rows, out, metric, args.x, args.lines if any(args.lines in r for r in rows) else None)
    done = sum(r["status"] == "finished" for r in rows)
    print(f"{len(rows)} jobs ({done} finished) -> {out / 'results.csv'}, {out / 'results.md'}"
          + (f", {plot} ({metric} vs {args.x})" if plot else ""))


if __name__ == "__main__":
    main()
