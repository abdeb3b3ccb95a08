"""sslcifar.report on real run directories: a small sweep with finished jobs, a job that
failed on an invalid override, a run stopped part-way (max_steps), and a linear evaluation
written into a job's folder; statuses from the events a run writes (sslcifar.events). No
SLURM needed (tests/test_slurm.py covers requeues)."""
import csv
import json
import subprocess
import sys

import pytest

from sslcifar.report import _status, _wall_time, collect, find_jobs, job_row, main

from .conftest import REPO, run

# tiny and quick: 4 steps of 32 Spirograph images per epoch
SPIRO = ["dataset=spirograph", "dataset.num_train=128", "dataset.num_test=128", "backbone.width=8",
         "progress=false", "tensorboard=false", "eval.knn_k=5", "device=cpu", "epochs=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """<sweep>/0_..., 1_...: finished (temperature 0.2, 0.5); 2_...: failed (temperature 0
    is refused, which ends the multirun with exit status 2); 8_epoch_end: stopped by
    max_steps exactly at the end of its first epoch; 9_partial: stopped by max_steps in
    the middle of its second epoch (2 steps each)."""
    root = tmp_path_factory.mktemp("report") / "sweep"
    proc = run("simclr.py", "-m", *SPIRO, "batch_size=32", "loss.temperature=0.2,0.5,0",
               f"hydra.sweep.dir={root}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: loss.temperature=0.0 is not allowed" in proc.stderr
    run("simclr.py", *SPIRO, "batch_size=64", "loss.temperature=1.0", "max_steps=2",
        f"hydra.run.dir={root / '8_epoch_end'}")
    run("simclr.py", *SPIRO, "batch_size=64", "loss.temperature=1.0", "max_steps=3",
        f"hydra.run.dir={root / '9_partial'}")
    return root


@pytest.mark.slow
def test_rows_of_finished_failed_and_partial_runs(sweep):
    jobs = find_jobs([sweep])
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1", "2", "8", "9"]
    rows = {r["job"].split("_")[0]: r for r in map(job_row, jobs)}
    for num, temperature in (("0", "0.2"), ("1", "0.5")):
        r = rows[num]
        done = json.loads((jobs[int(num)] / "done.json").read_text())
        assert r["status"] == "finished"
        assert (r["loss.temperature"], r["batch_size"], r["dataset"]) == (temperature, "32", "spirograph")
        assert (r["step"], r["epochs_done"], r["restarts"]) == (8, 2, 0)
        assert r["loss"] == done["loss"] and r["knn_r2"] == done["knn_r2"]
        assert r["wall_s"] > 0
    failed = rows["2"]
    assert failed["status"] == "failed: error: loss.temperature=0.0 is not allowed: needs > 0"
    assert failed["loss.temperature"] == "0" and failed["epochs_done"] == 0 and "loss" not in failed
    # stopped by max_steps at an epoch end: no partial row, yet not running
    assert rows["8"]["status"] == "stopped at step 2" and rows["8"]["epochs_done"] == 1
    partial = rows["9"]
    assert partial["status"] == "stopped at step 3"
    assert (partial["step"], partial["epochs_done"], partial["batch_size"]) == (3, 1, "64")
    assert "knn_r2" in partial           # measured at the stop, drawn hollow in the plot


@pytest.mark.slow
def test_report_writes_csv_markdown_and_plot(sweep, capsys):
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "5 jobs (2 finished, 1 failed)" in out
    assert "results.png (knn_r2 vs loss.temperature, one line per batch_size)" in out
    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and table[0]["dataset.num_train"] == "128"      # every override
    assert [t["status"] for t in table][:2] == ["finished", "finished"]
    md = (sweep / "results.md").read_text().splitlines()
    assert md[0] == "5 jobs, 2 finished."
    assert "`dataset=spirograph`" in md[1]                 # shared overrides, listed once
    header = md[3]
    assert header.startswith("| job | batch_size | loss.temperature | max_steps | step | loss |")
    assert "dataset.num_train" not in header and len(md) == 5 + 5
    assert md[5].startswith("| 0 | 32 | 0.2 |  | 8 |")
    assert (sweep / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # another metric and axis; a single line
    (sweep / "results.png").unlink()
    main([str(sweep), "--metric", "loss", "--x", "batch_size", "--lines", "none"])
    assert "results.png (loss vs batch_size)" in capsys.readouterr().out
    assert (sweep / "results.png").exists()


@pytest.mark.slow
def test_linear_eval_inside_a_job_folder_joins_its_row(sweep, tmp_path):
    job = find_jobs([sweep])[0]
    run("linear_eval.py", f"pretrained={job}", "dataset=spirograph", "dataset.num_train=128",
        "dataset.num_test=128", "device=cpu", "progress=false", f"hydra.run.dir={job / 'linear_eval'}")
    r2 = json.loads((job / "linear_eval" / "linear_eval.json").read_text())["r2"]
    jobs = find_jobs([sweep])
    assert len(jobs) == 5                    # the evaluation's own .hydra is not a job
    assert job_row(jobs[0])["linear_r2"] == r2
    rows = collect([sweep, sweep])           # several folders: names carry the folder
    assert rows[0]["job"].startswith(f"{sweep.name}/0_") and len(rows) == 10


def _events(*items):
    """[(time, event, fields), ...] -> events as sslcifar.events writes them."""
    return [{"event": kind, "time": t, **fields} for t, kind, fields in items]


def test_status_and_wall_time_from_events():
    started = (0.0, "started", {"step": 0, "restart": 0})
    epoch = (4.0, "epoch_end", {"epoch": 0, "step": 32})
    stop = (5.0, "stopped", {"step": 37, "reason": "signal", "signal": "SIGUSR2"})
    resume = (35.0, "resumed", {"step": 37, "restart": 1, "checkpoint": "/x/last.pt"})
    last = (45.5, "epoch_end", {"epoch": 3, "step": 128})
    assert _status(_events(started, epoch), [], False, False) == "running"
    assert _status(_events(started, stop), [], False, False) == "requeued at step 37"
    assert _status(_events(started, stop, resume), [], False, False) == "running (resumed at step 37)"
    assert _status(_events(started, stop, resume), [], True, True) == "finished"
    assert _status([], ["ValueError: bad"], False, True) == "failed: ValueError: bad"
    assert _status(_events(started, epoch), [], False, True) == "stopped at step 32"
    assert _status(_events(started, (6.0, "stopped", {"step": 40, "reason": "max_steps"})), [],
                   False, True) == "stopped at step 40"
    failed = (6.0, "failed", {"step": 40, "error": "error: loss is nan at epoch 1 step 40: ..."})
    assert _status(_events(started, failed), [], False, False) == \
        "failed: error: loss is nan at epoch 1 step 40: ..."
    # the wait between the stop and the resume is not counted
    assert _wall_time(_events(started, stop, resume, last)) == pytest.approx(5 + 10.5)
    assert _wall_time([]) is None


def test_a_reworded_log_line_changes_nothing(tmp_path):
    """The report reads events.jsonl, not the log: a job whose log says nothing it knows
    still shows its requeue, restarts and wall time."""
    job = tmp_path / "sweep" / "0_x"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- loss.temperature=0.5\n")
    (job / "simclr.log").write_text("[2026-01-01 10:00:05,000][sslcifar][WARNING] - stopping now\n")
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _events(
        (0.0, "started", {"step": 0, "restart": 0}),
        (5.0, "stopped", {"step": 37, "reason": "signal", "signal": "SIGUSR2"}),
        (30.0, "resumed", {"step": 37, "restart": 1}),
        (32.0, "stopped", {"step": 40, "reason": "signal", "signal": "SIGTERM"}))) + "{cut")
    row = job_row(job)
    assert (row["status"], row["restarts"], row["wall_s"]) == ("requeued at step 40", 1, 7.0)


def test_requeue_and_preemption_are_not_failures():
    """Lines of a job's submitit stderr: a requeue and a preemption come back; a time
    limit, an out-of-memory error and scancel end the job."""
    from sslcifar import report
    lines = ["slurmstepd-vm: error: *** JOB 23 ON vm CANCELLED AT 2026-11-22T18:16:54 DUE TO "
             "JOB REQUEUE ***", "srun: error: vm: task 0: Exited with exit code 255",
             "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-11-22T19:00:00 DUE TO "
             "PREEMPTION ***"]
    assert not [l for l in lines if report._ERROR.match(l)]
    limit = "slurmstepd: error: *** JOB 24 ON vm CANCELLED AT 2026-11-22T20:00:00 DUE TO TIME LIMIT ***"
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    cancel = "slurmstepd-vm: error: *** JOB 42 ON vm CANCELLED AT 2026-11-22T18:40:20 ***"
    assert all(report._ERROR.match(l) for l in (limit, oom, cancel))
    assert _status([], [limit], False, False) == \
        "failed: JOB 24 ON vm CANCELLED AT 2026-11-22T20:00:00 DUE TO TIME LIMIT"
    assert _status([], [cancel], False, False) == "cancelled: JOB 42 ON vm CANCELLED AT 2026-11-22T18:40:20"


def test_report_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sslcifar.report", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ")
    proc = subprocess.run([sys.executable, "-m", "sslcifar.report", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "no job directories" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
