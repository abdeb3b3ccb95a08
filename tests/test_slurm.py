"""Sweeps on a real SLURM cluster (the local one of .ci/start-local-slurm.sh): a 2x2 multirun
through hydra/launcher=slurm and its report; jobs stopped mid-run (SLURM's preemption /
time-limit signal USR2, and `scontrol requeue`, which sends SIGTERM) that requeue, resume in
the same run directory and end exactly like uninterrupted twins; and a finished job that
is requeued and does not train again.

Every sweep uses the default sweep folder (outputs/multirun/simclr/${now:...}) under
tmp_path, so a requeued job that resolved ${now} again would land in a second folder.
The Hydra launcher waits for ever on a job that died without a result (no sacct on the
local cluster): every launch runs under a subprocess timeout.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslcifar.report import find_jobs, job_row, main

from .conftest import REPO


def _slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return False
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "is UP" in r.stdout


pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not _slurm_up(), reason="no SLURM controller answers `scontrol "
                                 "ping` (start the local one: bash .ci/start-local-slurm.sh)")]

PARTITION = os.environ.get("LOCAL_SLURM_PARTITION", "debug")
# tiny Spirograph runs; 32 images a step
JOB = ["dataset=spirograph", "dataset.num_test=256", "backbone.width=8", "progress=false",
       "tensorboard=false", "eval.knn_k=5", "device=cpu"]


def _env(**extra) -> dict:
    # the jobs run this interpreter with this environment (sbatch passes it on)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    env.pop("SLURM_RESTART_COUNT", None)
    return env


def _sweep_dir(cwd: Path) -> Path:
    sweeps = [p for p in (cwd / "outputs" / "multirun" / "simclr").iterdir() if p.is_dir()]
    assert len(sweeps) == 1, f"expected one sweep folder, found {sweeps}"
    return sweeps[0]


def _job_ids(sweep: Path) -> dict:
    """SLURM job id (<array>_<index>) of each job folder, from Hydra's saved job config."""
    import yaml
    return {job: str(yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
            for job in find_jobs([sweep])}


def _wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _cancel_array(sweep_root: Path) -> None:
    """scancel this test's own jobs (by the ids in its submitit folder), never by name."""
    for folder in sweep_root.glob("outputs/multirun/simclr/*/.submitit/*_*"):
        subprocess.run(["scancel", folder.name], capture_output=True)


def test_two_by_two_multirun_on_slurm_and_its_report(tmp_path):
    # partition, CPUs and memory through the launcher's environment variables
    env = _env(SSLCIFAR_SLURM_PARTITION=PARTITION, SSLCIFAR_SLURM_CPUS="1", SSLCIFAR_SLURM_MEM_GB="1")
    try:
        proc = subprocess.run([sys.executable, str(REPO / "simclr.py"), "-m", "hydra/launcher=slurm",
                               *JOB, "dataset.num_train=128", "epochs=2", "batch_size=32,64",
                               "loss.temperature=0.1,0.5"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        _cancel_array(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    ids = _job_ids(sweep)
    assert len(ids) == 4
    array = {i.split("_")[0] for i in ids.values()}
    assert len(array) == 1, ids                              # one job array
    assert sorted(i.split("_")[1] for i in ids.values()) == ["0", "1", "2", "3"]
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    for line in (f"--partition={PARTITION}", "--cpus-per-task=1", "--mem=1GB", "--requeue",
                 "--signal=USR2@120", "--time=1440", "--array=0-3%4"):
        assert f"#SBATCH {line}\n" in script, line
    for job, job_id in ids.items():
        assert (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").exists()

    rows = [job_row(j) for j in ids]
    assert all(r["status"] == "finished" and r["epochs_done"] == 2 for r in rows), rows
    assert sorted((r["batch_size"], r["loss.temperature"]) for r in rows) == \
        [("32", "0.1"), ("32", "0.5"), ("64", "0.1"), ("64", "0.5")]
    for job, r in zip(ids, rows):
        done = json.loads((job / "done.json").read_text())
        assert (r["loss"], r["knn_r2"], r["step"]) == (done["loss"], done["knn_r2"], done["step"])
    out = subprocess.run([sys.executable, "-m", "sslcifar.report", str(sweep)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 jobs (4 finished, 0 failed)" in out.stdout
    assert "knn_r2 vs loss.temperature, one line per batch_size" in out.stdout
    assert (sweep / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep / "results.md").read_text().splitlines()
    assert md[0] == "4 jobs, 4 finished." and len(md) == 5 + 4
    assert md[3].startswith("| job | batch_size | loss.temperature | step | loss | knn_r2 |")


def test_a_job_with_two_tasks_trains_exactly_as_torchrun_with_two_processes(tmp_path):
    """hydra.launcher.tasks_per_node=2 (one task per GPU on a cluster): each SLURM task is one
    process of the torch.distributed group, found through submitit's JobEnvironment (rank,
    master host, a port from the job's own SLURM_JOB_ID, unique also inside a job array)."""
    common = [*JOB, "dataset.num_train=128", "batch_size=32", "epochs=2"]
    slurm = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
             "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30"]
    try:       # two jobs: submitit submits a single job as a plain job, not as an array
        proc = subprocess.run([sys.executable, str(REPO / "simclr.py"), "-m", *slurm, *common,
                               "seed=3,4"], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=300)
    finally:
        _cancel_array(tmp_path)
    sweep = _sweep_dir(tmp_path)
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert proc.returncode == 0, proc.stderr[-2000:] + logs[-3000:]
    ids = _job_ids(sweep)
    assert sorted(i.split("_")[1] for i in ids.values()) == ["0", "1"]     # one array, 2 jobs
    for job, job_id in ids.items():
        assert sorted(p.name for p in sweep.glob(f".submitit/{job_id}/*_log.out")) == \
            [f"{job_id}_{t}_log.out" for t in (0, 1)]                    # two tasks each
        assert "| 2 process(es)" in (job / "simclr.log").read_text()
        assert json.loads((job / "done.json").read_text())["step"] == 8
    job = next(j for j in ids if "+seed-3+" in j.name)

    twin = tmp_path / "torchrun"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(REPO / "simclr.py"), *common, "seed=3",
                    f"hydra.run.dir={twin}"], cwd=tmp_path, env=_env(), check=True,
                   capture_output=True, timeout=300)
    a = json.loads((twin / "done.json").read_text())
    b = json.loads((job / "done.json").read_text())
    for key in ("step", "loss", "knn_r2"):
        assert a[key] == b[key], (key, a[key], b[key])


def test_a_two_task_job_stopped_by_usr2_resumes_and_matches_torchrun(tmp_path):
    """Preemption of a multi-process job: both tasks get USR2, they agree on the step, rank 0
    saves and requeues the job (submitit lets only rank 0 requeue), both tasks come back and
    resume; the job ends exactly as an uninterrupted `torchrun --nproc_per_node=2` run."""
    common = [*JOB, "dataset.num_train=1024", "batch_size=32", "epochs=4", "log_every=4"]
    slurm = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
             "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30"]
    launcher = subprocess.Popen([sys.executable, str(REPO / "simclr.py"), "-m", *slurm, *common,
                                 "seed=5"], cwd=tmp_path, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    twin = tmp_path / "torchrun"
    try:
        _wait(lambda: list(tmp_path.glob("outputs/multirun/simclr/*/*/checkpoints/last.pt")),
              240, "the job never saved its first checkpoint")
        sweep = _sweep_dir(tmp_path)
        ((job, job_id),) = _job_ids(sweep).items()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(REPO / "simclr.py"), *common, "seed=5",
                        f"hydra.run.dir={twin}"], cwd=tmp_path, env=_env(), check=True,
                       capture_output=True, timeout=300)
        out, _ = launcher.communicate(timeout=400)
        assert launcher.returncode == 0, out[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _cancel_array(tmp_path)
    log = (job / "simclr.log").read_text()
    stop = [l for l in log.splitlines() if "signal SIGUSR2 received at step" in l]
    resumed = [l for l in log.splitlines() if "resumed from" in l]
    assert len(stop) == 1 and len(resumed) == 1, log[-3000:]
    step = int(stop[0].split("at step ")[1].split(":")[0])
    assert 32 <= step < 128 and f"at step {step} (epoch {step // 32}) after SLURM requeue #1" \
        in resumed[0]
    a = json.loads((twin / "done.json").read_text())
    b = json.loads((job / "done.json").read_text())
    for key in ("step", "loss", "knn_r2"):
        assert a[key] == b[key], (key, a[key], b[key])


def test_requeued_jobs_resume_and_match_uninterrupted_twins(tmp_path):
    # 4 epochs of 32 steps: the first checkpoint (end of epoch 0) comes after a few
    # seconds, and 96 steps remain to catch the jobs in the middle of their run
    common = [*JOB, "dataset.num_train=1024", "batch_size=32", "epochs=4"]
    slurm = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             "hydra.launcher.timeout_min=30"]
    launcher = subprocess.Popen([sys.executable, str(REPO / "simclr.py"), "-m", *slurm, *common,
                                 "seed=0,1"], cwd=tmp_path, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    twins = None
    try:
        _wait(lambda: len(list(tmp_path.glob("outputs/multirun/simclr/*/*/checkpoints/last.pt"))) == 2,
              240, "the jobs never saved their first checkpoint")
        sweep = _sweep_dir(tmp_path)
        ids = _job_ids(sweep)
        job0, job1 = sorted(ids, key=lambda j: j.name)
        # USR2: what SLURM sends before a time limit (signal_delay_s) or a preemption;
        # submitit then requeues the job. SIGTERM: scontrol requeue.
        subprocess.run(["scancel", "--signal=USR2", ids[job0]], check=True)
        subprocess.run(["scontrol", "requeue", ids[job1]], check=True)
        # the uninterrupted twins, same config and seeds, while the jobs wait to restart
        twins = subprocess.Popen([sys.executable, str(REPO / "simclr.py"), "-m", *common, "seed=0,1",
                                  f"hydra.sweep.dir={tmp_path / 'twins'}"], cwd=tmp_path, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = launcher.communicate(timeout=400)
        assert launcher.returncode == 0, out[-3000:]
        assert twins.wait(timeout=300) == 0, twins.stdout.read()[-3000:]
    finally:
        for p in (launcher, twins):
            if p is not None and p.poll() is None:
                p.kill()
        _cancel_array(tmp_path)

    assert _sweep_dir(tmp_path) == sweep               # the requeued jobs kept their folder
    assert set(find_jobs([sweep])) == {job0, job1}
    for job, sig in ((job0, "SIGUSR2"), (job1, "SIGTERM")):
        log = (job / "simclr.log").read_text()
        stop = [l for l in log.splitlines() if f"signal {sig} received at step" in l]
        resumed = [l for l in log.splitlines() if "resumed from" in l]
        assert len(stop) == 1 and len(resumed) == 1, log[-3000:]
        step = int(stop[0].split("at step ")[1].split(":")[0])
        assert 32 < step < 128                         # mid-run, after the epoch-0 checkpoint
        assert f"{job / 'checkpoints' / 'last.pt'} at step {step} (epoch {step // 32}) " \
               f"after SLURM requeue #1" in resumed[0]
        twin = tmp_path / "twins" / job.name
        a = json.loads((twin / "done.json").read_text())
        b = json.loads((job / "done.json").read_text())
        for key in ("step", "epoch", "loss", "knn_r2"):
            assert a[key] == b[key], (job.name, key, a[key], b[key])
        assert (twin / "metrics.jsonl").read_text().count("\n") == \
            (job / "metrics.jsonl").read_text().count("\n") == 4
        row = job_row(job)
        assert row["status"] == "finished" and row["restarts"] == 1
    assert "requeued job" in (job0 / "simclr.log").read_text().lower()    # submitit's own line

    # a finished job that SLURM starts again does not train again
    before = (job0 / "done.json").read_bytes(), (job0 / "metrics.jsonl").read_bytes()
    subprocess.run(["scontrol", "requeue", ids[job0]], check=True)
    try:
        _wait(lambda: "this run already finished; not running it again" in
              (job0 / "simclr.log").read_text(), 180, "the requeued finished job never ran")
        _wait(lambda: subprocess.run(["squeue", "-h", "-j", ids[job0]], capture_output=True,
                                     text=True).stdout.strip() == "", 60, "job still queued")
    finally:
        _cancel_array(tmp_path)
    assert ((job0 / "done.json").read_bytes(), (job0 / "metrics.jsonl").read_bytes()) == before
    main([str(sweep)])
    assert "| 0 | 0 |" in (sweep / "results.md").read_text()         # job 0, seed 0
