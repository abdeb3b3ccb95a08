"""DeepCluster V2 (sslcifar.losses.cluster, sslcifar.methods.deepclusterv2): the loss against
a naive loop and the paper's formula by hand, spherical k-means against a naive loop, its
determinism, toy clusters, and 2 gloo ranks against one process."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslcifar.losses import deepclusterv2_loss, spherical_kmeans

from .conftest import TINY, run


# ------------------------------------------------------------------ the loss

def naive_deepclusterv2(scores, assignments, T):
    """One (head, crop, image) at a time: -log softmax(s / T)[a], averaged over the pairs
    with an assignment, then over heads (a head without any: 0)."""
    heads = []
    for s, a in zip(scores, assignments):
        terms = []
        for v in range(s.shape[0]):
            for n in range(s.shape[1]):
                if a[n] < 0:
                    continue
                denom = sum(torch.exp(s[v, n, k] / T) for k in range(s.shape[2]))
                terms.append(-torch.log(torch.exp(s[v, n, a[n]] / T) / denom))
        heads.append(sum(terms) / len(terms) if terms else torch.zeros((), dtype=s.dtype))
    return sum(heads) / len(heads)


@pytest.mark.parametrize("v, n, ks, T", [(2, 5, (4, 3), 0.1), (3, 4, (6,), 0.5), (2, 6, (2, 5, 3), 1.0)])
def test_loss_and_gradient_match_a_naive_loop(v, n, ks, T):
    g = torch.Generator().manual_seed(v * n)
    scores = [torch.randn(v, n, k, generator=g, dtype=torch.float64, requires_grad=True) for k in ks]
    a = torch.stack([torch.randint(-1, k, (n,), generator=g) for k in ks])   # -1: no target
    a[:, 0] = 0                                                               # at least one
    ours = deepclusterv2_loss(scores, a, T)
    ref = naive_deepclusterv2(scores, a, T)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    g1 = torch.autograd.grad(ours, scores)
    g2 = torch.autograd.grad(ref, scores)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


def test_the_papers_formula_by_hand():
    """-sum_k q_k log softmax(z.c_k / T)_k with q one-hot. Head 1: scores (0.5, -0.5) towards
    cluster 0 at T 0.1: -log(e^5 / (e^5 + e^-5)) = log(1 + e^-10); head 2: three equal scores:
    log 3. Both crops of the image share its target; the loss averages the heads."""
    s1 = torch.tensor([[[0.5, -0.5]], [[0.5, -0.5]]], dtype=torch.float64)      # [V=2, N=1, K=2]
    s2 = torch.zeros(2, 1, 3, dtype=torch.float64)
    a = torch.tensor([[0], [1]])
    expected = (math.log(1 + math.exp(-10)) + math.log(3)) / 2
    assert deepclusterv2_loss([s1, s2], a, 0.1).item() == pytest.approx(expected, rel=1e-12)
    # an image without a target (-1) is left out of the mean, not counted as 0
    s1b = torch.tensor([[[0.5, -0.5], [9.0, 0.0]]], dtype=torch.float64)          # N=2, V=1
    assert deepclusterv2_loss([s1b], torch.tensor([[0, -1]]), 0.1).item() == \
        pytest.approx(math.log(1 + math.exp(-10)), rel=1e-12)


def test_no_assignment_at_all_is_zero_with_a_zero_gradient():
    s = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    loss = deepclusterv2_loss([s], torch.full((1, 4), -1), 0.1)
    loss.backward()
    assert loss.item() == 0 and torch.equal(s.grad, torch.zeros_like(s))


# ------------------------------------------------------------------ spherical k-means

def naive_kmeans(x, k, iterations, seed):
    """The authors' cluster_memory, one row and one cluster at a time."""
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    c = [x[r].clone() for r in rows]
    for it in range(iterations + 1):
        assign = [max(range(k), key=lambda j: float(x[i] @ c[j])) for i in range(len(x))]
        if it == iterations:
            break
        for j in range(k):
            members = [x[i] for i in range(len(x)) if assign[i] == j]
            if members:
                c[j] = sum(members) / len(members)
            c[j] = c[j] / c[j].norm()
    return torch.stack(c), torch.tensor(assign)


