"""Every registered method, automatically: a method is covered the moment its file exists.

The list of methods is the registry's (`sslcifar.methods.METHODS`); the per-method tiny
overrides, where a method needs any, are tests/conftest.py's METHOD_OVERRIDES. Each method:
- its loss falls when it trains on a fixed tiny batch (through the loop's own step);
- on 2 gloo processes it gives the loss, the gradients and the state after the step (EMA
  targets, queues, centres, estimators) of 1 process holding the whole batch;
- stopped mid-epoch and resumed, it ends bit-identical to an uninterrupted run;
- it trains from `simclr.py method=NAME`, and `linear_eval.py` and `python -m sslcifar.knn`
  read the checkpoint it writes.

BatchNorm is in eval mode for the 2-process comparison: per-rank batch statistics differ
from whole-batch ones by design (backbone.sync_bn=true on GPUs).
"""
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslcifar.data.batch import Batch
from sslcifar.methods import build_method, method_class
from sslcifar.methods.support_set import SupportSet
from sslcifar.step import train_step

from .conftest import TINY, method_overrides, method_schedules, registered_methods, run, synthetic_views
from .test_config import compose_cfg

METHODS = registered_methods()
B = 8                   # the 2-process test's global batch: each rank holds 4
STEPS_PER_EPOCH = 10    # the schedules' time base in the in-process tests


def _method(name: str):
    """The method class of NAME or of METHOD@BACKBONE (tests/test_backbones.py)."""
    return method_class(name.partition("@")[0])


def _cfg(name: str, *extra: str):
    size = 32 if _method(name).needs_replay else 16       # Spirograph renders 32 px
    return compose_cfg("simclr", ["backbone.width=4", f"dataset.size={size}",
                                  "dataset.small_size=8", *method_overrides(name), *extra])


def _model(name: str, cfg, dtype=torch.float32):
    torch.manual_seed(0)
    return build_method(cfg, num_train=16, num_classes=3).to(dtype)


def _spirograph_batch(b, sl, dtype, g):
    """Spirograph views with their nuisance parameters, replay and fresh draws (what a
    method that re-makes its views needs: `needs_replay`), sliced to one rank's images."""
    from sslcifar.data import spirograph
    from sslcifar.data.batch import Nuisance
    data = spirograph.sample_data_params(b, g).to(dtype)
    nuisance = [spirograph.sample_nuisance_params(b, g).to(dtype) for _ in range(2)]
    render = lambda d, q: (spirograph.render(d, q) - 0.5) / 0.5  # noqa: E731
    mine = data[sl]
    views = [render(mine, q[sl]) for q in nuisance]

    def draw(v, m, n, gen):
        return spirograph.sample_nuisance_params(m * n, gen).to(dtype).view(m, n, -1)
    return Batch(views, torch.arange(b)[sl], (torch.arange(b) % 3)[sl],
                 [{"nuisance": q[sl]} for q in nuisance],
                 lambda v, q: render(mine, q["nuisance"]), Nuisance("nuisance", draw))


def _batch(name, cfg, b, sl=slice(None), dtype=torch.float32, noise=None):
    """The same global batch for every caller (seeded), sliced to `sl`."""
    g = torch.Generator().manual_seed(0)
    if _method(name).needs_replay:
        return _spirograph_batch(b, sl, dtype, g)
    views = synthetic_views(cfg, b, g, dtype, noise)
    index = torch.randperm(b, generator=g)
    labels = torch.arange(b) % 3
    return Batch([v[sl] for v in views], index[sl], labels[sl], _geometry(cfg, b, sl))


def _geometry(cfg, b, sl):
    """Crop boxes and flips for each view, as the image pipelines hand them over in
    batch.params (VICRegL locates its feature maps with them); from their own generator,
    so the views above are the same with or without them."""
    from sslcifar.data.augment import sample_geometry
    from sslcifar.data.views import view_specs
    g, size = torch.Generator().manual_seed(1), cfg.dataset.size
    params = [sample_geometry(spec, b, size, size, g, "cpu")
              for spec in view_specs(cfg.augment, cfg.dataset) for _ in range(spec.count)]
    return [{k: v[sl] for k, v in p.items()} for p in params]


