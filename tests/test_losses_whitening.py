"""W-MSE's and VIbCReg's losses and whitenings (sslcifar/losses/whitening.py) against naive
loops written here and against values of the papers' formulas computed by hand; IterNorm's
state; VIbCReg's IterNorm in training mode on 2 processes equals 1 process."""
import math

import pytest
import torch
import torch.multiprocessing as mp

from sslcifar.losses import vibcreg_loss, whiten_cholesky, whiten_iterative, wmse_loss


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ Cholesky whitening

def naive_cholesky_whiten(x, eps=0.0):
    """Mean, unbiased covariance, Cholesky-Banachiewicz and forward substitution, entry by
    entry: out_k = L^-1 (x_k - mean) for every sample k."""
    n, d = len(x), len(x[0])
    mean = [sum(float(x[k][i]) for k in range(n)) / n for i in range(d)]
    xc = [[float(x[k][i]) - mean[i] for i in range(d)] for k in range(n)]
    cov = [[(1 - eps) * sum(xc[k][i] * xc[k][j] for k in range(n)) / (n - 1) + (eps if i == j else 0.0)
            for j in range(d)] for i in range(d)]
    chol = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(i + 1):
            s = cov[i][j] - sum(chol[i][m] * chol[j][m] for m in range(j))
            chol[i][j] = math.sqrt(s) if i == j else s / chol[j][j]
    out = []
    for k in range(n):
        y = [0.0] * d
        for i in range(d):
            y[i] = (xc[k][i] - sum(chol[i][m] * y[m] for m in range(i))) / chol[i][i]
        out.append(y)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n, d, eps", [(5, 3, 0.0), (8, 4, 0.0), (4, 6, 0.1)])
def test_whiten_cholesky_matches_a_naive_loop(n, d, eps):
    x = _randn(n, d, seed=n + d) * 2 + 1
    torch.testing.assert_close(whiten_cholesky(x, eps), naive_cholesky_whiten(x, eps),
                               rtol=1e-10, atol=1e-10)


def test_whiten_cholesky_gives_zero_mean_and_identity_covariance():
    x = _randn(32, 6) @ _randn(6, 6, seed=1) + 3
    w = whiten_cholesky(x)
    torch.testing.assert_close(w.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.T @ w / 31, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)


def test_whiten_cholesky_by_hand():
    # four points on the axes: mean 0, covariance (2/3) I, so L = sqrt(2/3) I
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]], dtype=torch.float64)
    torch.testing.assert_close(whiten_cholesky(x), x * math.sqrt(1.5))


# ------------------------------------------------------------------ W-MSE

def naive_wmse(views, w_size, perms, eps=0.0):
    """The authors' loop (htdt/self-supervised methods/w_mse.py) written out sample by sample."""
    n, v = len(views[0]), len(views)
    total, count = 0.0, 0
    for perm in perms.tolist():
        whitened = [[None] * n for _ in range(v)]
        for start in range(0, n, w_size):
            idx = perm[start:start + w_size]
            for i in range(v):
                w = naive_cholesky_whiten(views[i][idx], eps)
                for r, k in enumerate(idx):
                    whitened[i][k] = w[r]
        for i in range(v - 1):
            for j in range(i + 1, v):
                pair = 0.0
                for k in range(n):
                    a, b = whitened[i][k], whitened[j][k]
                    a, b = a / a.norm(), b / b.norm()
                    pair += float(((a - b) ** 2).sum())
                total += pair / n
                count += 1
    return total / count


@pytest.mark.parametrize("v, n, d, w_size, w_iter", [(2, 8, 3, 4, 1), (3, 12, 2, 6, 2), (4, 10, 4, 5, 3)])
def test_wmse_loss_matches_a_naive_loop(v, n, d, w_size, w_iter):
    views = [_randn(n, d, seed=10 * i + n) for i in range(v)]
    g = torch.Generator().manual_seed(v)
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(w_iter)])
    assert wmse_loss(views, w_size, perms).item() == pytest.approx(
        naive_wmse(views, w_size, perms), rel=1e-10)
    # the views as one [V, N, D] tensor give the same
    assert wmse_loss(torch.stack(views), w_size, perms).item() == pytest.approx(
        wmse_loss(views, w_size, perms).item(), rel=1e-12)


