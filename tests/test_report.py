"""The sweep report on real run directories, and the local submitit launcher."""
import subprocess
import sys

import pytest

from sslcifar.report import find_jobs, job_row, main

from .conftest import REPO, TINY, run


@pytest.mark.slow
def test_local_launcher_sweep_with_a_failed_job_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    # submitit's local executor: no SLURM needed; temperature 0 makes job 1 fail validation
    proc = run("simclr.py", "-m", "experiment=demo", *TINY, "dataset.num_train=64",
               "dataset.num_test=32", "max_steps=2", "loss.temperature=0.5,0",
               "hydra/launcher=local", f"hydra.sweep.dir={sweep}", check=False, timeout=400)
    assert proc.returncode != 0                     # the launcher reports the failed job
    rows = {r["loss.temperature"]: r for r in map(job_row, find_jobs([sweep]))}
    assert rows["0.5"]["status"] == "finished" or rows["0.5"]["status"] == "running"
    assert rows["0"]["status"].startswith("failed: error: loss.temperature=0.0 is not allowed")
    main([str(sweep), "--x", "loss.temperature", "--lines", "batch_size"])
    assert (sweep / "results.csv").exists() and (sweep / "results.md").exists()


@pytest.mark.slow
def test_report_on_finished_and_partial_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run("simclr.py", "-m", "experiment=demo", *TINY, "dataset.num_train=64", "dataset.num_test=32",
        "epochs=2", "loss.temperature=0.2,0.5", f"hydra.sweep.dir={sweep}")
    partial = tmp_path / "sweep" / "9_partial"
    run("simclr.py", "experiment=demo", *TINY, "dataset.num_train=64", "dataset.num_test=32",
        "epochs=2", "max_steps=4", "loss.temperature=1.0", f"hydra.run.dir={partial}")
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "3 jobs (2 finished)" in out and "results.png (knn_r2 vs loss.temperature)" in out
    rows = {r["job"]: r for r in map(job_row, find_jobs([sweep]))}
    assert rows["9_partial"]["status"] == "running" and rows["9_partial"]["epochs_done"] == 1
    finished = [r for r in rows.values() if r["status"] == "finished"]
    assert all(r["epochs_done"] == 2 and r["knn_r2"] is not None for r in finished)
    assert (sweep / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_report_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sslcifar.report", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ")
    proc = subprocess.run([sys.executable, "-m", "sslcifar.report", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "no job directories" in proc.stderr