@pytest.mark.parametrize("m, d, k, iterations",
                         [(30, 4, 5, 10), (40, 3, 12, 3), (20, 6, 20, 2), (25, 5, 3, 0)])
def test_kmeans_matches_a_naive_loop(m, d, k, iterations):
    x = F.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(m), dtype=torch.float64), dim=1)
    c, a = spherical_kmeans(x, k, iterations, torch.Generator().manual_seed(7), chunk_rows=8)
    c_ref, a_ref = naive_kmeans(x, k, iterations, 7)
    assert torch.equal(a, a_ref)
    torch.testing.assert_close(c, c_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(k, dtype=torch.float64))


def test_kmeans_with_a_given_generator_is_deterministic():
    x = F.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    first = spherical_kmeans(x, 30, 10, torch.Generator().manual_seed(3), chunk_rows=128)
    again = spherical_kmeans(x, 30, 10, torch.Generator().manual_seed(3), chunk_rows=128)
    other = spherical_kmeans(x, 30, 10, torch.Generator().manual_seed(4), chunk_rows=128)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert len(first[1].unique()) == 30             # solo-learn's test: every cluster used


def test_kmeans_finds_well_separated_clusters():
    """4 tight clusters around orthogonal directions: whenever the initial rows (the
    generator's draw) fall one in each cluster, k-means returns exactly the true partition
    and the normalised means of the clusters; the draw is the test's to check."""
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(4).repeat_interleave(25)
    x = F.normalize(torch.eye(8, dtype=torch.float64)[truth] + 0.05 * torch.randn(100, 8, generator=g,
                                                                                  dtype=torch.float64), dim=1)
    covered = 0
    for seed in range(20):
        init = torch.randperm(100, generator=torch.Generator().manual_seed(seed))[:4]
        if len(truth[init].unique()) < 4:
            continue
        covered += 1
        c, a = spherical_kmeans(x, 4, 10, torch.Generator().manual_seed(seed))
        for j in range(4):                          # cluster j of k-means is one true cluster
            assert len(truth[a == j].unique()) == 1
            torch.testing.assert_close(c[j], F.normalize(x[a == j].mean(0), dim=0))
        assert torch.equal(a[init], torch.arange(4))
    assert covered >= 1


# ------------------------------------------------------------------ 2 ranks = 1 process

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bank_by_gathered_batches(num, dim, world, rank):
    """A bank [num, dim] filled step by step from gathered slices of shuffled batches."""
    from sslcifar.distributed import gather
    g = torch.Generator().manual_seed(1)
    bank = torch.zeros(num, dim, dtype=torch.float64)
    order = torch.randperm(num, generator=g).view(4, -1)                 # 4 steps
    z = F.normalize(torch.randn(num, dim, generator=g, dtype=torch.float64), dim=1)
    for step in order:
        b = len(step) // world
        mine = step[rank * b:(rank + 1) * b]
        idx = gather(mine)
        bank[idx] = gather(z[mine])
    return bank


