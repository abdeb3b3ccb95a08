"""torch.distributed across 2 real processes: torchrun runs of the entry point (one run
directory, exact resume, a signal seen by one rank), and MoCo's queues on 2 gloo ranks.
Every registered method's 2 processes = 1 process check is tests/test_every_method.py's.
"""
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO
from .test_every_method import spawn_two_ranks

pytestmark = pytest.mark.dist


def test_moco_queues_identical_on_both_ranks_after_several_steps(tmp_path):
    """Each rank enqueues the gathered keys of the global batch: after 4 steps of 8 keys
    the two queues are the same tensor, written up to row 32 of 64."""
    r0, r1 = spawn_two_ranks("moco", tmp_path, steps=4)["moco"]
    assert torch.equal(r0["final"]["queue"], r1["final"]["queue"])
    assert int(r0["final"]["queue_ptr"]) == int(r1["final"]["queue_ptr"]) == (4 * 8) % 64


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run(tmp_path):
    out = tmp_path / "run"
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "simclr.py"), "experiment=demo", "backbone.width=8", "batch_size=32",
         "dataset.num_train=128", "dataset.num_test=64", "epochs=1", "progress=false",
         "tensorboard=false", "device=cpu", "eval.knn_k=5", f"hydra.run.dir={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final:") == 1                 # only rank 0 reports
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1                                   # only rank 0 writes metrics
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["batch_size"] == 32
    assert "2 process(es)" in (out / "simclr.log").read_text()


@pytest.mark.slow
def test_torchrun_without_a_run_dir_still_writes_one_run(tmp_path):
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "simclr.py"), "experiment=demo", "backbone.width=8", "batch_size=32",
         "dataset.num_train=64", "dataset.num_test=32", "max_steps=1", "progress=false",
         "tensorboard=false", "device=cpu", "eval.knn_k=5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "simclr").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun_")
    assert (runs[0] / "metrics.jsonl").exists()


@pytest.mark.slow
def test_two_process_run_resumes_mid_epoch_bit_identically(tmp_path):
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    common = ["experiment=demo", "backbone.width=8", "batch_size=32", "dataset.num_train=128",
              "dataset.num_test=64", "epochs=2", "progress=false", "tensorboard=false",
              "device=cpu", "eval.knn_k=5"]

    def torchrun(*extra):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node=2", str(REPO / "simclr.py"), *common, *extra],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(f"hydra.run.dir={tmp_path}/full")
    torchrun("max_steps=3", f"hydra.run.dir={tmp_path}/split")        # stop mid-epoch 0
    torchrun("resume=true", f"hydra.run.dir={tmp_path}/split")
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _worker_pid(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (read from /proc, no mocks)."""
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under pid {agent_pid}")


@pytest.mark.slow
def test_a_signal_seen_by_one_rank_only_stops_all_ranks_together(tmp_path):
    """SLURM signals every task, but each sees it at a different step. Rank 1
    alone is signalled here: without agreement rank 0 would keep training while
    rank 1 waits to save, and the job would hang. The ranks must stop at the
    same log step, save once, and resume to the same weights as a run that was
    never stopped."""
    import subprocess
    import time
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    common = ["experiment=demo", "backbone.width=8", "batch_size=32", "dataset.num_train=128",
              "dataset.num_test=64", "epochs=400", "progress=false", "tensorboard=false",
              "device=cpu", "eval.knn_k=5", "eval.knn_every=0", "log_every=5",
              "checkpoint_every=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "simclr.py"), *common]
    split = tmp_path / "split"
    agent = subprocess.Popen([*cmd, f"hydra.run.dir={split}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (split / "checkpoints" / "last.pt").exists():     # past epoch 0
            assert agent.poll() is None and time.time() < deadline, agent.stdout.read()[-3000:]
            time.sleep(0.2)
        os.kill(_worker_pid(agent.pid, 1), signal.SIGUSR2)
        out, _ = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:                 # a hung run: kill its workers too
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, out[-3000:]
    state = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    stopped = state["step"]
    # at a step all ranks check together: a log step (every 5) or an epoch end (every 4)
    assert 0 < stopped < 400 * 4 and (stopped % 5 == 0 or stopped % 4 == 0), stopped
    assert f"received at step {stopped}" in (split / "simclr.log").read_text()
    assert not (split / "done.json").exists()

    def torchrun(*extra):
        proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun("resume=true", f"max_steps={stopped + 3}", f"hydra.run.dir={split}")
    torchrun(f"max_steps={stopped + 3}", f"hydra.run.dir={tmp_path}/full")
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == stopped + 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
