"""Seeds as a sweep axis (sslcifar.seeds, sslcifar.report): the statistics against numbers
worked out by hand here, the grouping with failed and missing seeds, the paired comparison,
the tables and figures of a synthetic sweep folder with known values, and a tiny real
seeded multirun through the local launcher."""
import csv
import json
import math

import pytest
import yaml

from sslcifar.report import _group_points, collect, main, seed_curves, side_value
from sslcifar.seeds import Stat, group_keys, group_rows, paired, parse_compare

from .conftest import run

PNG = b"\x89PNG\r\n\x1a\n"


def test_mean_std_and_standard_error_by_hand():
    # 40, 42, 47: mean 43; squared deviations 9 + 1 + 16 = 26; sample variance 26 / 2 = 13
    s = Stat([40, 42, 47])
    assert s.n == 3 and s.mean == 43
    assert s.std == pytest.approx(math.sqrt(13), rel=1e-12)
    assert s.sem == pytest.approx(math.sqrt(13) / math.sqrt(3), rel=1e-12)   # 2.0817
    assert s.sem == pytest.approx(2.081666, abs=1e-6)
    one = Stat([5.0])                  # one seed: no spread measured, never a zero interval
    assert (one.n, one.mean, one.std, one.sem) == (1, 5.0, None, None)
    assert Stat([]).n == 0 and Stat([]).mean is None


def _row(seed, batch, method, knn, status="finished", **extra):
    return {"job": f"{method}-{batch}-{seed}", "method": method, "batch_size": str(batch),
            "seed": str(seed), "knn_top1": knn if status == "finished" else None,
            "status": status, **extra}


def test_groups_count_and_name_failed_and_missing_seeds():
    rows = [_row(0, 32, "simclr", 40.0), _row(1, 32, "simclr", 42.0), _row(2, 32, "simclr", 47.0),
            _row(0, 512, "simclr", 50.0), _row(1, 512, "simclr", None, "failed: error: loss is nan"),
            # seed 2 of batch 512 never ran: its folder is missing
            _row(0, 32, "sogclr", 45.0, loss=1.5), _row(1, 32, "sogclr", 46.0, loss=2.5),
            _row(2, 32, "sogclr", 44.0, "running (resumed at step 7)")]
    keys = group_keys(rows, ["method", "batch_size", "seed"])
    assert keys == ["method", "batch_size"]                  # the seed is not a setting
    groups = {(g["method"], g["batch_size"]): g for g in group_rows(rows, keys)}
    assert len(groups) == 3
    g = groups[("simclr", "32")]
    assert (g["n"], g["seeds"], g["not_finished"]) == (3, "0 1 2", "")
    assert g["knn_top1_mean"] == 43 and g["knn_top1_sem"] == pytest.approx(2.081666, abs=1e-6)
    g = groups[("simclr", "512")]
    assert (g["n"], g["seeds"], g["knn_top1_mean"], g["knn_top1_sem"]) == (1, "0", 50.0, None)
    assert g["not_finished"] == "seed 1 failed: error: loss is nan; seed 2 missing"
    g = groups[("sogclr", "32")]
    assert g["not_finished"] == "seed 2 running (resumed at step 7)"
    assert (g["knn_top1_mean"], g["knn_top1_n"], g["loss_mean"]) == (45.5, 2, 2.0)
    assert g["loss_std"] == pytest.approx(math.sqrt(0.5))
    assert "images_per_s_mean" not in g                     # no job has it: no column


def test_paired_differences_by_hand():
    a = [40.0, 42.0, 47.0]
    b = [43.0, 46.0, 48.0]               # differences 3, 4, 1: mean 8/3, sd sqrt(7/3)
    rows = [_row(s, 32, "simclr", a[s], experiment="base") for s in range(3)]
    rows += [_row(s, 32, "sogclr", b[s], experiment="sog") for s in range(3)]
    rows += [_row(0, 512, "simclr", 50.0, experiment="base"),
             _row(1, 512, "simclr", 51.0, experiment="base"),
             _row(0, 512, "sogclr", 52.0, experiment="sog"),
             _row(1, 512, "sogclr", None, "failed: boom", experiment="sog")]
    result = paired(rows, lambda r: r["method"], "simclr", "sogclr",
                    ["experiment", "method", "batch_size", "seed"], "knn_top1")
    # experiment only tells the two sides apart: not part of the setting
    assert [list(r)[:1] for r in result] == [["batch_size"], ["batch_size"]]
    r32, r512 = result
    assert (r32["batch_size"], r32["n"], r32["seeds"]) == ("32", 3, "0 1 2")
    assert r32["diff_mean"] == pytest.approx(8 / 3)
    assert r32["diff_sem"] == pytest.approx(math.sqrt(7 / 3) / math.sqrt(3))
    assert (r32["a_mean"], r32["b_mean"]) == (43.0, pytest.approx(137 / 3))
    # the paired error is far smaller than the unpaired one (the seeds share the noise)
    unpaired = math.sqrt(Stat(a).sem ** 2 + Stat(b).sem ** 2)
    assert r32["diff_sem"] < unpaired / 2
    assert (r512["n"], r512["diff_mean"], r512["diff_sem"]) == (1, 2.0, None)
    assert r512["unpaired"] == "seed 1 (sogclr failed: boom)"


