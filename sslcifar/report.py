"""A sweep's results as tables and figures.

    python -m sslcifar.report outputs/multirun/simclr/<date>_<time>
    python -m sslcifar.report DIR [DIR ...] --metric knn_top1 --x loss.temperature --lines batch_size
    python -m sslcifar.report DIR --compare method=simclr,method=sogclr

Writes into the first DIR:
- `results.csv`: one row per job: its overrides, the final loss, kNN / online / linear
  accuracy (or R^2) where present, the last step, epochs done, how often it was resumed
  after a requeue, wall time and status;
- `results.md`: the same table, with the overrides that all jobs share listed above it;
- `results.png`: the metric against --x, one line per value of --lines (hollow markers:
  jobs not finished yet);
- `curves.png`: the metric (knn_top1 unless --metric is logged per epoch) against the
  epoch, one line per setting;
and, when the sweep ran several seeds (`seed=0,1,2`; `sslcifar.seeds`):
- `groups.csv`, `groups.md`: one row per setting (every override but the seed): n, mean,
  standard deviation and standard error of each final metric over its finished seeds,
  and the seeds not finished, named with their status;
- `results.png` then draws each setting's mean with error bars of ± one standard error
  (n in the legend), and `curves.png` the mean per epoch with a band of ± one standard error;
- `compare.md` with --compare KEY=A,KEY=B: for each setting both sides share, the mean and
  standard error of the seed-by-seed differences B - A of the metric (also printed).

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
from .seeds import GROUP_METRICS, SEED, Stat, group_keys, group_rows, paired, parse_compare, \
    setting_of, describe_difference

METRICS = ("loss", "knn_top1", "knn_r2", "online_test_top1", "online_train_top1", "linear_top1",
           "linear_r2", "test_top1")
# the metrics logged at epoch ends, drawn per epoch in curves.png
CURVE_METRICS = ("loss", "knn_top1", "knn_r2", "online_test_top1", "online_train_top1")
RESULT_COLUMNS = ("step", *METRICS, "images_per_s", "epochs_done", "restarts", "wall_s", "status")

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


def _hydra_yaml(job: Path) -> dict:
    """The `hydra:` node of the job's saved Hydra config."""
    try:
        return (yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text()) or {}) \
            .get("hydra", {}) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _hydra_job(job: Path) -> dict:
    """hydra.job of the job's saved Hydra config (num, id = SLURM/submitit job id)."""
    return _hydra_yaml(job).get("job", {}) or {}


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
    speeds = sorted(r["images_per_s"] for r in rows if r.get("images_per_s") is not None)
    if speeds:                  # the median epoch: the first one also pays for warming up
        res["images_per_s"] = speeds[len(speeds) // 2]

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
    row["_dir"] = job           # not a column: where the curves and --compare read more
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
    return list(dict.fromkeys(k for r in rows for k in r
                              if k != "job" and k not in RESULT_COLUMNS and not k.startswith("_")))


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


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    """A figure with a light grid, written as PNG and closed."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _draw(points: List[dict], out: Path, metric: str, x: str, lines_key: Optional[str],
          title: str) -> Path:
    """results.png from points {"x", "line", "y", "err" (or None), "n" (or None), "hollow"}:
    metric against x, one line per value of lines_key, error bars where given, n (the
    seeds behind each point) in the legend; a log axis when x spans a factor of 8 or more."""
    plt = _pyplot()
    numeric = all(isinstance(_num(p["x"]), float) for p in points)
    xs = sorted({p["x"] for p in points}, key=_order)
    log = numeric and len(xs) > 1 and min(map(_num, xs)) > 0 \
        and max(map(_num, xs)) / min(map(_num, xs)) >= 8
    lines: Dict[str, list] = {}
    for p in points:
        lines.setdefault(p["line"], []).append(p)
    bars = any(p["err"] is not None for p in points)

    def pos(v, i=0):
        """x position; with error bars each line is nudged sideways so its bars stay
        visible where lines meet (2% of the axis apart)."""
        nudge = 0.02 * (i - (len(lines) - 1) / 2) if bars else 0.0
        if not numeric:
            return xs.index(v) + nudge * (len(xs) - 1 or 1)
        if log:
            return _num(v) * (max(map(_num, xs)) / min(map(_num, xs))) ** nudge
        return _num(v) + nudge * ((max(map(_num, xs)) - min(map(_num, xs))) or 1.0)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, name in enumerate(sorted(lines, key=_order)):
        ps = sorted(lines[name], key=lambda p: _order(p["x"]))
        color = f"C{i % 10}"
        label = f"{lines_key}={name}" if lines_key else ("" if ps[0]["n"] is None else "all")
        ns = sorted({p["n"] for p in ps if p["n"] is not None})
        if ns:
            label += f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}-{ns[-1]})"
        err = [p["err"] or 0.0 for p in ps] if bars else None
        ax.errorbar([pos(p["x"], i) for p in ps], [p["y"] for p in ps], yerr=err, marker="o",
                    color=color, capsize=3, label=label or None)
        hollow = [p for p in ps if p["hollow"]]
        if hollow:              # a value from a job still running (or failed), or a group missing seeds
            ax.plot([pos(p["x"], i) for p in hollow], [p["y"] for p in hollow], "o", zorder=3,
                    markerfacecolor="white", markeredgecolor=color)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    elif log:
        ax.set_xscale("log", base=2 if all(_num(v).is_integer() for v in xs) else 10)
        ax.set_xticks([_num(v) for v in xs], [str(v) for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    if lines_key or any(p["n"] is not None for p in points):
        ax.legend(fontsize=8)
    return _save(fig, out / "results.png")


def write_plot(rows: List[dict], out: Path, metric: str, x: str,
               lines_key: Optional[str]) -> Optional[Path]:
    """results.png: metric against x, one point per job, one line per value of lines_key;
    None if no job has both values yet."""
    points = [{"x": r[x], "line": str(r.get(lines_key)) if lines_key else "", "y": r[metric],
               "err": None, "n": None, "hollow": r.get("status") != "finished"}
              for r in rows if r.get(metric) is not None and r.get(x) is not None]
    if not points:
        return None
    done = sum(r.get("status") == "finished" for r in rows)
    title = (f"{metric} vs {x} ({done}/{len(rows)} jobs finished"
             + ("; hollow: not finished)" if done < len(points) else ")"))
    return _draw(points, out, metric, x, lines_key, title)


def _group_points(groups: List[dict], metric: str, x: str, lines_key: Optional[str]) -> List[dict]:
    """The points of a seeded sweep's plot: each setting's mean, ± one standard error,
    its n; hollow when some of its seeds did not finish."""
    return [{"x": g[x], "line": str(g.get(lines_key)) if lines_key else "",
             "y": g[f"{metric}_mean"], "err": g.get(f"{metric}_sem"), "n": g[f"{metric}_n"],
             "hollow": bool(g["not_finished"])}
            for g in groups if g.get(f"{metric}_mean") is not None and g.get(x) is not None]


def write_group_plot(groups: List[dict], out: Path, metric: str, x: str,
                     lines_key: Optional[str]) -> Optional[Path]:
    """results.png of a seeded sweep: the mean over seeds of metric against x, error bars
    of one standard error, n in the legend; hollow: a group with seeds not finished."""
    points = _group_points(groups, metric, x, lines_key)
    if not points:
        return None
    seeds = sum(g["n"] for g in groups)
    title = (f"{metric}: mean ± 1 standard error over seeds\n({seeds} finished jobs"
             + ("; hollow: seeds missing)" if any(p["hollow"] for p in points) else ")"))
    return _draw(points, out, metric, x, lines_key, title)


def write_groups(groups: List[dict], keys: List[str], out: Path) -> None:
    """groups.csv (every statistic) and groups.md (mean ± sem (std) per metric)."""
    metrics = [m for m in GROUP_METRICS if any(f"{m}_mean" in g for g in groups)]
    cols = [*keys, "n", "seeds",
            *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "sem", "n")], "not_finished"]
    with open(out / "groups.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(groups)

    def cell(g, m):
        if g.get(f"{m}_mean") is None:
            return ""
        text = _fmt(g[f"{m}_mean"])
        if g.get(f"{m}_sem") is not None:
            text += f" ± {g[f'{m}_sem']:.2g} (sd {g[f'{m}_std']:.2g})"
        return text
    total = sum(g["n"] for g in groups)
    lines = [f"{len(groups)} settings, {total} finished seeds; mean ± standard error "
             f"(sd: standard deviation) over the finished seeds of each setting.", "",
             "| " + " | ".join([*keys, "n", *metrics, "not finished"]) + " |",
             "|" + " --- |" * (len(keys) + len(metrics) + 2)]
    for g in groups:
        lines.append("| " + " | ".join([*(str(g[k]) for k in keys), str(g["n"]),
                                        *(cell(g, m) for m in metrics),
                                        g["not_finished"].replace("|", "\\|")]) + " |")
    (out / "groups.md").write_text("\n".join(lines) + "\n")


def seed_curves(rows: List[dict], keys: List[str], metric: str) -> Dict[tuple, Dict[int, Stat]]:
    """Each setting's metric after each epoch: {setting: {epochs done: Stat over the seeds
    (jobs) that logged it}}, from every job's metrics.jsonl (running jobs too)."""
    series: Dict[tuple, Dict[int, list]] = {}
    for r in rows:
        per_epoch = series.setdefault(setting_of(r, keys), {})
        for m in read_metrics(Path(r["_dir"]) / "metrics.jsonl") if r.get("_dir") else []:
            if m.get(metric) is not None and not m.get("partial"):
                per_epoch.setdefault(m["epoch"] + 1, []).append(m[metric])
    return {k: {e: Stat(v[e]) for e in sorted(v)} for k, v in series.items() if v}