def test_wmse_loss_by_hand():
    # 1-D: whitening is standardisation, the normalised value its sign; each sign that
    # differs between the views costs (1 - (-1))^2 = 4, averaged over the 4 samples
    x1 = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)     # - - + +
    x2 = torch.tensor([[0.0], [5.0], [1.0], [3.0]], dtype=torch.float64)     # - + - +
    assert wmse_loss([x1, x2], 4).item() == pytest.approx(4 * 2 / 4)
    assert wmse_loss([x1, x1 * 3 + 7], 4).item() == pytest.approx(0.0, abs=1e-12)
    assert wmse_loss([x1, -x1], 4).item() == pytest.approx(4.0)
    # 2-D: the axis points whiten to themselves (x sqrt(3/2)); a view rotated by 90 degrees
    # also does, and is orthogonal to the first sample by sample: 2 - 2 cos = 2
    a = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]], dtype=torch.float64)
    b = a @ torch.tensor([[0.0, 1], [-1, 0]], dtype=torch.float64)
    assert wmse_loss([a, b], 4).item() == pytest.approx(2.0)


def test_wmse_loss_sub_batches_are_whitened_separately():
    # the same 8 samples, whitened as one batch or as two halves, give different losses,
    # and the permutation decides which samples share a half
    views = [_randn(8, 2, seed=3), _randn(8, 2, seed=4)]
    whole, halves = wmse_loss(views, 8), wmse_loss(views, 4)
    assert whole.item() != pytest.approx(halves.item(), rel=1e-6)
    swapped = torch.tensor([[4, 5, 6, 7, 0, 1, 2, 3]])     # the same two halves
    assert wmse_loss(views, 4, swapped).item() == pytest.approx(halves.item(), rel=1e-12)
    mixed = torch.tensor([[0, 4, 1, 5, 2, 6, 3, 7]])
    assert wmse_loss(views, 4, mixed).item() != pytest.approx(halves.item(), rel=1e-6)


def test_wmse_detach_second_is_solo_learns_stop_gradient():
    x1, x2 = _randn(8, 3, seed=5).requires_grad_(), _randn(8, 3, seed=6).requires_grad_()
    wmse_loss([x1, x2], 4).backward()
    full1, full2 = x1.grad.clone(), x2.grad.clone()
    assert full2.abs().sum() > 0                        # the authors': both views learn
    x1.grad = x2.grad = None
    loss = wmse_loss([x1, x2], 4, detach_second=True)
    assert loss.item() == pytest.approx(wmse_loss([x1, x2], 4).item(), rel=1e-12)
    loss.backward()
    assert x2.grad is None                              # two views: the second gets nothing
    # the first view's gradient is unchanged: the loss is symmetric in the two views
    torch.testing.assert_close(x1.grad, full1)


def test_wmse_loss_rejects_a_w_size_that_does_not_divide_the_batch():
    with pytest.raises(ValueError, match="divide"):
        wmse_loss([_randn(10, 2), _randn(10, 2)], 4)


# ------------------------------------------------------------------ IterNorm

def naive_iterative_whiten(x, group_size, iterations, eps):
    """IterNorm's algorithm 1 (Huang et al., 2019) group by group, step by step."""
    n, d = x.shape
    out = torch.empty_like(x)
    for start in range(0, d, group_size):
        xg = x[:, start:start + group_size].T                     # [C, N]
        xc = xg - xg.mean(1, keepdim=True)
        sigma = eps * torch.eye(group_size, dtype=x.dtype) + xc @ xc.T / n
        trace = float(sum(sigma[i, i] for i in range(group_size)))
        sigma_n = sigma / trace
        p = torch.eye(group_size, dtype=x.dtype)
        for _ in range(iterations):
            p = 1.5 * p - 0.5 * (p @ p @ p @ sigma_n)
        out[:, start:start + group_size] = (p / math.sqrt(trace) @ xc).T
    return out