def test_compare_spec_forms_and_errors():
    assert parse_compare("method=simclr,method=sogclr") == ("method", "simclr", "sogclr")
    assert parse_compare("batch_size=32,512") == ("batch_size", "32", "512")
    for bad in ("method=simclr", "method=simclr,loss=sogclr", "simclr,sogclr", "method=a,method=a"):
        with pytest.raises(ValueError, match="--compare"):
            parse_compare(bad)


# ---------------------------------------------------------------------- a synthetic sweep

KNN = {("simclr", 32): [40.0, 42.0, 47.0], ("sogclr", 32): [43.0, 46.0, 48.0],
       ("simclr", 512): [50.0, 52.0, None], ("sogclr", 512): [51.0, 51.0, 54.0]}


def _write_job(folder, num, preset, method, batch, seed, knn):
    """A job folder as a run leaves it: Hydra's overrides and config, metrics.jsonl with
    kNN at epochs 1 and 2 (known values: knn - 10, knn), done.json when finished."""
    job = folder / f"{num}_experiment-{preset}+batch_size-{batch}+seed-{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"experiment={preset}", f"batch_size={batch}", f"seed={seed}"]))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"num": num}, "runtime": {"choices": {"method": method}}}}))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"method": {"name": method}, "batch_size": batch, "seed": seed}))
    if knn is None:                      # failed in its first epoch
        (job / "error.txt").write_text("error: loss is nan at epoch 0 step 3. Fix: lower the lr\n")
        return
    rows = [{"epoch": 0, "step": 10, "loss": 5.0, "images_per_s": 100.0 + seed},
            {"epoch": 1, "step": 20, "loss": 4.0, "images_per_s": 200.0, "knn_top1": knn - 10},
            {"epoch": 2, "step": 30, "loss": 3.0, "images_per_s": 300.0, "knn_top1": knn}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "done.json").write_text(json.dumps({**rows[-1], "finished": True}))


@pytest.fixture
def synthetic(tmp_path):
    folder = tmp_path / "sweep"
    num = 0
    for (method, batch), values in KNN.items():
        preset = "base" if method == "simclr" else "sog"
        for seed, knn in enumerate(values):
            _write_job(folder, num, preset, method, batch, seed, knn)
            num += 1
    return folder


def test_report_of_a_seeded_sweep_tables_figures_and_comparison(synthetic, capsys):
    main([str(synthetic), "--compare", "method=simclr,method=sogclr"])
    out = capsys.readouterr().out
    assert "12 jobs (11 finished, 1 failed)" in out
    assert "results.png (knn_top1 vs batch_size, one line per experiment; mean ± standard error" in out
    assert "groups.md" in out and "curves.png (knn_top1 per epoch)" in out
    with open(synthetic / "groups.csv") as f:
        groups = {(g["experiment"], g["batch_size"]): g for g in csv.DictReader(f)}
    assert len(groups) == 4
    g = groups[("base", "32")]
    assert (g["n"], g["seeds"], float(g["knn_top1_mean"])) == ("3", "0 1 2", 43.0)
    assert float(g["knn_top1_sem"]) == pytest.approx(2.081666, abs=1e-6)
    assert float(g["images_per_s_mean"]) == 200.0           # each job's median epoch
    g = groups[("base", "512")]
    assert (g["n"], float(g["knn_top1_mean"]), g["knn_top1_sem"]) == ("2", 51.0, "1.0")
    assert g["not_finished"] == "seed 2 failed: error: loss is nan at epoch 0 step 3. Fix: lower the lr"
    md = (synthetic / "groups.md").read_text()
    assert "| base | 32 | 3 | 43 ± 2.1 (sd 3.6) |" in md and "seed 2 failed" in md
    for name in ("results.png", "curves.png"):
        assert (synthetic / name).read_bytes()[:8] == PNG
    compare = (synthetic / "compare.md").read_text().splitlines()
    assert compare[2].startswith(
        f"- batch_size=32: sogclr - simclr: +2.67 ± {math.sqrt(7 / 3) / math.sqrt(3):.2f} knn_top1 "
        "(3.0 standard errors; 3 seeds paired)")
    # batch 512: differences 1, -1 (seed 2 left out: simclr failed)
    assert compare[3].startswith("- batch_size=512: sogclr - simclr: +0.00 ± 1.00 knn_top1 "
                                 "(0.0 standard errors; 2 seeds paired)")
    assert compare[3].endswith("left out: seed 2 (simclr failed: error: loss is nan at epoch 0 "
                               "step 3. Fix: lower the lr)")
    assert "sogclr - simclr: +2.67" in out