def write_curves(rows: List[dict], keys: List[str], out: Path, metric: str) -> Optional[Path]:
    """curves.png: each setting's metric per epoch, the mean over its seeds as a line and
    a band of ± one standard error; None when no job logged the metric at an epoch end."""
    series = seed_curves(rows, keys, metric)
    if not series:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (setting, stats) in enumerate(series.items()):
        epochs = list(stats)
        color = f"C{i % 10}"
        label = " ".join(f"{k}={v}" for k, v in setting) or "all"
        label += f" (n={max(s.n for s in stats.values())})"
        ax.plot(epochs, [s.mean for s in stats.values()], marker=".", color=color, label=label)
        if any(s.sem is not None for s in stats.values()):
            lo = [s.mean - (s.sem or 0.0) for s in stats.values()]
            hi = [s.mean + (s.sem or 0.0) for s in stats.values()]
            ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs done")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch: mean over seeds ± 1 standard error", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, out / "curves.png")


def side_value(row: dict, key: str) -> Optional[str]:
    """The job's value of key for --compare: its override, else the config group Hydra
    chose (hydra.runtime.choices: method=simclr when experiment=... picked it), else the
    composed config's value (.hydra/config.yaml, a dotted key)."""
    if key in row and key not in RESULT_COLUMNS and key != "job":
        return str(row[key])
    job = row.get("_dir")
    if job is None:
        return None
    choices = (_hydra_yaml(Path(job)).get("runtime") or {}).get("choices") or {}
    if key in choices:
        return str(choices[key])
    try:
        value = yaml.safe_load((Path(job) / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def write_compare(rows: List[dict], spec: str, metric: str, out: Path) -> List[str]:
    """compare.md: for each setting both sides share, the paired difference b - a of
    metric over seeds; returns its lines (printed by main)."""
    key, a, b = parse_compare(spec)
    sides = {r["job"]: side_value(r, key) for r in rows}
    found = {v for v in sides.values() if v is not None}
    for value in (a, b):
        if value not in found:
            raise ValueError(f"--compare {spec}: no job has {key}={value} "
                             f"(values found: {', '.join(sorted(found)) or 'none'})")
    result = paired(rows, lambda r: sides[r["job"]], a, b, _override_keys(rows), metric)
    if not result:
        raise ValueError(f"--compare {spec}: {key}={a} and {key}={b} share no setting")
    lines = [f"Paired comparison of {metric}: {b} - {a}, seed by seed (mean ± standard "
             f"error of the differences)", ""]
    for r in result:
        setting = ", ".join(f"{k}={v}" for k, v in r.items()
                            if k not in ("a_mean", "b_mean", "diff_mean", "diff_sem", "n",
                                         "seeds", "unpaired")) or "all jobs"
        line = f"- {setting}: {describe_difference(r, a, b, metric)}"
        if r["n"]:
            line += f"; means {a} {r['a_mean']:.4g}, {b} {r['b_mean']:.4g}; seeds {r['seeds']}"
        if r["unpaired"]:
            line += f"; left out: {r['unpaired']}"
        lines.append(line)
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return lines


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
    p.add_argument("--compare", default=None, metavar="KEY=A,KEY=B",
                   help="paired differences B - A of --metric over seeds, for each setting "
                        "both sides share (compare.md), e.g. method=simclr,method=sogclr; KEY "
                        "is an override, a config group (method, optimizer) or a config key")
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
    seeded = SEED in swept                  # several seeds: one point per setting, with intervals
    axes = [k for k in swept if k != SEED] if seeded else swept
    for flag, key in (("--x", args.x), ("--lines", args.lines)):
        if key not in (None, "none") and key not in known:
            raise SystemExit(f"error: {flag} {key}: no job overrides it. Fix: use one of "
                             f"{', '.join(swept or sorted(known)) or '(no overrides)'}")
    x = args.x or ("loss.temperature" if "loss.temperature" in axes else
                   ("batch_size" if "batch_size" in axes else (axes[0] if axes else None)))
    lines_key = args.lines
    if lines_key is None:
        rest = [k for k in axes if k != x]
        lines_key = "batch_size" if "batch_size" in rest else (rest[0] if rest else None)
    elif lines_key == "none":
        lines_key = None
    metric = args.metric or next((m for m in ("knn_top1", "knn_r2", "loss")
                                  if any(r.get(m) is not None for r in rows)), "loss")
    if args.metric and not any(r.get(args.metric) is not None for r in rows):
        have = [c for c in METRICS if any(r.get(c) is not None for r in rows)]
        raise SystemExit(f"error: --metric {args.metric}: no job has it (yet). Fix: use one of "
                         f"{', '.join(have) or '(none so far: no job has logged an epoch)'}")
    compared = None
    if args.compare:
        try:
            compared = write_compare(rows, args.compare, metric, args.dirs[0])
        except ValueError as e:
            raise SystemExit(f"error: {e}. Fix: name two values of one override or config "
                             f"group that the sweep ran, e.g. --compare method=simclr,method=sogclr")
    out = args.dirs[0]
    write_table(rows, out)
    keys = group_keys(rows, _override_keys(rows))
    made = []
    if seeded:
        groups = group_rows(rows, keys)
        write_groups(groups, keys, out)
        made += [out / "groups.csv", out / "groups.md"]
        plot = write_group_plot(groups, out, metric, x, lines_key) if x else None
    else:
        plot = write_plot(rows, out, metric, x, lines_key) if x else None
    curve_metric = metric if metric in CURVE_METRICS else "knn_top1"
    curves = write_curves(rows, keys, out, curve_metric)
    done = sum(r["status"] == "finished" for r in rows)
    failed = sum(r["status"].startswith("failed") for r in rows)
    if plot:
        what = f", {plot} ({metric} vs {x}" + (f", one line per {lines_key}" if lines_key else "") \
            + ("; mean ± standard error over seeds)" if seeded else ")")
    elif x is None:
        what = ", no plot (the jobs share all their overrides: nothing to put on the x axis)"
    else:
        what = f", no plot (no job has both {metric} and {x} yet)"
    extra = "".join(f", {m}" for m in made)
    if curves:
        extra += f", {curves} ({curve_metric} per epoch)"
    print(f"{len(rows)} jobs ({done} finished, {failed} failed) -> {out / 'results.csv'}, "
          f"{out / 'results.md'}{what}{extra}")
    if compared:
        print("\n".join(compared[:1] + compared[2:]) + f"\n-> {out / 'compare.md'}")


if __name__ == "__main__":
    main()