@pytest.mark.parametrize("n, d, group_size, iterations", [(8, 6, 3, 5), (5, 8, 8, 3), (16, 12, 4, 7)])
def test_whiten_iterative_matches_a_naive_loop(n, d, group_size, iterations):
    x = _randn(n, d, seed=d) * 2 + 0.5
    out, mean, wm = whiten_iterative(x, group_size, iterations, 1e-5)
    torch.testing.assert_close(out, naive_iterative_whiten(x, group_size, iterations, 1e-5),
                               rtol=1e-10, atol=1e-10)
    assert mean.shape == (d // group_size, group_size, 1)
    assert wm.shape == (d // group_size, group_size, group_size)


def test_whiten_iterative_by_hand_and_in_the_limit():
    # one feature per group: Sigma_N = 1 keeps P = 1, so W = 1/sqrt(var + eps): BatchNorm
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0]], dtype=torch.float64)   # biased vars 1 and 4
    out, _, _ = whiten_iterative(x, 1, 5, 1e-5)
    expected = torch.tensor([[-1 / math.sqrt(1 + 1e-5), -2 / math.sqrt(4 + 1e-5)],
                             [1 / math.sqrt(1 + 1e-5), 2 / math.sqrt(4 + 1e-5)]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    # more iterations converge to Sigma^-1/2: an identity (biased) covariance (10 here; this
    # uncoupled Newton iteration amplifies rounding when run much longer, as the references')
    x = _randn(64, 4) * torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    out, _, _ = whiten_iterative(x, 4, 10, 0.0)
    torch.testing.assert_close(out.T @ out / 64, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_whiten_iterative_gradient_is_exact():
    x = _randn(6, 4, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: whiten_iterative(t, 2, 3, 1e-3)[0], (x,))


def test_iternorm_keeps_its_running_statistics_in_buffers():
    from sslcifar.methods.vibcreg import ITERNORM_MOMENTUM, IterNorm, iternorm_group_size
    assert iternorm_group_size(2048, 64) == 32 and iternorm_group_size(10, 4) == 1
    assert iternorm_group_size(12, 5) == 3
    norm = IterNorm(6, 2, 5).double()
    assert {"running_mean", "running_wm"} <= set(dict(norm.named_buffers()))
    x = _randn(10, 6) + 2
    out = norm(x)
    _, mean, wm = whiten_iterative(x, 3, 5, 1e-5)
    torch.testing.assert_close(norm.running_mean, ITERNORM_MOMENTUM * mean)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    torch.testing.assert_close(norm.running_wm, ITERNORM_MOMENTUM * wm + (1 - ITERNORM_MOMENTUM) * eye)
    # eval mode: the running statistics whiten, the batch's are not used nor tracked
    norm.eval()
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    y = norm(x[:3])
    manual = (norm.running_wm @ (x[:3].T.reshape(2, 3, 3) - norm.running_mean)).reshape(6, 3).T
    torch.testing.assert_close(y, manual)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
    assert out.shape == x.shape


# ------------------------------------------------------------------ VIbCReg

def naive_vibcreg(z1, z2, sim, std, cov):
    n, d = z1.shape
    inv = sum(float(z1[k, i] - z2[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)
    var = cv = 0.0
    for z in (z1, z2):
        cols = [[float(z[k, i]) for k in range(n)] for i in range(d)]
        centred = []
        for c in cols:
            m = sum(c) / n
            s2 = sum((a - m) ** 2 for a in c) / (n - 1)
            var += max(0.0, 1 - math.sqrt(s2 + 1e-4)) / d
            norm = math.sqrt(sum((a - m) ** 2 for a in c))
            centred.append([(a - m) / max(norm, 1e-12) for a in c])
        cv += sum(sum(centred[i][k] * centred[j][k] for k in range(n)) ** 2
                  for i in range(d) for j in range(d) if i != j) / (d * d)
    return sim * inv + std * var + cov * cv


@pytest.mark.parametrize("n, d", [(4, 3), (8, 5), (3, 6)])
def test_vibcreg_loss_matches_a_naive_loop(n, d):
    z1, z2 = _randn(n, d, seed=n) * 0.7, _randn(n, d, seed=d + 50) * 1.3
    for coeffs in [(25.0, 25.0, 200.0), (1.0, 2.0, 3.0)]:
        assert vibcreg_loss(z1, z2, *coeffs).item() == pytest.approx(
            naive_vibcreg(z1, z2, *coeffs), rel=1e-10)


def test_vibcreg_loss_by_hand():
    # uncorrelated columns with std above 1, equal views: every term 0
    z = torch.tensor([[2.0, 0], [-2, 0], [0, 2], [0, -2]], dtype=torch.float64)
    assert vibcreg_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)
    # two identical columns: correlation 1 off the diagonal, (1 + 1) / 4 per view, 2 views
    z = torch.tensor([[1.0, 1], [-1, -1], [2, 2], [-2, -2]], dtype=torch.float64)
    assert vibcreg_loss(z, z).item() == pytest.approx(200.0 * 2 * 0.5)
    # constant views: std sqrt(1e-4) = 0.01, relu(1 - 0.01) per view (not halved)
    z = torch.zeros(4, 3, dtype=torch.float64)
    assert vibcreg_loss(z, z).item() == pytest.approx(25.0 * 2 * 0.99)
    # invariance: the mean squared difference, 1 everywhere
    a = torch.tensor([[2.0, 0], [-2, 0], [0, 2], [0, -2]], dtype=torch.float64)
    assert vibcreg_loss(a, a + 1).item() == pytest.approx(25.0 * 1.0)


# ------------------------------------------------------------------ VIbCReg's IterNorm on 2 processes

def _iternorm_worker(rank, world, port, out_dir):
    import os
    import torch.distributed as dist
    from .test_every_method import B, _batch, _cfg, _model, _steps
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = _cfg("vibcreg", "method.proj_hidden_dim=32", "method.proj_out_dim=16",
               "method.iternorm_groups=2")
    method = _model("vibcreg", cfg, torch.float64).eval()
    method.iternorm.train()           # BatchNorm on running statistics, IterNorm on the batch's
    ddp = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    b = B // world
    loss, grads, state = _steps(ddp, method, cfg, _batch("vibcreg", cfg, B, slice(rank * b, (rank + 1) * b),
                                                         torch.float64))
    torch.save({"loss": loss, "grads": grads, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.dist
def test_vibcreg_iternorm_in_training_mode_on_two_ranks_equals_one_process(tmp_path):
    """The automatic 2-process test runs in eval mode (BatchNorm), where IterNorm whitens with
    its running statistics; here IterNorm whitens with the batch's, over the global batch, and
    its running statistics after the step match one process's too."""
    from .test_every_method import B, _batch, _cfg, _free_port, _model, _steps
    mp.spawn(_iternorm_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    cfg = _cfg("vibcreg", "method.proj_hidden_dim=32", "method.proj_out_dim=16",
               "method.iternorm_groups=2")
    method = _model("vibcreg", cfg, torch.float64).eval()
    method.iternorm.train()
    loss, grads, state = _steps(method, method, cfg, _batch("vibcreg", cfg, B, dtype=torch.float64))
    assert not torch.equal(state["iternorm.running_wm"], torch.eye(8, dtype=torch.float64).expand(2, 8, 8))
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss, atol=1e-10, rtol=1e-10)
        assert r["grads"].keys() == grads.keys()
        for n in grads:
            torch.testing.assert_close(r["grads"][n], grads[n], atol=1e-10, rtol=1e-8, msg=n)
        for k in state:
            torch.testing.assert_close(r["state"][k], state[k], atol=1e-10, rtol=1e-8, msg=k)