def test_the_plotted_points_are_the_group_statistics(synthetic):
    rows = collect([synthetic])
    assert side_value(rows[0], "method") == "simclr"            # from Hydra's choices
    assert side_value(rows[0], "experiment") == "base"          # an override
    assert side_value(rows[0], "batch_size") == "32"
    assert side_value(rows[0], "optimizer") is None
    keys = group_keys(rows, ["experiment", "batch_size", "seed"])
    points = {(p["line"], p["x"]): p
              for p in _group_points(group_rows(rows, keys), "knn_top1", "batch_size", "experiment")}
    assert points[("base", "32")]["y"] == 43.0
    assert points[("base", "32")]["err"] == pytest.approx(2.081666, abs=1e-6)
    assert (points[("base", "512")]["n"], points[("base", "512")]["hollow"]) == (2, True)
    assert (points[("sog", "512")]["n"], points[("sog", "512")]["hollow"]) == (3, False)
    # the curves: kNN after epochs 2 and 3 (knn - 10, knn), the failed seed has none
    curves = seed_curves(rows, keys, "knn_top1")
    base32 = curves[(("experiment", "base"), ("batch_size", "32"))]
    assert list(base32) == [2, 3]
    assert (base32[2].mean, base32[3].mean, base32[3].n) == (33.0, 43.0, 3)
    assert base32[2].sem == pytest.approx(2.081666, abs=1e-6)
    assert curves[(("experiment", "base"), ("batch_size", "512"))][3].n == 2


def test_compare_errors_are_one_line(synthetic):
    for spec, says in (("method=simclr,method=mocov3", "no job has method=mocov3"),
                       ("method=simclr", "expected KEY=A,KEY=B")):
        with pytest.raises(SystemExit) as e:
            main([str(synthetic), "--compare", spec])
        assert str(e.value).startswith("error: --compare") and says in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_real_seeded_multirun_through_the_local_launcher(tmp_path, capsys):
    """Two seeds of one setting, run for real: one group of n=2 whose mean and standard
    error are those of the two jobs' own final values."""
    sweep = tmp_path / "sweep"
    run("simclr.py", "-m", "hydra/launcher=local", "dataset=spirograph", "dataset.num_train=64",
        "dataset.num_test=64", "backbone.width=8", "batch_size=32", "epochs=2", "progress=false",
        "tensorboard=false", "device=cpu", "eval.knn_k=5", "eval.knn_every=1", "seed=0,1",
        f"hydra.sweep.dir={sweep}")
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "2 jobs (2 finished, 0 failed)" in out and "curves.png (knn_r2 per epoch)" in out
    with open(sweep / "groups.csv") as f:
        groups = list(csv.DictReader(f))
    assert [(g["n"], g["seeds"], g["not_finished"]) for g in groups] == [("2", "0 1", "")]
    finals = [json.loads(p.read_text())["knn_r2"] for p in sorted(sweep.glob("*/done.json"))]
    assert len(finals) == 2 and finals[0] != finals[1]          # the seeds really differ
    s = Stat(finals)
    assert float(groups[0]["knn_r2_mean"]) == pytest.approx(s.mean, rel=1e-9)
    assert float(groups[0]["knn_r2_sem"]) == pytest.approx(abs(finals[0] - finals[1]) / 2, rel=1e-6)
    assert (sweep / "curves.png").read_bytes()[:8] == PNG
