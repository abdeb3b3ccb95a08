"""The launcher configs and sweep presets (composed through Hydra), and a real sweep through
hydra/launcher=local: submitit's local executor, no SLURM needed, and local even on a
machine where SLURM is installed (where submitit's AutoExecutor would pick SLURM)."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sslcifar.config import register_configs
from sslcifar.report import find_jobs, job_row, main

from .conftest import REPO

register_configs()          # train_schema / moco_schema, as simclr.py and moco.py do

ENV_KEYS = ("PARTITION", "ACCOUNT", "QOS", "CONSTRAINT", "GPUS", "CPUS", "MEM_GB", "TIMEOUT_MIN")


def _compose(primary="simclr", overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=primary, overrides=list(overrides), return_hydra_config=True)


def _launcher(cfg) -> dict:
    keys = ["_target_", "partition", "account", "qos", "constraint", "gpus_per_node",
            "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "signal_delay_s",
            "max_num_timeout", "array_parallelism", "setup", "additional_parameters"]
    return {k: OmegaConf.to_container(cfg.hydra.launcher, resolve=True).get(k) for k in keys}


def test_slurm_launcher_defaults_env_and_command_line(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(f"SSLCIFAR_SLURM_{key}", raising=False)
    got = _launcher(_compose(overrides=["hydra/launcher=slurm"]))
    assert got["_target_"].endswith("SlurmLauncher")
    # no partition/account/qos/constraint and no GPU unless asked: the cluster's defaults
    assert [got[k] for k in ("partition", "account", "qos", "constraint", "gpus_per_node")] == [None] * 5
    assert (got["cpus_per_task"], got["mem_gb"], got["timeout_min"]) == (8, 32, 1440)
    assert got["max_num_timeout"] > 0 and got["signal_delay_s"] == 120     # requeues allowed
    assert got["additional_parameters"] == {"requeue": True} and got["setup"] == []

    for key, value in zip(ENV_KEYS, ["gpu", "proj", "high", "a100", "4", "16", "64", "60"]):
        monkeypatch.setenv(f"SSLCIFAR_SLURM_{key}", value)
    got = _launcher(_compose(overrides=["hydra/launcher=slurm"]))
    assert [got[k] for k in ("partition", "account", "qos", "constraint", "gpus_per_node",
                             "cpus_per_task", "mem_gb", "timeout_min")] == \
        ["gpu", "proj", "high", "a100", 4, 16, 64, 60]
    got = _launcher(_compose(overrides=["hydra/launcher=slurm", "hydra.launcher.partition=debug",
                                        "hydra.launcher.gpus_per_node=1", "hydra.launcher.tasks_per_node=1",
                                        "hydra.launcher.setup=[module load cuda]"]))
    assert (got["partition"], got["gpus_per_node"], got["setup"]) == ("debug", 1, ["module load cuda"])


def test_local_launcher_config(monkeypatch):
    monkeypatch.delenv("SSLCIFAR_LOCAL_GPUS", raising=False)
    got = _launcher(_compose(overrides=["hydra/launcher=local"]))
    assert got["_target_"].endswith("LocalLauncher")          # submitit cluster "local"
    assert (got["gpus_per_node"], got["cpus_per_task"], got["tasks_per_node"]) == (0, 1, 1)
    monkeypatch.setenv("SSLCIFAR_LOCAL_GPUS", "1")
    assert _launcher(_compose(overrides=["hydra/launcher=local"]))["gpus_per_node"] == 1


@pytest.mark.parametrize("primary", ["simclr", "moco"])
@pytest.mark.parametrize("preset,params", [
    ("temperature", {"loss.temperature": "0.1,0.2,0.3,0.5,1.0"}),
    ("batch_size", {"batch_size": "32,64,128,256,512"}),
    ("temperature_batch", {"loss.temperature": "0.1,0.2,0.3,0.5,1.0",
                           "batch_size": "32,64,128,256,512"}),
])
def test_sweep_presets(primary, preset, params):
    cfg = _compose(primary, [f"+sweep={preset}"])
    assert dict(cfg.hydra.sweeper.params) == params
    # a sweep's folder resolves in the launcher process too, where HydraConfig is not set:
    # plain ${hydra.job...} interpolations only
    assert "${hydra:" not in OmegaConf.to_container(cfg.hydra.sweep)["dir"]
    excluded = cfg.hydra.job.config.override_dirname.exclude_keys
    assert "+sweep" in excluded and "experiment" in excluded


@pytest.mark.slow
def test_local_launcher_sweep_one_finished_one_failed_and_its_report(tmp_path):
    # the default sweep folder (outputs/multirun/simclr/<date>_<time>) under tmp_path;
    # momentum -1 makes the optimizer raise inside the job
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("SLURM_RESTART_COUNT", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "simclr.py"), "-m", "hydra/launcher=local",
         "dataset=spirograph", "dataset.num_train=128", "dataset.num_test=128", "backbone.width=8",
         "batch_size=32", "epochs=2", "progress=false", "tensorboard=false", "eval.knn_k=5",
         "device=cpu", "optimizer.momentum=0.9,-1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    sweeps = list((tmp_path / "outputs" / "multirun" / "simclr").iterdir())
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    # the launcher ends with the failed job's error and the report to run, no traceback
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a job of the sweep failed: ") and "momentum" in last, last
    assert last.endswith(f"python -m sslcifar.report outputs/multirun/simclr/{sweep.name}")
    jobs = find_jobs([sweep])
    assert [j.name for j in jobs] == [
        "0_backbone.width-8+batch_size-32+dataset.num_test-128+dataset.num_train-128+dataset-spirograph"
        "+device-cpu+epochs-2+eval.knn_k-5+optimizer.momentum-0.9+tensorboard-False",
        "1_backbone.width-8+batch_size-32+dataset.num_test-128+dataset.num_train-128+dataset-spirograph"
        "+device-cpu+epochs-2+eval.knn_k-5+optimizer.momentum--1+tensorboard-False"]
    # submitit ran them as local processes: a process id per job, no sbatch script
    for job in jobs:
        job_id = str(yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
        assert job_id.isdigit() and (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").exists()
    assert not list(sweep.glob(".submitit/**/*_submission.sh"))
    ok, bad = job_row(jobs[0]), job_row(jobs[1])
    assert ok["status"] == "finished" and ok["epochs_done"] == 2
    assert ok["loss"] == json.loads((jobs[0] / "done.json").read_text())["loss"]
    # the exception never reached the job's log or stderr: it comes from submitit's result
    assert bad["status"].startswith("failed: ") and "momentum" in bad["status"], bad["status"]
    main([str(sweep)])
    assert (sweep / "results.csv").exists() and (sweep / "results.png").exists()
    assert "| 1 | -1 |" in (sweep / "results.md").read_text()