def _steps(model, method, cfg, batch, steps=1, lr=0.1):
    """`steps` SGD steps through the loop's train_step; returns the first step's loss,
    its gradients (after the method's after_backward) and the state after it."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr)
    now = method_schedules(method, cfg, 10 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    first = None
    for s in range(steps):
        out = train_step(model, method, opt, batch, now.at(s))
        if s == 0:
            first = (out["loss"].detach(),
                     {n: p.grad.detach().clone() for n, p in method.named_parameters()
                      if p.grad is not None},
                     {k: v.detach().clone() for k, v in method.state_dict().items()})
    return first


# ---------------------------------------------------------------------- the loss falls

# what this test alone needs: DINO's targets move as its centre does (towards uniform: the
# loss rises to log K), so the centre is held; Barlow Twins sums 2048^2 correlations (loss
# ~100): plain SGD needs a smaller step than its recipe's LARS; TiCo's running covariance
# starts at zeros and grows towards the batch's, raising the loss, so it is the batch's own
# (beta 0)
FIXED_BATCH = {"dino": (["loss.center_momentum=1.0"], 0.05), "barlow_twins": ([], 0.002),
               "tico": (["loss.beta=0.0"], 0.05)}


@pytest.mark.parametrize("name", METHODS)
def test_loss_falls_on_a_fixed_tiny_batch(name):
    extra, lr = FIXED_BATCH.get(name, ([], 0.05))
    cfg = _cfg(name, "backbone.width=8", *extra)
    method = _model(name, cfg)
    batch = _batch(name, cfg, 16, noise=0.1)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    now = method_schedules(method, cfg, 100, STEPS_PER_EPOCH)
    moco_queue = _method(name).ema_timing == "before_forward" and "queue" in dict(method.named_buffers())
    if moco_queue or any(isinstance(m, SupportSet) for m in method.modules()):
        with torch.no_grad():           # fill a queue with real keys first (random at start)
            for _ in range(8):
                method(Batch(batch.views, batch.index, batch.labels, now=now.at(0)))
    losses = []
    for step in range(12):
        out = train_step(method, method, opt, batch, now.at(step))
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses
    assert out["features"].shape == (16, method.backbone.num_features)
    assert not out["features"].requires_grad
    assert 0 <= out["z_std"].item() <= 1


# ---------------------------------------------------------------------- 2 processes = 1

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, names, steps, out_dir):
    """One rank: each method in turn, its loss, gradients and state after `steps` steps on
    this rank's half of the batch, saved as rank<r>_<name>.pt (or the error, as .err: the
    other methods still run)."""
    import datetime
    import traceback
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a method that hangs in a collective fails its test within a minute, not gloo's 30
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    for name in names:
        try:
            cfg = _cfg(name)
            method = _model(name, cfg, torch.float64).eval()
            ddp = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
            b = B // world
            batch = _batch(name, cfg, B, slice(rank * b, (rank + 1) * b), torch.float64)
            loss, grads, state = _steps(ddp, method, cfg, batch, steps)
            # the state after `steps` steps only where it differs from `state` (a file is
            # 0.1-0.6 GB: the heads are full size in float64)
            final = {k: v.detach() for k, v in method.state_dict().items()} if steps > 1 else None
            torch.save({"loss": loss, "grads": grads, "state": state, "final": final},
                       os.path.join(out_dir, f"rank{rank}_{name}.pt"))
        except Exception:
            with open(os.path.join(out_dir, f"rank{rank}_{name}.err"), "w") as f:
                f.write(traceback.format_exc())
    dist.destroy_process_group()


def _start_two_ranks(names, out_dir, steps=1):
    """Two gloo processes, started once, run every method of `names` in turn, each rank
    writing its result to out_dir (see `_worker`)."""
    mp.spawn(_worker, args=(2, _free_port(), names, steps, str(out_dir)), nprocs=2, join=True)


def _take_ranks(out_dir, name):
    """Each rank's result for `name`, or its error text; the files are deleted once read."""
    out = []
    for r in range(2):
        path, err = out_dir / f"rank{r}_{name}.pt", out_dir / f"rank{r}_{name}.err"
        out.append(torch.load(path, weights_only=True) if path.exists() else err.read_text())
        path.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
    return out


def spawn_two_ranks(names, out_dir, steps=1):
    """Runs `names` on 2 gloo processes and returns {name: [each rank's result, or its
    error text]}: a result holds the first step's loss, gradients and state after the first
    step, and (steps > 1) the state after `steps` steps as "final"."""
    names = [names] if isinstance(names, str) else list(names)
    _start_two_ranks(names, out_dir, steps)
    return {name: _take_ranks(out_dir, name) for name in names}


@pytest.fixture(scope="module")
def two_ranks(request, tmp_path_factory):
    """The folder of the 2-process results of every method that this session runs the test
    below for: one pair of processes for all of them (their start-up, torch's import, is
    most of one method's cost). Each test reads (and deletes) its method's files: all of
    them held at once would be ~5 GB of memory."""
    test = "test_two_ranks_equal_one_process_with_the_whole_batch"
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == test]
    out_dir = tmp_path_factory.mktemp("two_ranks")
    _start_two_ranks(names, out_dir)
    return out_dir


