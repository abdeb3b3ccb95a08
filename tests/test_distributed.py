"""torch.distributed with gloo across 2 real processes: the global-batch losses
give the same loss and gradients as one process holding the whole batch.

BatchNorm is put in eval mode for the equality checks: per-rank batch
statistics differ from whole-batch ones by design (use backbone.sync_bn=true
on GPUs, where SyncBatchNorm exists); everything else is the real method.
"""
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslcifar.data.batch import Batch

from sslcifar.methods import build_method

from .conftest import REPO, run
from .test_config import compose_cfg

pytestmark = pytest.mark.dist
B = 8            # global batch; each of the 2 ranks holds 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(num_views=2):
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(num_views)]
    index = torch.tensor([5, 1, 7, 3, 0, 6, 2, 4])
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    return views, index, labels


def _spirograph_batch(sl):
    """Spirograph views of B images with their nuisance parameters, replay and fresh draws
    (what method=invclr needs), in float64, sliced to one rank's images."""
    from sslcifar.data import spirograph
    from sslcifar.data.batch import Nuisance
    g = torch.Generator().manual_seed(0)
    data = spirograph.sample_data_params(B, g).double()
    nuisance = [spirograph.sample_nuisance_params(B, g).double() for _ in range(2)]
    render = lambda d, q: (spirograph.render(d, q) - 0.5) / 0.5  # noqa: E731
    mine = data[sl]
    views = [render(mine, q[sl]) for q in nuisance]

    def draw(v, m, n, gen):
        return spirograph.sample_nuisance_params(m * n, gen).double().view(m, n, -1)
    return Batch(views, torch.arange(B)[sl], torch.zeros(B, dtype=torch.long)[sl],
                 [{"nuisance": q[sl]} for q in nuisance],
                 lambda v, q: render(mine, q["nuisance"]), Nuisance("nuisance", draw))


def _batch(method, sl):
    if method == "invclr":
        return _spirograph_batch(sl)
    views, index, labels = _inputs()
    return Batch([v[sl] for v in views], index[sl], labels[sl])


def _model(method: str):
    primary = "moco" if method == "moco" else "simclr"
    size = 32 if method == "invclr" else 16           # Spirograph renders 32 px
    over = [f"method={method}", "backbone.width=4", f"dataset.size={size}"]
    over += ["method.queue_size=24", "method.bn_splits=2"] if method == "moco" else []
    # the penalty below its clamp, so its gradient (a double backward) is in the comparison
    over += ["method.gp_upper_limit=1000", "method.gp_samples=5"] if method == "invclr" else []
    cfg = compose_cfg(primary, over)
    torch.manual_seed(0)
    return build_method(cfg, num_train=B, num_classes=3).double()


def _step(model, batch, steps=1):
    """One or more SGD steps; returns (first loss, grads of the first step, model)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss0, grads0 = None, None
    for s in range(steps):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        if s == 0:
            loss0 = out["loss"].detach()
            grads0 = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                      if p.grad is not None}
        opt.step()
    return loss0, grads0


def _worker(rank, world, port, method, steps, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model(method)
    model.eval() if method != "moco" else model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    b = B // world
    loss, grads = _step(ddp, _batch(method, slice(rank * b, (rank + 1) * b)), steps)
    grads = {n.removeprefix("module."): g for n, g in grads.items()}
    torch.save({"loss": loss, "grads": grads, "buffers": dict(model.named_buffers())},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _spawn(method, tmp_path, steps=1):
    mp.spawn(_worker, args=(2, _free_port(), method, steps, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("method", ["simclr", "supcon", "sogclr", "byol", "simsiam", "barlow_twins",
                                    "vicreg", "mocov3", "dino", "swav", "invclr"])
def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path, method):
    """Barlow Twins' cross-correlation and VICReg's variance and covariance need the global
    batch, with gradients reaching every rank: a plain all_reduce of c (solo-learn, lightly)
    would give gradients 1/world too small, and this would fail."""
    ranks = _spawn(method, tmp_path)
    model = _model(method).eval()
    loss, grads = _step(model, _batch(method, slice(0, B)))
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss, atol=1e-10, rtol=1e-10)
        assert r["grads"].keys() == grads.keys()
        for n in grads:
            torch.testing.assert_close(r["grads"][n], grads[n], atol=1e-10, rtol=1e-8, msg=n)
    if method == "dino":       # the centre: from the global batch's teacher output
        centre = dict(model.named_buffers())["criterion.center"]
        for r in ranks:
            torch.testing.assert_close(r["buffers"]["criterion.center"], centre, rtol=1e-12, atol=1e-15)
    if method == "sogclr":
        # the ranks compute u from the same gathered batch: identical by construction;
        # against one process the float64 sums run in another order, so they agree to
        # rounding (u ~ 1-30, 14-term means: errors ~ 1e-14 relative)
        u = dict(model.named_buffers())["criterion.u"]
        assert torch.equal(ranks[0]["buffers"]["criterion.u"], ranks[1]["buffers"]["criterion.u"])
        torch.testing.assert_close(ranks[0]["buffers"]["criterion.u"], u, rtol=1e-12, atol=0)


def test_moco_queues_identical_on_both_ranks_after_several_steps(tmp_path):
    r0, r1 = _spawn("moco", tmp_path, steps=4)
    assert torch.equal(r0["buffers"]["queue"], r1["buffers"]["queue"])
    assert int(r0["buffers"]["queue_ptr"]) == int(r1["buffers"]["queue_ptr"]) == (4 * B) % 24


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
