"""A sweep's results as a table and a plot.

    python -m sslcifar.report outputs/multirun/simclr/<date>_<time>
    python -m sslcifar.report DIR [DIR ...] --metric knn_top1 --x loss.temperature --lines batch_size

Writes into the first DIR:
- `results.csv`: one row per job: its overrides, the final loss, kNN / online / linear
  accuracy (or R^2) where present, the last step, epochs done, how often it was resumed
  after a requeue, wall time and status;
- `results.md`: the same table, with the overrides that all jobs share listed above it;
- `results.png`: the metric against --x, one line per value of --lines (hollow markers:
  jobs not finished yet).

A job directory is any folder under DIR holding Hydra's `.hydra/overrides.yaml`. The report
reads only what the jobs write as they go (events.jsonl, metrics.jsonl, done.json,
error.txt, submitit's logs and result file, and a linear_eval.json in the job folder or
one level below, e.g. from `python linear_eval.py pretrained=JOB hydra.run.dir=JOB/linear_eval`),
so it works on a sweep that is still running. A job's life comes from its events
(`sslcifar.events`: started, resumed, epoch_end, stopped, finished, failed), never from the
wording of its log. Status is one of
- `finished`: done.json exists;
- `failed: <the error's line>`: the failed event, error.txt (a user error before training
  started), submitit's result file (an exception inside the job) or stderr (a crash, a
  cancel, SLURM's time limit);
- `cancelled: ...`: stopped by scancel (its last checkpoint is kept);
- `requeued at step S`: stopped by a signal, waiting to be resumed;
- `running` / `running (resumed at step S)`;
- `stopped at step S`: the job returned without finishing (max_steps).
"""
import argparse
import csv
import json
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from .events import last_event, read_events
from .metrics import read_metrics

METRICS = ("loss", "knn_top1", "knn_r2", "online_test_top1", "online_train_top1", "linear_top1",
           "linear_r2", "test_top1")
RESULT_COLUMNS = ("step", *METRICS, "epochs_done", "restarts", "wall_s", "status")

# the last line of a failure: a user error, a Python exception, SLURM killing the job
# (a requeue or a preemption is not a failure: the job comes back)
_ERROR = re.compile(r"^(error: .*|[\w.]+(Error|Exception)\b.*"
                    r"|slurmstepd[^:]*: error: (?!.*(JOB REQUEUE|PREEMPTION)).*)$")


# ---------------------------------------------------------------------- finding jobs

def find_jobs(roots: List[Path]) -> List[Path]:
    """Job directories (holding .hydra/overrides.yaml) under the given folders, in job
    number order. A run nested inside a job directory (e.g. a linear evaluation written
    there) belongs to that job and is not a job of its own."""
    jobs: List[Path] = []
    for root in roots:
        found = sorted({p.parent.parent for p in Path(root).glob("**/.hydra/overrides.yaml")})
        found = [j for j in found if not any(o != j and o in j.parents for o in found)]
        jobs += sorted(found, key=lambda j: (_job_num(j), j.name))
    return jobs


def _hydra_job(job: Path) -> dict:
    """hydra.job of the job's saved Hydra config (num, id = SLURM/submitit job id)."""
    try:
        return (yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text()) or {}) \
            .get("hydra", {}).get("job", {}) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _job_num(job: Path) -> int:
    num = _hydra_job(job).get("num")
    if isinstance(num, int):
        return num
    head = job.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def overrides(job: Path) -> Dict[str, str]:
    """The job's command-line overrides, key -> value as typed ('+'/'~' prefixes dropped)."""
    try:
        items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for item in items:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            # a multirun stores `progress=false` as `progress=False`: one spelling per value
            value = {"false": "false", "true": "true", "none": "null", "null": "null"}.get(
                value.lower(), value)
            out[key.lstrip("+~")] = value
    out.pop("resume", None)         # added when a job is resumed by hand: not a setting
    return out


# ---------------------------------------------------------------------- reading one job

