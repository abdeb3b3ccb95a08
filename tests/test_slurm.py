"""Sweeps on the real local SLURM cluster (.ci/start-local-slurm.sh): a 2x2 multirun
through hydra/launcher=slurm, and a job requeued mid-run that resumes from its
checkpoint and ends exactly like an uninterrupted twin."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sslcifar.report import find_jobs, job_row

from .conftest import REPO, run


def _slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return False
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "is UP" in r.stdout


pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not _slurm_up(), reason="no local SLURM controller answers "
                                 "(start one with `bash .ci/start-local-slurm.sh`)")]

JOB = ["experiment=demo", "backbone.width=8", "dataset.num_test=32", "progress=false",
       "tensorboard=false", "eval.knn_k=5", "device=cpu"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30"]


def _env():
    # the jobs run this interpreter with this environment: make the repo importable
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_two_by_two_multirun_on_slurm_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(REPO / "simclr.py"), "-m", *JOB, *SLURM,
                           "dataset.num_train=64", "epochs=2", "batch_size=16,32",
                           "loss.temperature=0.1,0.5", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = find_jobs([sweep])
    assert len(jobs) == 4
    rows = [job_row(j) for j in jobs]
    assert all(r["status"] == "finished" for r in rows), rows
    assert sorted((r["batch_size"], r["loss.temperature"]) for r in rows) == \
        [("16", "0.1"), ("16", "0.5"), ("32", "0.1"), ("32", "0.5")]
    assert len(list((sweep / ".submitit").iterdir())) >= 4      # submitit's logs per array task
    out = subprocess.run([sys.executable, "-m", "sslcifar.report", str(sweep)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 jobs (4 finished)" in out.stdout
    assert (sweep / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep / "results.md").read_text().splitlines()
    assert len(md) == 2 + 4 and "knn_r2" in md[0]


def _wait(pred, timeout, what):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_requeued_job_resumes_and_matches_an_uninterrupted_twin(tmp_path):
    # long enough (12 epochs x 16 steps) to be caught mid-run after its first checkpoint
    common = [*JOB, "dataset.num_train=512", "batch_size=32", "epochs=12", "log_every=1"]
    twin = tmp_path / "twin"
    run("simclr.py", *common, f"hydra.run.dir={twin}", env={"OMP_NUM_THREADS": "1"})  # as the job
    sweep = tmp_path / "sweep"
    launcher = subprocess.Popen([sys.executable, str(REPO / "simclr.py"), "-m", *common, *SLURM,
                                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the job's folder is 0_<its overrides>; wait for its first checkpoint (epoch 1)
        _wait(lambda: list(sweep.glob("0_*/checkpoints/last.pt")), 180,
              "the job never saved a checkpoint")
        job_dir = next(sweep.glob("0_*"))
        job_id = next(p for p in (sweep / ".submitit").iterdir() if p.is_dir()).name.split("_")[0]
        subprocess.run(["scontrol", "requeue", job_id], check=True)      # SIGTERM, then requeue
        launcher.wait(timeout=400)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            subprocess.run(["scancel", "--name", "simclr"])
    log = (job_dir / "simclr.log").read_text()
    assert "received at step" in log and "resumed from" in log, log[-2000:]
    a = json.loads((twin / "done.json").read_text())
    b = json.loads((job_dir / "done.json").read_text())
    for key in ("step", "loss", "knn_r2"):
        assert a[key] == b[key], key
