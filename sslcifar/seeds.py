"""Seeds as a sweep axis: the jobs of a sweep grouped by every override except the seed,
each group summarised by n, mean, standard deviation and standard error, and two settings
compared seed by seed (paired).

Pure functions over the rows of `sslcifar.report` (one dict per job: its overrides as
strings, its final metrics, its status); the report writes the tables and figures.

    python simclr.py -m +sweep=temperature_batch seed=0,1,2
    python -m sslcifar.report outputs/multirun/simclr/<date>_<time>          # groups.md
    python -m sslcifar.report DIR --compare method=simclr,method=sogclr      # compare.md

Statistics (over the finished seeds of a group, n of them):
    mean = sum(x) / n
    std  = sqrt(sum((x - mean)^2) / (n - 1))        the sample standard deviation
    sem  = std / sqrt(n)                            the standard error of the mean
With n = 1 there is no spread to measure: std and sem are None (shown empty), never 0.
A paired comparison takes the difference b - a seed by seed (the same seed on both sides)
and reports the mean and standard error of those differences, which removes whatever the
two sides share through the seed (initialisation, data order).
"""
import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

SEED = "seed"

# the final metrics a group summarises, in this order, where any of its jobs has them
GROUP_METRICS = ("knn_top1", "knn_r2", "linear_top1", "linear_r2", "online_test_top1",
                 "loss", "images_per_s")


class Stat(tuple):
    """(n, mean, std, sem) of a list of numbers; std and sem None when n < 2."""
    __slots__ = ()

    def __new__(cls, values: Iterable[float]):
        xs = [float(v) for v in values]
        n = len(xs)
        mean = sum(xs) / n if n else None
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
        sem = std / math.sqrt(n) if std is not None else None
        return super().__new__(cls, (n, mean, std, sem))

    n = property(lambda s: s[0])
    mean = property(lambda s: s[1])
    std = property(lambda s: s[2])
    sem = property(lambda s: s[3])