def _method_two_steps(world, rank):
    """DeepCluster V2 as configured (bank_init=forward) with one step per epoch: step 0 fills
    the bank with the gathered batch (no update), step 1 clusters it and trains."""
    from sslcifar.schedule import Schedules
    from sslcifar.step import train_step
    from .test_every_method import B, _batch, _cfg, _model
    cfg = _cfg("deepclusterv2", "method.bank_init=forward")
    method = _model("deepclusterv2", cfg, torch.float64).eval()
    model = method if world == 1 else torch.nn.parallel.DistributedDataParallel(
        method, broadcast_buffers=False)
    b = B // world
    batch = _batch("deepclusterv2", cfg, B, slice(rank * b, (rank + 1) * b), torch.float64)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    now = Schedules(method.schedules(cfg, 2, 1), 1)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out0 = train_step(model, method, opt, batch, now.at(0))
    grads0 = [p.grad for p in method.parameters()]
    out1 = train_step(model, method, opt, batch, now.at(1))
    return {"before": before, "loss0": out0["loss"].detach(), "grads0_none": all(g is None for g in grads0),
            "loss1": out1["loss"].detach(), "assigned1": out1["assigned"],
            "grads1": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            "state": {k: v.clone() for k, v in method.state_dict().items()}}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    bank = _bank_by_gathered_batches(16, 5, world, rank)
    kmeans = spherical_kmeans(bank, 4, 10, torch.Generator().manual_seed(5))
    torch.save({"bank": bank, "kmeans": kmeans, "method": _method_two_steps(world, rank)},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.dist
def test_two_ranks_cluster_and_train_as_one_process(tmp_path):
    """The bank filled by gathered batches on 2 gloo ranks is one process's bank, its k-means
    the same centroids and assignments bit for bit; and the method with its default
    bank_init=forward, one step per epoch: step 0 moves nothing, step 1 clusters the bank
    written at step 0 and gives one process's loss, gradients and state."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    bank = _bank_by_gathered_batches(16, 5, 1, 0)
    kmeans = spherical_kmeans(bank, 4, 10, torch.Generator().manual_seed(5))
    one = _method_two_steps(1, 0)
    assert one["grads0_none"] and one["loss0"].item() == 0
    assert one["assigned1"].item() == 1.0               # every image of step 0 has a target
    for k in ("bank", "bank_epoch", "assignments", "centroids0", "centroids1"):
        assert not torch.equal(one["state"][k], one["before"][k]), k
    for r in ranks:
        assert torch.equal(r["bank"], bank)
        assert torch.equal(r["kmeans"][0], kmeans[0]) and torch.equal(r["kmeans"][1], kmeans[1])
        m = r["method"]
        assert m["grads0_none"] and m["loss0"].item() == 0
        torch.testing.assert_close(m["loss1"], one["loss1"], atol=1e-10, rtol=1e-10)
        assert m["grads1"].keys() == one["grads1"].keys()
        for n in one["grads1"]:
            torch.testing.assert_close(m["grads1"][n], one["grads1"][n], atol=1e-10, rtol=1e-8, msg=n)
        for k in one["state"]:
            torch.testing.assert_close(m["state"][k], one["state"][k], atol=1e-10, rtol=1e-8, msg=k)


# ------------------------------------------------------------------ schedules and user errors

def test_epoch_zero_fills_the_bank_and_epoch_starts_cluster():
    from .test_config import compose_cfg
    from sslcifar.methods.deepclusterv2 import DeepClusterV2
    cfg = compose_cfg(overrides=["method=deepclusterv2"])
    s = DeepClusterV2.schedules(cfg, 12, 4)
    assert s["kmeans"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert s["bank_filling"].tolist() == [1] * 4 + [0] * 8
    cfg = compose_cfg(overrides=["method=deepclusterv2", "method.bank_init=random"])
    s = DeepClusterV2.schedules(cfg, 12, 4)
    assert s["kmeans"].tolist() == [1, 0, 0, 0] * 3 and not s["bank_filling"].any()


@pytest.mark.parametrize("override, line", [
    ("method.num_prototypes=[4,100]",
     "error: method.num_prototypes=[4, 100] is not allowed: each must be <= the 64 images"),
    ("method.bank_init=forward", "error: epochs=1 is not allowed: method.bank_init=forward spends epoch 0"),
])
def test_config_rules_are_one_line_user_errors(tmp_path, cifar_root, override, line):
    proc = run("simclr.py", *TINY, "method=deepclusterv2", "method.bank_init=random", override,
               f"dataset.root={cifar_root}", "dataset.subset=64", f"hydra.run.dir={tmp_path}",
               check=False)
    assert proc.returncode != 0
    assert line in proc.stderr, proc.stderr[-2000:]