@pytest.mark.dist
@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_equal_one_process_with_the_whole_batch(two_ranks, name):
    """Loss and gradients to 1e-10 in float64, and every tensor of the state after the step
    (weights, EMA targets, queues, centres, u): the global-batch losses give each rank its
    full gradient (Barlow Twins' and VICReg's statistics too: a plain all_reduce of them,
    as solo-learn and lightly do, would give gradients 1/world too small), and each rank
    fills its buffers with the global batch as one process would."""
    ranks = _take_ranks(two_ranks, name)
    for r in ranks:
        assert not isinstance(r, str), r                  # the rank's traceback
    cfg = _cfg(name)
    method = _model(name, cfg, torch.float64).eval()
    loss, grads, state = _steps(method, method, cfg, _batch(name, cfg, B, dtype=torch.float64))
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss, atol=1e-10, rtol=1e-10)
        assert r["grads"].keys() == grads.keys()
        for n in grads:
            torch.testing.assert_close(r["grads"][n], grads[n], atol=1e-10, rtol=1e-8, msg=n)
        assert r["state"].keys() == state.keys()
        for k in state:
            # float64 sums in another order (u: 14-term means of values ~1-30): rounding only
            torch.testing.assert_close(r["state"][k], state[k], atol=1e-10, rtol=1e-8, msg=k)


# ---------------------------------------------------------------------- exact resume

def _load(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")          # wall-clock, the only field allowed to differ
    return rows


def _train_in_process(run_dir, overrides):
    """train(cfg) in this process (the entrypoint runs below): many short runs without a
    Python start-up each."""
    from sslcifar.train import train
    cfg = compose_cfg(overrides=[*TINY, *overrides, f"run_dir={run_dir}"])
    return train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_resumes_mid_epoch_bit_identically(tmp_path, cifar_root, name):
    """Stopped after 3 steps and resumed, every method ends with the weights, buffers (EMA
    targets, queues, u) and metrics of an uninterrupted run; the collapse monitor z_std is
    in its metrics."""
    common = [*method_overrides(name), f"dataset.root={cifar_root}", "dataset.subset=64",
              "epochs=2", "eval.knn_every=0"]
    _train_in_process(tmp_path / "full", common)
    _train_in_process(tmp_path / "split", [*common, "max_steps=3"])
    _train_in_process(tmp_path / "split", [*common, "resume=true"])
    a, b = _load(tmp_path / "full"), _load(tmp_path / "split")
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "split")
    assert 0 < _rows(tmp_path / "full")[-1]["z_std"] <= 1


# ---------------------------------------------------------------------- the entrypoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_root):
    """Every method trained for 2 steps by `simclr.py method=NAME`, then every checkpoint
    read by one `linear_eval.py -m pretrained=...` and one `python -m sslcifar.knn -m
    pretrained=...` (Hydra multiruns: one process each for all the methods).
    {name: (run dir or the failed run's error, linear_eval result, knn line)}."""
    root = tmp_path_factory.mktemp("every_method")

    def train(name):
        # one thread each, two runs at a time: a tiny run is mostly its Python start-up
        return name, run("simclr.py", *TINY, *method_overrides(name), f"dataset.root={cifar_root}",
                         "dataset.subset=64", "max_steps=2", "eval.knn_every=0",
                         f"hydra.run.dir={root / name}", env={"OMP_NUM_THREADS": "1"}, check=False)

    runs, failed = {}, {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, proc in pool.map(train, METHODS):
            if proc.returncode == 0 and "final:" in proc.stdout:
                runs[name] = root / name
            else:
                failed[name] = proc.stderr[-3000:]
    data = [f"dataset.root={cifar_root}", "dataset.subset=64", "device=cpu", "progress=false"]
    paths = ",".join(str(runs[n]) for n in runs)
    lin = run("linear_eval.py", "-m", f"pretrained={paths}", "recipe=fast", *data,
              f"hydra.sweep.dir={root / 'linear'}", check=False)
    knn = run("-m sslcifar.knn", "-m", f"pretrained={paths}", "max_train=64", "k=5",
              *data, f"hydra.sweep.dir={root / 'knn'}", check=False)
    return runs, failed, lin, knn, root


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_trains_from_simclr_py_and_linear_eval_and_knn_read_its_checkpoint(trained, name):
    runs, failed, lin, knn, root = trained
    assert name in runs, failed.get(name)
    state = _load(runs[name])
    assert state["step"] == 2 and state["config"]["method"]["name"] == name
    for proc in (lin, knn):
        assert proc.returncode == 0, proc.stderr[-3000:]
    job = next(j for j in (root / "linear").iterdir()
               if j.is_dir() and (j / "linear_eval.json").exists()
               and json.loads((j / "linear_eval.json").read_text())["checkpoint"].startswith(str(runs[name])))
    result = json.loads((job / "linear_eval.json").read_text())
    assert 0 <= result["top1"] <= 100 and result["checkpoint_format"] == "sslcifar"
    assert any(f"{runs[name]}" in line and line.startswith("knn: top1=")
               for line in knn.stdout.splitlines()), knn.stdout[-3000:]