def setting_of(row: dict, keys: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """The row's values of the given override keys, as a hashable, ordered tuple."""
    return tuple((k, str(row.get(k))) for k in keys)


def group_keys(rows: List[dict], override_keys: Sequence[str], seed_key: str = SEED) -> List[str]:
    """The override keys that define a group: those whose value differs between jobs,
    except the seed."""
    return [k for k in override_keys
            if k != seed_key and len({str(r.get(k)) for r in rows}) > 1]


def _seed_order(seed: str):
    return (0, int(seed), "") if str(seed).lstrip("-").isdigit() else (1, 0, str(seed))


def group_rows(rows: List[dict], keys: Sequence[str], seed_key: str = SEED,
               metrics: Sequence[str] = GROUP_METRICS) -> List[dict]:
    """One row per group of jobs sharing the values of `keys` (every swept override but
    the seed), in the order the groups first appear:
        {<key>: value, ..., "n": finished seeds, "seeds": "0 1 2",
         "<metric>_mean", "<metric>_std", "<metric>_sem", "<metric>_n": per metric,
         "not_finished": "seed 2 failed: ...; seed 3 missing"}
    Only finished jobs enter the statistics; every other seed of the sweep is named in
    not_finished with its status (a seed that some group has but this one lacks entirely
    is "missing": its job never started or its folder is gone)."""
    all_seeds = sorted({str(r.get(seed_key)) for r in rows if r.get(seed_key) is not None},
                       key=_seed_order)
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault(setting_of(r, keys), []).append(r)
    out = []
    for setting, members in groups.items():
        done = [r for r in members if r.get("status") == "finished"]
        row = dict(setting)
        row["n"] = len(done)
        row["seeds"] = " ".join(sorted((str(r.get(seed_key)) for r in done), key=_seed_order))
        for m in metrics:
            values = [r[m] for r in done if r.get(m) is not None]
            if not values:
                continue
            s = Stat(values)
            row.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_sem": s.sem, f"{m}_n": s.n})
        problems = [f"seed {r.get(seed_key)} {r.get('status')}" for r in members
                    if r.get("status") != "finished"]
        present = {str(r.get(seed_key)) for r in members}
        problems += [f"seed {s} missing" for s in all_seeds if s not in present]
        row["not_finished"] = "; ".join(problems)
        out.append(row)
    return out


def parse_compare(spec: str) -> Tuple[str, str, str]:
    """'method=simclr,method=sogclr' (or 'method=simclr,sogclr') -> ('method', 'simclr',
    'sogclr'). ValueError with the expected form otherwise."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 2 or "=" not in parts[0]:
        raise ValueError(f"--compare {spec}: expected KEY=A,KEY=B, e.g. method=simclr,method=sogclr")
    key, a = parts[0].split("=", 1)
    if "=" in parts[1]:
        key_b, b = parts[1].split("=", 1)
        if key_b != key:
            raise ValueError(f"--compare {spec}: both sides must set the same key "
                             f"({key} and {key_b}), e.g. method=simclr,method=sogclr")
    else:
        b = parts[1]
    if not (key and a and b) or a == b:
        raise ValueError(f"--compare {spec}: expected two different values of one key, "
                         f"e.g. method=simclr,method=sogclr")
    return key, a, b


def paired(rows: List[dict], side: Callable[[dict], Optional[str]], a: str, b: str,
           override_keys: Sequence[str], metric: str, seed_key: str = SEED) -> List[dict]:
    """Paired differences b - a of `metric`, one row per setting both sides share.

    side(row) is the job's value of the compared key (a, b or anything else: left out).
    A setting is the job's values of every override except the seed and the keys that
    only tell the two sides apart (constant within each side, different between them:
    the compared key itself, or e.g. experiment=... when the method comes from a preset).
    Seeds pair when a finished job of each side has the metric.
        {<key>: value, ..., "a_mean", "b_mean", "diff_mean", "diff_sem", "n", "seeds",
         "unpaired": "seed 2 (sogclr failed: ...)"}
    """
    sides = {a: [r for r in rows if side(r) == a], b: [r for r in rows if side(r) == b]}
    both = sides[a] + sides[b]

    def tells_apart(k: str) -> bool:
        va = {str(r.get(k)) for r in sides[a]}
        vb = {str(r.get(k)) for r in sides[b]}
        return len(va) == 1 and len(vb) == 1 and va != vb
    keys = [k for k in override_keys if k != seed_key and not tells_apart(k)
            and len({str(r.get(k)) for r in both}) > 1]
    by_setting: Dict[tuple, Dict[str, Dict[str, dict]]] = {}
    for name, members in sides.items():
        for r in members:
            by_setting.setdefault(setting_of(r, keys), {a: {}, b: {}})[name][
                str(r.get(seed_key))] = r
    out = []
    for setting, jobs in by_setting.items():
        if not jobs[a] or not jobs[b]:
            continue
        ok = lambda r: r is not None and r.get("status") == "finished" \
            and r.get(metric) is not None                                     # noqa: E731
        seeds = sorted(set(jobs[a]) | set(jobs[b]), key=_seed_order)
        pairs = [s for s in seeds if ok(jobs[a].get(s)) and ok(jobs[b].get(s))]
        unpaired = []
        for s in seeds:
            if s in pairs:
                continue
            why = [f"{name} " + (jobs[name][s].get("status") if s in jobs[name] else "missing")
                   for name in (a, b) if not ok(jobs[name].get(s))]
            unpaired.append(f"seed {s} ({', '.join(why)})")
        diffs = Stat(jobs[b][s][metric] - jobs[a][s][metric] for s in pairs)
        row = dict(setting)
        row.update({
            "a_mean": Stat(jobs[a][s][metric] for s in pairs).mean,
            "b_mean": Stat(jobs[b][s][metric] for s in pairs).mean,
            "diff_mean": diffs.mean, "diff_sem": diffs.sem, "n": diffs.n,
            "seeds": " ".join(pairs), "unpaired": "; ".join(unpaired)})
        out.append(row)
    return out


def describe_difference(row: dict, a: str, b: str, metric: str) -> str:
    """'sogclr - simclr: +1.23 ± 0.45 knn_top1 (2.7 standard errors; 3 seeds paired)'."""
    if row["n"] == 0:
        return f"{b} - {a}: no seed finished on both sides"
    text = f"{b} - {a}: {row['diff_mean']:+.2f}"
    if row["diff_sem"] is None:
        return text + f" {metric} (1 seed: no standard error)"
    text += f" ± {row['diff_sem']:.2f} {metric}"
    z = row["diff_mean"] / row["diff_sem"] if row["diff_sem"] > 0 else math.inf
    return text + f" ({abs(z):.1f} standard errors; {row['n']} seeds paired)"