def _lines(path: Path) -> List[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _submitit_folder(job: Path) -> Optional[Path]:
    """submitit's folder of this job: <sweep>/.submitit/<job id> (hydra/launcher=slurm|local)."""
    job_id = _hydra_job(job).get("id")
    if job_id is None:
        return None
    folder = job.parent / ".submitit" / str(job_id)
    return folder if folder.is_dir() else None


def _submitit_failure(folder: Optional[Path]) -> Optional[str]:
    """The error of a job that submitit saw fail, from its result file. Hydra catches an
    exception raised inside a job and hands it back in the result, so the job's log and
    stderr may not show it at all. The file is a pickle written by this sweep's own jobs."""
    if folder is None:
        return None
    for path in sorted(folder.glob("*_0_result.pkl")):
        try:
            with open(path, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception:           # being written, or written by other versions: ignore
            continue
        if outcome == "error":          # submitit's own traceback text
            last = [l for l in str(value).splitlines() if l.strip()]
            return last[-1].strip() if last else "error"
        status = getattr(getattr(value, "status", None), "name", None)
        if status == "FAILED":          # a hydra JobReturn holding the exception
            err = getattr(value, "_return_value", None)
            return f"{type(err).__name__}: {err}" if err is not None else "failed"
    return None


def _submitit_completed(folder: Optional[Path]) -> bool:
    return folder is not None and any(folder.glob("*_0_result.pkl"))


def _wall_time(events: List[dict]) -> Optional[float]:
    """Seconds of training: from each start (started / resumed) to the last event before
    the next start, summed, so a requeued job's wait to start again is not counted."""
    total, begin, last = 0.0, None, None
    for e in events:
        if e["event"] in ("started", "resumed"):
            if begin is not None:
                total += last - begin
            begin = e["time"]
        last = e["time"]
    if begin is None:
        return None
    return total + (last - begin)


def _status(events: List[dict], errors: List[str], done: bool, completed: bool,
            last_row: Optional[dict] = None) -> str:
    """finished / failed / cancelled / requeued / stopped / running, from the job's events,
    its error lines (error.txt, stderr, submitit's result), done.json, submitit's result
    and metrics' last row."""
    if done:
        return "finished"
    last = last_event(events)
    if last is not None and last["event"] == "stopped" and last.get("reason") == "max_steps" \
            and not errors:
        return f"stopped at step {last['step']}"
    if last is not None and last["event"] == "failed":
        errors = [*errors, last.get("error") or "failed"]
    if errors:
        line = re.sub(r"^slurmstepd[^:]*: error: \*+ (.*?) \**$", r"\1", errors[-1])
        if "CANCELLED AT" in line and "DUE TO" not in line:      # scancel: stopped, not broken
            return "cancelled: " + line
        return "failed: " + line[:300]
    if last is not None and last["event"] == "stopped":
        return f"requeued at step {last['step']}"
    progress = last_event(events, "epoch_end", "stopped", "resumed")
    if completed:                 # submitit has the job's result, yet no done.json
        return f"stopped at step {progress['step']}" if progress else "stopped"
    if last_row and last_row.get("partial"):      # written only when max_steps ends a run
        return f"stopped at step {last_row['step']}"
    resumed = last_event(events, "resumed")
    if resumed is not None:
        return f"running (resumed at step {resumed['step']})"
    return "running"


def job_row(job: Path, name: Optional[str] = None) -> dict:
    """One job's row: overrides, last step, final metrics, epochs done, restarts, wall time
    and status. Reads files only; no SLURM needed."""
    row: dict = {"job": name or job.name, **overrides(job)}
    rows = read_metrics(job / "metrics.jsonl")
    done = None
    if (job / "done.json").exists():
        try:
            done = json.loads((job / "done.json").read_text())
        except (OSError, json.JSONDecodeError):
            done = None
    final = done or (rows[-1] if rows else {})
    res: dict = {"step": final.get("step")}
    for key in METRICS:
        if final.get(key) is not None:
            res[key] = final[key]
    for key in ("knn_top1", "knn_r2", "online_test_top1", "online_train_top1", "test_top1"):
        # mid-run: the latest value measured
        if key not in res:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                res[key] = values[-1]
    for path in [job / "linear_eval.json", *sorted(job.glob("*/linear_eval.json"))]:
        try:
            lin = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for src, dst in (("top1", "linear_top1"), ("r2", "linear_r2")):
            if lin.get(src) is not None:
                res[dst] = lin[src]
        break
    whole = [r["epoch"] for r in rows if not r.get("partial")]
    res["epochs_done"] = max(whole) + 1 if whole else 0

    events = read_events(job)
    res["restarts"] = sum(e["event"] == "resumed" for e in events)
    res["wall_s"] = _wall_time(events)
    folder = _submitit_folder(job)
    stderr = [l for p in sorted(folder.glob("*_0_log.err")) for l in _lines(p)] if folder else []
    errors = [l.strip() for l in _lines(job / "error.txt") + stderr if _ERROR.match(l.strip())]
    failure = _submitit_failure(folder) if done is None else None
    if failure:
        errors.append(failure)
    res["status"] = _status(events, errors, done is not None, _submitit_completed(folder),
                            rows[-1] if rows else None)
    row.update(res)
    return row


def collect(roots: List[Path]) -> List[dict]:
    """The rows of every job under the given folders (job names prefixed by their folder
    when there are several)."""
    rows = []
    for root in roots:
        for job in find_jobs([root]):
            rel = job.relative_to(root).as_posix()
            rows.append(job_row(job, f"{Path(root).name}/{rel}" if len(roots) > 1 else rel))
    return rows


# ---------------------------------------------------------------------- writing

def swept_keys(rows: List[dict]) -> List[str]:
    """Override keys whose value differs between jobs (or is missing in some)."""
    keys = _override_keys(rows)
    return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def _override_keys(rows: List[dict]) -> List[str]:
    return list(dict.fromkeys(k for r in rows for k in r if k != "job" and k not in RESULT_COLUMNS))


def _short(job: str) -> str:
    """'3_batch_size-64+loss.temperature-0.5' -> '3': the swept columns say the rest."""
    head, _, last = job.rpartition("/")
    m = re.match(r"^(\d+)_", last)
    return (f"{head}/" if head else "") + (m.group(1) if m else last)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_table(rows: List[dict], out: Path) -> None:
    """results.csv (every override) and results.md (shared overrides listed once)."""
    results = [c for c in RESULT_COLUMNS if any(r.get(c) is not None for r in rows)]
    keys = ["job", *_override_keys(rows), *results]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    swept = swept_keys(rows)
    shared = [f"`{k}={rows[0][k]}`" for k in _override_keys(rows) if k not in swept]
    cols = ["job", *swept, *results]
    cell = lambda v: _fmt(v).replace("|", "\\|")          # noqa: E731
    lines = [f"{len(rows)} jobs, {sum(r['status'] == 'finished' for r in rows)} finished."]
    if shared:
        lines.append("All jobs: " + " ".join(shared) + ".")
    lines += ["", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(cell(_short(r[k]) if k == "job" else r.get(k)) for k in cols) + " |"
              for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _order(v):
    """Numbers by value, then anything else by name."""
    n = _num(v)
    return (0, n, "") if isinstance(n, float) else (1, 0.0, str(v))


def write_plot(rows: List[dict], out: Path, metric: str, x: str,
               lines_key: Optional[str]) -> Optional[Path]:
    """results.png: metric against x, one line per value of lines_key; None if no job has
    both values yet."""
    points = [r for r in rows if r.get(metric) is not None and r.get(x) is not None]
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = all(isinstance(_num(r[x]), float) for r in points)
    xs = sorted({r[x] for r in points}, key=_order)
    pos = (lambda v: _num(v)) if numeric else (lambda v: xs.index(v))   # noqa: E731
    groups: Dict[str, list] = {}
    for r in points:
        groups.setdefault(str(r.get(lines_key)) if lines_key else "", []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, name in enumerate(sorted(groups, key=_order)):
        rs = sorted(groups[name], key=lambda r: pos(r[x]))
        color = f"C{i % 10}"
        ax.plot([pos(r[x]) for r in rs], [r[metric] for r in rs], marker="o", color=color,
                label=f"{lines_key}={name}" if lines_key else None)
        unfinished = [r for r in rs if r.get("status") != "finished"]
        if unfinished:            # hollow: a value from a job still running (or failed)
            ax.plot([pos(r[x]) for r in unfinished], [r[metric] for r in unfinished], "o",
                    markerfacecolor="white", markeredgecolor=color)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    elif len(xs) > 2 and min(map(_num, xs)) > 0 and max(map(_num, xs)) / min(map(_num, xs)) >= 8:
        ax.set_xscale("log", base=2 if all(_num(v).is_integer() for v in xs) else 10)
        ax.set_xticks([_num(v) for v in xs], [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    done = sum(r.get("status") == "finished" for r in rows)
    ax.set_title(f"{metric} vs {x} ({done}/{len(rows)} jobs finished"
                 + ("; hollow: not finished)" if done < len(points) else ")"), fontsize=10)
    if lines_key:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- command line

def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m sslcifar.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="sweep (multirun) directories")
    p.add_argument("--metric", default=None,
                   help="y axis: knn_top1, knn_r2, online_test_top1, linear_top1, loss ... "
                        "(default: the first of knn_top1, knn_r2, loss that some job has)")
    p.add_argument("--x", default=None,
                   help="override key on the x axis (default: loss.temperature if swept, "
                        "else the first swept key)")
    p.add_argument("--lines", default=None,
                   help="override key, one line per value (default: batch_size if swept, "
                        "else the next swept key; 'none' for a single line)")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"error: {missing[0]} is not a folder. Fix: pass a sweep directory "
                         f"such as outputs/multirun/simclr/<date>_<time>")
    rows = collect(args.dirs)
    if not rows:
        raise SystemExit(f"error: no job directories (with .hydra/overrides.yaml) under "
                         f"{', '.join(map(str, args.dirs))}. Fix: pass the folder that "
                         f"`python simclr.py -m ...` printed as its sweep output dir")
    swept = swept_keys(rows)
    known = set(_override_keys(rows))
    for flag, key in (("--x", args.x), ("--lines", args.lines)):
        if key not in (None, "none") and key not in known:
            raise SystemExit(f"error: {flag} {key}: no job overrides it. Fix: use one of "
                             f"{', '.join(swept or sorted(known)) or '(no overrides)'}")
    x = args.x or ("loss.temperature" if "loss.temperature" in swept else
                   (swept[0] if swept else None))
    lines_key = args.lines
    if lines_key is None:
        rest = [k for k in swept if k != x]
        lines_key = "batch_size" if "batch_size" in rest else (rest[0] if rest else None)
    elif lines_key == "none":
        lines_key = None
    metric = args.metric or next((m for m in ("knn_top1", "knn_r2", "loss")
                                  if any(r.get(m) is not None for r in rows)), "loss")
    if args.metric and not any(r.get(args.metric) is not None for r in rows):
        have = [c for c in METRICS if any(r.get(c) is not None for r in rows)]
        raise SystemExit(f"error: --metric {args.metric}: no job has it (yet). Fix: use one of "
                         f"{', '.join(have) or '(none so far: no job has logged an epoch)'}")
    out = args.dirs[0]
    write_table(rows, out)
    plot = write_plot(rows, out, metric, x, lines_key) if x else None
    done = sum(r["status"] == "finished" for r in rows)
    failed = sum(r["status"].startswith("failed") for r in rows)
    if plot:
        what = f", {plot} ({metric} vs {x}" + (f", one line per {lines_key})" if lines_key else ")")
    elif x is None:
        what = ", no plot (the jobs share all their overrides: nothing to put on the x axis)"
    else:
        what = f", no plot (no job has both {metric} and {x} yet)"
    print(f"{len(rows)} jobs ({done} finished, {failed} failed) -> {out / 'results.csv'}, "
          f"{out / 'results.md'}{what}")


if __name__ == "__main__":
    main()
