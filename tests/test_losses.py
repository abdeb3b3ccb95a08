"""Every loss against an independent naive implementation written here, and
against the analytic values of the papers' formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from sslcifar.losses import SogCLRLoss, moco_infonce, nt_xent, nt_xent_multi, supcon


# ------------------------------------------------------------------ NT-Xent

def naive_nt_xent(z1, z2, T):
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / T) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / T) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("n, d, T", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (3, 4, 0.07)])
def test_nt_xent_matches_a_naive_loop(n, d, T):
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert nt_xent(z1, z2, T).item() == pytest.approx(naive_nt_xent(z1, z2, T), rel=1e-5)


def naive_nt_xent_multi(z, ids, T):
    """The contrastive-learning-methods repository's multi-crop SimCLR, one anchor at a time:
    -log( sum over the anchor's positives of exp(s/T) / sum over all others of exp(s/T) )."""
    z = [F.normalize(v, dim=0) for v in z.double()]
    total = 0.0
    for a in range(len(z)):
        others = [k for k in range(len(z)) if k != a]
        pos = sum(math.exp(float(z[a] @ z[k]) / T) for k in others if ids[k] == ids[a])
        total += -math.log(pos / sum(math.exp(float(z[a] @ z[k]) / T) for k in others))
    return total / len(z)


@pytest.mark.parametrize("n, v, T", [(3, 3, 0.1), (4, 8, 0.5), (2, 5, 1.0)])
def test_nt_xent_multi_matches_a_naive_loop(n, v, T):
    g = torch.Generator().manual_seed(n + v)
    z = torch.randn(n * v, 6, generator=g, dtype=torch.float64)
    ids = torch.arange(n).repeat(v)[torch.randperm(n * v, generator=g)]     # any crop order
    assert nt_xent_multi(z, ids, T).item() == pytest.approx(naive_nt_xent_multi(z, ids, T), rel=1e-9)


def test_nt_xent_multi_with_labels_as_ids_is_that_repositorys_supervised_simclr():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 2]).repeat(2)          # 6 images x 2 crops
    assert nt_xent_multi(z, labels, 0.1).item() == pytest.approx(naive_nt_xent_multi(z, labels, 0.1), rel=1e-9)
    assert nt_xent_multi(z, labels, 0.1).item() != pytest.approx(
        nt_xent_multi(z, torch.arange(6).repeat(2), 0.1).item(), rel=1e-3)


def test_nt_xent_multi_with_two_views_is_nt_xent():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    ids = torch.arange(7).repeat(2)
    torch.testing.assert_close(nt_xent_multi(torch.cat([z1, z2]), ids, 0.3), nt_xent(z1, z2, 0.3),
                               rtol=1e-12, atol=1e-12)
    # all embeddings equal, V views: each anchor has V-1 positives among N*V-1 others
    n, v = 4, 3
    assert nt_xent_multi(torch.ones(n * v, 4), torch.arange(n).repeat(v), 0.5).item() == \
        pytest.approx(math.log((n * v - 1) / (v - 1)), abs=1e-5)


@pytest.mark.parametrize("n", [1, 4, 32])
def test_nt_xent_analytic_value_when_all_embeddings_are_equal(n):
    z = torch.ones(n, 8)
    assert nt_xent(z, z, 0.5).item() == pytest.approx(math.log(2 * n - 1), abs=1e-5)


def test_nt_xent_is_scale_invariant_symmetric_and_has_finite_gradients():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 8, generator=g, requires_grad=True)
    z2 = torch.randn(6, 8, generator=g)
    loss = nt_xent(z1, z2, 0.2)
    assert loss.item() == pytest.approx(nt_xent(3 * z1, 0.5 * z2, 0.2).item(), rel=1e-5)
    assert loss.item() == pytest.approx(nt_xent(z2, z1, 0.2).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(z1.grad).all()


def test_nt_xent_under_bf16_autocast_stays_close():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.5)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=2e-2)


@pytest.mark.parametrize("fn", [lambda T: nt_xent(torch.ones(2, 2), torch.ones(2, 2), T),
                                lambda T: supcon(torch.ones(2, 2, 2), None, T),
                                lambda T: moco_infonce(torch.ones(2, 2), torch.ones(2, 2), torch.ones(3, 2), T),
                                lambda T: SogCLRLoss(4, 0.9, T)])
@pytest.mark.parametrize("T", [0.0, -0.5])
def test_bad_temperature_is_a_value_error(fn, T):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fn(T)


# ------------------------------------------------------------------ SupCon

def naive_supcon(features, labels, T, base_T, skip=False):
    n, v, _ = features.shape
    feats = [features[i, a].double() for a in range(v) for i in range(n)]
    labs = [int(labels[i]) for _ in range(v) for i in range(n)]
    losses = []
    for a in range(n * v):
        others = [k for k in range(n * v) if k != a]
        pos = [p for p in others if labs[p] == labs[a]]
        if not pos:                 # SupContrast: 0, counted in the mean (or left out)
            if not skip:
                losses.append(0.0)
            continue
        log_denom = math.log(sum(math.exp(float(feats[a] @ feats[k]) / T) for k in others))
        mean = sum(float(feats[a] @ feats[p]) / T - log_denom for p in pos) / len(pos)
        losses.append(-(T / base_T) * mean)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("n, v, classes, T, base", [(6, 2, 3, 0.1, 0.07), (5, 3, 2, 0.5, 0.5),
                                                    (4, 1, 2, 0.07, 0.07), (8, 2, 8, 0.2, 0.07),
                                                    (4, 8, 2, 0.1, 0.07)])     # multi-crop: 8 crops
def test_supcon_matches_a_naive_loop(n, v, classes, T, base):
    g = torch.Generator().manual_seed(n + v)
    f = F.normalize(torch.randn(n, v, 6, generator=g, dtype=torch.float64), dim=2)
    labels = torch.arange(n) % classes
    assert supcon(f, labels, T, base).item() == pytest.approx(naive_supcon(f, labels, T, base), rel=1e-5)


def test_supcon_without_labels_is_simclr():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    f = F.normalize(torch.stack([z1, z2], 1), dim=2)
    assert supcon(f, None, 0.5, 0.5).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-5)
    assert supcon(f, torch.arange(7), 0.5, 0.5).item() == pytest.approx(supcon(f, None, 0.5, 0.5).item())
    # the T / base_T factor scales the loss linearly
    assert supcon(f, None, 0.5, 0.07).item() == pytest.approx(0.5 / 0.07 * nt_xent(z1, z2, 0.5).item(), rel=1e-5)


def test_supcon_anchors_without_positives_count_zero_as_supcontrast_or_are_skipped():
    """One view, a class seen once: SupContrast's current SupConLoss clamps the divisor of
    the positives to 1, so that anchor adds 0 and counts in the mean over the 3 anchors."""
    g = torch.Generator().manual_seed(4)
    f = F.normalize(torch.randn(3, 1, 4, generator=g, dtype=torch.float64), dim=2)
    labels = torch.tensor([0, 0, 1])          # sample 2 has no positive with V=1
    counted, skipped = naive_supcon(f, labels, 0.1, 0.07), naive_supcon(f, labels, 0.1, 0.07, skip=True)
    assert counted == pytest.approx(skipped * 2 / 3, rel=1e-12)
    assert supcon(f, labels, 0.1, 0.07).item() == pytest.approx(counted, rel=1e-9)
    assert supcon(f, labels, 0.1, 0.07, skip_anchors_without_positive=True).item() == \
        pytest.approx(skipped, rel=1e-9)
    for skip in (False, True):
        none = supcon(f, torch.tensor([0, 1, 2]), 0.1, 0.07, skip_anchors_without_positive=skip)
        assert none.item() == 0 and torch.isfinite(none)


def test_supcon_falls_under_sgd():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(8, 2, 16, generator=g, requires_grad=True)
    labels = torch.arange(8) % 2
    opt = torch.optim.SGD([emb], lr=0.5)
    losses = []
    for _ in range(20):
        loss = supcon(F.normalize(emb, dim=2), labels, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ------------------------------------------------------------------ MoCo

def test_moco_infonce_matches_a_naive_loop_and_keeps_keys_constant():
    g = torch.Generator().manual_seed(6)
    q = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    k = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    T = 0.2
    expected = 0.0
    for i in range(4):
        pos = math.exp(float(q[i].detach() @ k[i].detach()) / T)
        neg = sum(math.exp(float(q[i].detach() @ queue[j].detach()) / T) for j in range(10))
        expected += -math.log(pos / (pos + neg)) / 4
    loss = moco_infonce(q, k, queue, T)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_moco_infonce_analytic_value():
    x = F.normalize(torch.ones(3, 4), dim=1)
    assert moco_infonce(x, x, x.repeat(5, 1)[:12], 0.2).item() == pytest.approx(math.log(13), abs=1e-5)


# ------------------------------------------------------------------ SogCLR

class NaiveSogCLR:
    """The original's formulas, one anchor at a time, in float64; both branches store the
    directions' mean. branch="imagenet": gamma 1 on a batch never seen; "cifar" (SogCLR's
    CIFAR branch, sogclr/builder.py at its tip 35adf2e): gamma always."""

    def __init__(self, n, gamma, T, branch="imagenet"):
        self.u = [0.0] * n
        self.gamma, self.T, self.branch = gamma, T, branch

    def step(self, z1, z2, index):
        """Returns the surrogate loss (autograd-capable) and the reported value."""
        h1, h2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        b = len(index)
        first = sum(self.u[int(i)] for i in index) == 0
        gamma = 1.0 if first and self.branch == "imagenet" else self.gamma
        new_u, surrogate, reported = [], 0.0, 0.0
        for i in range(b):
            terms = []
            for anchor, other in ((h1, h2), (h2, h1)):
                negs = [anchor[i] @ other[j] for j in range(b) if j != i] + \
                       [anchor[i] @ anchor[j] for j in range(b) if j != i]
                g = sum(torch.exp(s.detach() / self.T) for s in negs) / (2 * (b - 1))
                u = (1 - gamma) * self.u[int(index[i])] + gamma * g
                w = [torch.exp(s.detach() / self.T) / u for s in negs]
                pos = anchor[i] @ other[i]
                surrogate = surrogate + (-pos + sum(wj * s for wj, s in zip(w, negs)) / (2 * (b - 1)))
                reported += float((-pos / self.T + torch.log(u)).detach()) / (2 * b)
                terms.append(float(u))
            new_u.append(sum(terms) / 2)
        for i, u in zip(index, new_u):
            self.u[int(i)] = u
        return surrogate / b, reported


@pytest.mark.parametrize("branch", ["cifar", "imagenet"])
def test_sogclr_u_gradient_and_reported_value_match_the_naive_estimator(branch):
    """Four steps, the third mixing seen and unseen images: each branch's rules for u."""
    n, b, gamma, T = 10, 4, 0.9, 0.3
    ours = SogCLRLoss(n, gamma, T, branch).double()
    ref = NaiveSogCLR(n, gamma, T, branch)
    g = torch.Generator().manual_seed(7)
    batches = [torch.tensor([0, 3, 5, 7]), torch.tensor([1, 2, 4, 6]), torch.tensor([0, 3, 8, 9]),
               torch.tensor([5, 7, 0, 3])]      # 3rd batch mixes seen and unseen images
    for index in batches:
        z1 = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
        z2 = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
        loss = ours(z1, z2, index)
        g1, g2 = torch.autograd.grad(loss, (z1, z2))
        surrogate, reported = ref.step(z1, z2, index)
        r1, r2 = torch.autograd.grad(surrogate, (z1, z2))
        torch.testing.assert_close(g1, r1, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(g2, r2, atol=1e-10, rtol=1e-9)
        assert loss.item() == pytest.approx(reported, rel=1e-9)
        torch.testing.assert_close(ours.u.squeeze(1), torch.tensor(ref.u, dtype=torch.float64),
                                   atol=1e-12, rtol=1e-10)


def _directions_mean(h1, h2, T):
    """g1_i, g2_i: the mean of exp(cos/T) over the 2(B-1) negatives of anchor i in each
    direction, by hand."""
    b = h1.shape[0]
    out = []
    for a, o in ((h1, h2), (h2, h1)):
        out.append([sum(math.exp(float(a[i] @ v) / T) for j, v in enumerate(torch.cat([o, a]))
                        if j not in (i, b + i)) / (2 * (b - 1)) for i in range(b)])
    return out


def test_sogclr_cifar_branch_stores_the_directions_average_over_three_steps():
    """The CIFAR branch's rule at its tip (35adf2e, `git clone -b cifar`): u1 = (1 - gamma) u
    + gamma g1, u2 likewise, u <- (u1 + u2) / 2 -- on the first visit too (u starts at 0).
    Three steps over the same images, by hand. The rule of the branch's earlier commits,
    u <- u1 + u2, gives a u about twice as large from the second visit on and fails here;
    the ImageNet branch differs on the first visit only (gamma 1 there)."""
    b, gamma, T = 3, 0.9, 0.5
    g = torch.Generator().manual_seed(3)
    index = torch.tensor([0, 1, 4])
    loss = SogCLRLoss(5, gamma, T, "cifar").double()
    u = [0.0] * b
    for _ in range(3):
        z1, z2 = (torch.randn(b, 4, generator=g, dtype=torch.float64) for _ in range(2))
        loss(z1, z2, index)
        g1, g2 = _directions_mean(F.normalize(z1, dim=1), F.normalize(z2, dim=1), T)
        u = [((1 - gamma) * u[i] + gamma * g1[i] + (1 - gamma) * u[i] + gamma * g2[i]) / 2
             for i in range(b)]
        for i, idx in enumerate(index.tolist()):
            assert loss.u[idx].item() == pytest.approx(u[i], rel=1e-12)
    assert loss.u[2].item() == loss.u[3].item() == 0.0        # never seen
    z1, z2 = (torch.randn(b, 4, generator=g, dtype=torch.float64) for _ in range(2))
    imagenet = SogCLRLoss(5, gamma, T, "imagenet").double()
    imagenet(z1, z2, index)
    g1, g2 = _directions_mean(F.normalize(z1, dim=1), F.normalize(z2, dim=1), T)
    assert imagenet.u[0].item() == pytest.approx((g1[0] + g2[0]) / 2, rel=1e-12)


def test_sogclr_gradient_is_T_times_the_global_contrastive_gradient():
    """With gamma = 1, u is this batch's mean of exp(s/T) over the negatives, and
    the SogCLR gradient is T x the gradient of
        mean over 2B anchors of ( -pos/T + log mean_neg exp(s/T) ), times 2
    (the original sums the two directions and averages over B, not 2B)."""
    b, T = 5, 0.3
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = SogCLRLoss(b, gamma=1.0, temperature=T).double()(z1, z2, torch.arange(b))
    g_ours = torch.autograd.grad(loss, (z1, z2))

    h1, h2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    total = 0.0
    for a, o in ((h1, h2), (h2, h1)):
        for i in range(b):
            negs = torch.cat([a[i] @ o.T, a[i] @ a.T])
            negs = torch.cat([negs[:i], negs[i + 1:b], negs[b:b + i], negs[b + i + 1:]])
            total = total - (a[i] @ o[i]) / T + torch.log(torch.exp(negs / T).mean())
    g_ref = torch.autograd.grad(T * total / b, (z1, z2))
    for x, y in zip(g_ours, g_ref):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-9)
    assert loss.item() == pytest.approx(total.item() / (2 * b), rel=1e-9)


def test_sogclr_u_is_saved_and_restored():
    a = SogCLRLoss(6)
    a(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 2, 4]))
    assert (a.u[[0, 2, 4]] > 0).all() and (a.u[[1, 3, 5]] == 0).all()
    b = SogCLRLoss(6)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.u, b.u)


# ------------------------------------------------------------------ the methods without negatives

def naive_barlow(z1, z2, lambd, scale):
    """Barlow Twins written entry by entry: BatchNorm1d(affine=False) in training mode, then
    the cross-correlation matrix and its two sums."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False, dtype=torch.float64).train()
    a, b = bn(z1.double()), bn(z2.double())
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = float((a[:, i] * b[:, j]).sum()) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    return scale * total


@pytest.mark.parametrize("n, d, lambd, scale", [(8, 4, 0.0051, 1.0), (16, 6, 0.1, 0.1), (5, 3, 1.0, 2.0)])
def test_barlow_twins_matches_a_naive_loop(n, d, lambd, scale):
    from sslcifar.losses import barlow_twins
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert barlow_twins(z1, z2, lambd, scale=scale).item() == pytest.approx(naive_barlow(z1, z2, lambd, scale), rel=1e-9)


def test_barlow_twins_edge_cases():
    from sslcifar.losses import barlow_twins
    # identical views of decorrelated, standardised features: c = I (up to the BN eps), loss ~ 0
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    # (standardised by sqrt(var + eps): c_ii = 1 / (1 + eps))
    assert barlow_twins(z, z, 0.0051, scale=1.0).item() == pytest.approx(2 * (1 - 1 / (1 + 1e-5)) ** 2, rel=1e-6)
    # a feature with zero variance standardises to 0: its diagonal term is (1 - 0)^2 = 1
    z0 = z.clone()
    z0[:, 1] = 3.0
    assert barlow_twins(z0, z0, 0.0, scale=1.0).item() == pytest.approx(1 + (1 - 1 / (1 + 1e-5)) ** 2, rel=1e-12)


def naive_vicreg(x, y, s, v, c):
    """The VICReg authors' main_vicreg.py, term by term in float64."""
    x, y = x.double(), y.double()
    n, d = x.shape
    inv = float(((x - y) ** 2).mean())
    var = 0.0
    for z in (x, y):
        for k in range(d):
            col = z[:, k]
            std = math.sqrt(float(((col - col.mean()) ** 2).sum()) / (n - 1) + 1e-4)
            var += max(0.0, 1 - std) / d / 2
    cov = 0.0
    for z in (x, y):
        zc = z - z.mean(0)
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov += (float((zc[:, i] * zc[:, j]).sum()) / (n - 1)) ** 2 / d
    return s * inv + v * var + c * cov


@pytest.mark.parametrize("n, d", [(8, 4), (16, 7), (3, 2)])
def test_vicreg_matches_the_authors_formula_term_by_term(n, d):
    from sslcifar.losses import vicreg
    g = torch.Generator().manual_seed(d)
    x = 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    assert vicreg(x, y).item() == pytest.approx(naive_vicreg(x, y, 25.0, 25.0, 1.0), rel=1e-9)
    assert vicreg(x, y, 1.0, 2.0, 3.0).item() == pytest.approx(naive_vicreg(x, y, 1.0, 2.0, 3.0), rel=1e-9)


def test_vicreg_edge_cases():
    from sslcifar.losses import vicreg
    # identical views: no invariance term; a constant feature has std sqrt(1e-4) = 0.01
    x = torch.tensor([[2.0, 5.0], [-2.0, 5.0], [2.0, 5.0], [-2.0, 5.0]], dtype=torch.float64)
    # feature 0 has unbiased std sqrt(16/3) > 1 (no variance penalty), feature 1 is constant
    expected_var = 2 * (1 - 0.01) / 2 / 2          # both views: mean over 2 features, halved
    assert vicreg(x, x, 25.0, 1.0, 0.0).item() == pytest.approx(expected_var, abs=1e-12)
    assert vicreg(x, x, 1.0, 0.0, 1.0).item() == pytest.approx(0.0, abs=1e-12)   # no covariance


def test_byol_and_simsiam_against_their_formulas_and_edge_cases():
    from sslcifar.losses import byol, simsiam
    g = torch.Generator().manual_seed(5)
    p, z = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    naive = sum(2 - 2 * float(p[i] @ z[i]) / (p[i].norm() * z[i].norm()).item() for i in range(6)) / 6
    assert byol(p, z).item() == pytest.approx(naive, rel=1e-12)
    # BYOL's form is the squared distance of the normalised vectors
    sq = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()
    assert byol(p, z).item() == pytest.approx(sq.item(), rel=1e-12)
    assert byol(3 * z, z).item() == pytest.approx(0.0, abs=1e-12)            # p parallel to z
    assert byol(-z, z).item() == pytest.approx(4.0, abs=1e-12)
    p2, z2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    cos = lambda a, b: float((F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean())  # noqa: E731
    assert simsiam(p, p2, z, z2).item() == pytest.approx(-0.5 * (cos(p, z2) + cos(p2, z)), rel=1e-12)
    assert simsiam(z2, z, z, z2).item() == pytest.approx(-1.0, abs=1e-12)


def test_the_stop_gradient_keeps_the_targets_out_of_the_graph():
    from sslcifar.losses import byol, simsiam
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    (byol(p, z) + simsiam(p, p, z, z)).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def naive_mocov3(q, k, T):
    q, k = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / T for j in range(len(k))]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return 2 * T * total / len(q)


@pytest.mark.parametrize("n, T", [(4, 0.2), (9, 1.0), (3, 0.05)])
def test_mocov3_infonce_matches_a_naive_loop_times_2t(n, T):
    from sslcifar.losses import mocov3_infonce
    g = torch.Generator().manual_seed(n)
    q, k = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64)
    assert mocov3_infonce(q, k, T).item() == pytest.approx(naive_mocov3(q, k, T), rel=1e-9)
    same = torch.ones(n, 5)
    assert mocov3_infonce(same, same, T).item() == pytest.approx(2 * T * math.log(n), rel=1e-5)



# ------------------------------------------------------------------ NNCLR and its support set

def naive_nnclr(nn, p, T):
    """Eq. 2 of Dwibedi et al. (2021), one anchor at a time: -log of the softmax over the
    other view's predictions of the positive's similarity."""
    nn, p = F.normalize(nn.double(), dim=1), F.normalize(p.double(), dim=1)
    total = 0.0
    for i in range(len(nn)):
        logits = [float(nn[i] @ p[j]) / T for j in range(len(p))]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / len(nn)


@pytest.mark.parametrize("n, T", [(4, 0.1), (7, 0.2), (3, 1.0)])
def test_nnclr_loss_matches_a_naive_loop(n, T):
    from sslcifar.losses import nnclr_loss
    g = torch.Generator().manual_seed(n)
    nn = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = nnclr_loss(nn, p, T)
    assert loss.item() == pytest.approx(naive_nnclr(nn.detach(), p.detach(), T), rel=1e-9)
    same = torch.ones(n, 6)
    assert nnclr_loss(same, same, T).item() == pytest.approx(math.log(n), rel=1e-6)


def test_nnclr_loss_by_hand():
    """Two images, nn = (e1, e2), p = (e1, e1), T = 0.5: anchor 1 sees logits (2, 2), anchor 2
    sees (0, 0): both -log 1/2, the loss is log 2."""
    from sslcifar.losses import nnclr_loss
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert nnclr_loss(torch.stack([e1, e2]), torch.stack([e1, e1]), 0.5).item() == pytest.approx(math.log(2))
    # p = (e1, e2) instead: anchor 1 logits (2, 0), anchor 2 (0, 2): log(1 + e^-2)
    assert nnclr_loss(torch.stack([e1, e2]), torch.stack([e1, e2]), 0.5).item() == pytest.approx(
        math.log(1 + math.exp(-2)))


def test_support_set_finds_the_cosine_nearest_row_and_is_a_fifo_that_wraps():
    from sslcifar.methods.support_set import SupportSet
    torch.manual_seed(0)
    s = SupportSet(5, 3).double()
    z = torch.randn(4, 3, dtype=torch.float64) * torch.tensor([[1.0], [10.0], [0.1], [3.0]], dtype=torch.float64)
    idx, nn = s.nearest(z)
    for i in range(4):                  # a naive loop over the rows: the largest cosine
        cos = [float(F.cosine_similarity(z[i], s.queue[k], dim=0)) for k in range(5)]
        assert idx[i].item() == max(range(5), key=cos.__getitem__)
        assert torch.equal(nn[i], s.queue[idx[i]])
    # 3 then 4 rows into 5 slots: the second push fills rows 3, 4, 0, 1, the pointer ends at 2
    a, b = torch.randn(3, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    s.push(a, torch.tensor([0, 1, 2]))
    s.push(b, torch.tensor([3, 4, 5, 6]))
    expect = F.normalize(torch.stack([b[2], b[3], a[2], b[0], b[1]]), dim=1)
    torch.testing.assert_close(s.queue, expect, rtol=0, atol=1e-15)
    assert s.labels.tolist() == [5, 6, 2, 3, 4] and s.ptr.item() == 2
    # a projection already in the support set is its own nearest neighbour (any scale)
    idx, nn = s.nearest(7 * b[1:2])
    assert idx.item() == 4 and s.neighbour_accuracy(idx, torch.tensor([4])).item() == 100


def _nn_batch(b=6, size=16):
    from sslcifar.data.batch import Batch
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, size, size, generator=g)
    return Batch([x + 0.1 * torch.randn(x.shape, generator=g), x], torch.arange(b), torch.arange(b) % 3)


@pytest.mark.parametrize("name", ["nnclr", "nnbyol", "nnsiam"])
def test_nn_methods_use_the_neighbours_of_the_queue_before_the_step_then_enqueue_view_1(name):
    """The method's loss is its formula with targets looked up in the queue as it was before
    the step (NNCLR: (l(nn1, p2) + l(nn2, p1)) / 2; NNBYOL: byol(p1, nn(zt2)) + byol(p2, nn(zt1));
    NNSiam: simsiam(p1, p2, nn(z1), nn(z2))), and the first view's projections (NNBYOL: the
    target's) enter the queue after it."""
    from sslcifar.losses import byol, nnclr_loss, simsiam
    from sslcifar.methods import build_method
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", [f"method={name}", "method.queue_size=10", "backbone.width=4",
                                 "dataset.size=16"])
    torch.manual_seed(0)
    m = build_method(cfg, num_train=6, num_classes=3).train()
    batch = _nn_batch()
    before = m.support.queue.clone()
    out = m(batch)
    b = 6
    with torch.no_grad():
        z = m.projector(m.encode(batch.views))        # one pass: the batch statistics of the step
        p = m.predictor(z)
        target = m.projector_t(m.encode(batch.views, m.backbone_t)) if name == "nnbyol" else z

    def nearest(x):
        return before[(F.normalize(x, dim=1) @ before.T).argmax(1)]
    nn1, nn2 = nearest(target[:b]), nearest(target[b:])
    expect = {"nnclr": lambda: (nnclr_loss(nn1, p[b:], cfg.loss.temperature)
                                + nnclr_loss(nn2, p[:b], cfg.loss.temperature)) / 2,
              "nnbyol": lambda: byol(p[:b], nn2) + byol(p[b:], nn1),
              "nnsiam": lambda: simsiam(p[:b], p[b:], nn1, nn2)}[name]()
    torch.testing.assert_close(out["loss"].detach(), expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.support.queue[:b], F.normalize(target[:b], dim=1), rtol=1e-5, atol=1e-6)
    assert torch.equal(m.support.queue[b:], before[b:]) and m.support.ptr.item() == 6
    assert m.support.labels[:b].tolist() == batch.labels.tolist()


# ------------------------------------------------------------------ ReSSL

def naive_ressl(q, k, queue, t_s, t_t):
    """Eq. 4 of Zheng et al. (2021), one image and one queue entry at a time."""
    total = 0.0
    for i in range(len(q)):
        s_t = [math.exp(float(k[i] @ queue[j]) / t_t) for j in range(len(queue))]
        s_s = [math.exp(float(q[i] @ queue[j]) / t_s) for j in range(len(queue))]
        total += -sum(a / sum(s_t) * math.log(b / sum(s_s)) for a, b in zip(s_t, s_s))
    return total / len(q)


@pytest.mark.parametrize("n, K, t_s, t_t", [(4, 6, 0.1, 0.04), (3, 9, 0.5, 0.2), (5, 2, 1.0, 1.0)])
def test_ressl_loss_matches_a_naive_loop_and_trains_only_the_student(n, K, t_s, t_t):
    from sslcifar.losses import ressl_loss
    g = torch.Generator().manual_seed(K)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=1)  # noqa: E731
    q, k, queue = unit(n, 5).requires_grad_(), unit(n, 5).requires_grad_(), unit(K, 5).requires_grad_()
    loss = ressl_loss(q, k, queue, t_s, t_t)
    assert loss.item() == pytest.approx(naive_ressl(q.detach(), k.detach(), queue.detach(), t_s, t_t), rel=1e-9)
    loss.backward()
    assert k.grad is None and queue.grad is None and q.grad.abs().sum() > 0


def test_ressl_loss_by_hand():
    """A queue of e1 and -e1, T_s = T_t = 1: the teacher at e1 gives (e/(e+1/e), ...), and a
    student at q = k has the teacher's entropy; a student at e2 sees (1/2, 1/2): log 2."""
    from sslcifar.losses import ressl_loss
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    queue = torch.cat([e1, -e1])
    a = math.e / (math.e + 1 / math.e)
    entropy = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    assert ressl_loss(e1, e1, queue, 1.0, 1.0).item() == pytest.approx(entropy, rel=1e-6)
    assert ressl_loss(e2, e1, queue, 1.0, 1.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_ressl_compares_the_strong_view_with_the_queue_before_the_step_then_enqueues_the_weak():
    from sslcifar.losses import ressl_loss
    from sslcifar.methods import build_method
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", ["method=ressl", "method.queue_size=10", "backbone.width=4",
                                 "dataset.size=16"])
    torch.manual_seed(0)
    m = build_method(cfg, num_train=6, num_classes=3).train()
    batch = _nn_batch()
    before = m.queue.queue.clone()
    out = m(batch)
    with torch.no_grad():
        q = F.normalize(m.projector(m.backbone(batch.views[0])), dim=1)
        k = F.normalize(m.projector_t(m.backbone_t(batch.views[1])), dim=1)
    torch.testing.assert_close(out["loss"].detach(), ressl_loss(q, k, before, 0.1, 0.04), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.queue.queue[:6], k, rtol=1e-5, atol=1e-6)
    assert torch.equal(m.queue.queue[6:], before[6:])


# ------------------------------------------------------------------ All4One

def naive_all4one_redundancy(zt1, zt2, z1, z2):
    """Sec. 3.4 of Estepa et al. (2023) entry by entry: the cross-correlations of column-
    normalised momentum and online projections, root mean squares of the diagonal's distance
    to 1 and of the off-diagonal, averaged over the two directions."""
    def corr(a, b):
        a, b = a.double(), b.double()
        a = a / a.pow(2).sum(0).sqrt()
        b = b / b.pow(2).sum(0).sqrt()
        d = a.shape[1]
        return [[float(sum(a[n, i] * b[n, j] for n in range(len(a)))) for j in range(d)] for i in range(d)]
    on, off = [], []
    for c in (corr(zt1, z2), corr(zt2, z1)):
        d = len(c)
        on.append(sum((c[i][i] - 1) ** 2 for i in range(d)) / d)
        off.append(sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / (d * d - d))
    return (math.sqrt(sum(on) / 2) + math.sqrt(sum(off) / 2)) / 2


def test_all4one_redundancy_matches_a_naive_loop_and_its_fixed_points():
    from sslcifar.losses import all4one_redundancy
    g = torch.Generator().manual_seed(3)
    zt1, zt2, z1, z2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
    z1.requires_grad_(), zt1.requires_grad_()
    loss = all4one_redundancy(zt1, zt2, z1, z2)
    assert loss.item() == pytest.approx(naive_all4one_redundancy(zt1.detach(), zt2, z1.detach(), z2), rel=1e-9)
    loss.backward()
    assert zt1.grad is None and z1.grad.abs().sum() > 0
    # orthonormal columns on both sides: both correlations are the identity, the loss is 0
    eye = torch.eye(4, dtype=torch.float64)
    assert all4one_redundancy(eye, eye, eye, eye).item() == pytest.approx(0, abs=1e-12)
    # every column the same: C = all ones, on = 0, off = 1, the loss is 1/2
    ones = torch.ones(3, 4, dtype=torch.float64)
    assert all4one_redundancy(ones, ones, ones, ones).item() == pytest.approx(0.5)


def test_slot_encoding_is_the_positional_encodings_packages_sinusoid():
    """PositionalEncodingPermute1D(5) on a [N, 5, D] sequence adds, at slot c and dimension
    x, sin(x / 10000^(c/6)) for even c and cos(x / 10000^((c-1)/6)) for odd c (5 channels
    rounded up to 6)."""
    from sslcifar.methods.all4one import slot_encoding
    enc = slot_encoding(5, 7)
    assert enc.shape == (5, 7)
    for c in range(5):
        for x in range(7):
            f = 1 / 10000 ** ((c - c % 2) / 6)
            assert enc[c, x].item() == pytest.approx(math.sin(x * f) if c % 2 == 0 else math.cos(x * f), abs=1e-12)


def test_all4one_is_its_three_terms_on_the_queue_before_the_step():
    from sslcifar.losses import all4one_redundancy, nnclr_loss
    from sslcifar.methods import build_method
    from sslcifar.methods.all4one import slot_encoding
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", ["method=all4one", "method.queue_size=10", "method.proj_out_dim=16",
                                 "method.transformer_heads=4", "backbone.width=4", "dataset.size=16"])
    torch.manual_seed(0)
    m = build_method(cfg, num_train=6, num_classes=3).train()
    m.transformer.eval()                    # no dropout: the recomputation below must agree
    batch = _nn_batch()
    before = m.support.queue.clone()
    out = m(batch)
    b = 6
    with torch.no_grad():
        z = m.projector(m.encode(batch.views))
        p, p_2 = m.predictor(z), m.predictor2(z)
        zt = F.normalize(m.projector_t(m.encode(batch.views, m.backbone_t)), dim=1)

        def knn(x):                        # the 5 nearest queue rows, nearest first
            return before[(x @ before.T).argsort(dim=1, descending=True)[:, :5]]

        def summary(seq):
            return m.transformer(seq + slot_encoding(5, 16).float())[:, 0]
        n1, n2 = knn(zt[:b]), knn(zt[b:])
        centroid = (nnclr_loss(summary(n1), summary(torch.cat([p_2[b:, None], n2[:, :4]], 1)), 0.1)
                    + nnclr_loss(summary(n2), summary(torch.cat([p_2[:b, None], n1[:, :4]], 1)), 0.1)) / 2
        neighbour = (nnclr_loss(n1[:, 0], p[b:], 0.2) + nnclr_loss(n2[:, 0], p[:b], 0.2)) / 2
        redundancy = all4one_redundancy(zt[:b], zt[b:], z[:b], z[b:])
    torch.testing.assert_close(out["loss_centroid"], centroid, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_neighbour"], neighbour, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_redundancy"], redundancy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"].detach(), 0.5 * neighbour + 0.5 * centroid + 5 * redundancy,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.support.queue[:b], zt[:b], rtol=1e-5, atol=1e-6)
    # the transformer learns at its own base lr, on the run's schedule
    from sslcifar.train import group_lr
    groups = m.param_groups()
    assert groups[1]["base_lr"] == 0.1 and len(groups[0]["params"]) + len(groups[1]["params"]) == len(
        [q for q in m.parameters() if q.requires_grad])
    assert group_lr(groups[1], 0.5, 0.25) == pytest.approx(0.05) and group_lr(groups[0], 0.5, 0.25) == 0.25

# ------------------------------------------------------------------ DINO and SwAV

def naive_dino(student, teacher, center, t_s, t_t, n_global, b):
    """DINO's Algorithm 1, one (teacher crop, student crop, image) at a time."""
    v = student.shape[0] // b
    total, pairs = 0.0, 0
    for t in range(n_global):
        for s in range(v):
            if s == t:
                continue
            h = 0.0
            for i in range(b):
                q = torch.softmax((teacher[t * b + i] - center[0]) / t_t, dim=0)
                logp = torch.log_softmax(student[s * b + i] / t_s, dim=0)
                h += float(-(q * logp).sum())
            total += h / b
            pairs += 1
    return total / pairs


def test_dino_loss_matches_a_naive_loop_and_updates_the_centre_after():
    from sslcifar.losses import DINOLoss
    g = torch.Generator().manual_seed(0)
    b, k, v = 4, 6, 5                                     # 2 global + 3 local crops
    student = torch.randn(v * b, k, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * b, k, generator=g, dtype=torch.float64)
    loss_fn = DINOLoss(k, 2, student_temp=0.1, center_momentum=0.9).double()
    loss_fn.center.copy_(torch.randn(1, k, generator=g, dtype=torch.float64))
    before = loss_fn.center.clone()
    loss = loss_fn(student, teacher, 0.04)
    assert loss.item() == pytest.approx(naive_dino(student, teacher, before, 0.1, 0.04, 2, b), rel=1e-9)
    torch.testing.assert_close(loss_fn.center, 0.9 * before + 0.1 * teacher.mean(0, keepdim=True))
    # no gradient reaches the teacher; the student gets one
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    loss_fn(s, t, 0.04).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_dino_loss_of_a_student_equal_to_the_sharpened_teacher_is_its_entropy():
    """With teacher_temp = student_temp, a centre of 0 and identical crops, each term is the
    cross-entropy of a distribution with itself: its entropy."""
    from sslcifar.losses import DINOLoss
    x = torch.randn(3, 5, dtype=torch.float64)
    loss = DINOLoss(5, 2, student_temp=0.5).double()(torch.cat([x, x]), torch.cat([x, x]), 0.5)
    p = torch.softmax(x / 0.5, dim=1)
    assert loss.item() == pytest.approx(float(-(p * p.log()).sum(1).mean()), rel=1e-12)


def naive_sinkhorn(scores, eps, iters):
    q = [[math.exp(float(s) / eps) for s in row] for row in scores.double()]     # [B][K]
    b, k = len(q), len(q[0])
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        col = [sum(q[i][j] for i in range(b)) for j in range(k)]                 # per prototype
        q = [[q[i][j] / col[j] / k for j in range(k)] for i in range(b)]
        row = [sum(r) for r in q]                                                 # per sample
        q = [[x / row[i] / b for x in q[i]] for i in range(b)]
    return torch.tensor(q, dtype=torch.float64) * b


def test_sinkhorn_matches_a_naive_loop_and_balances_the_prototypes():
    from sslcifar.losses import sinkhorn
    g = torch.Generator().manual_seed(1)
    scores = F.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    q = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(q, naive_sinkhorn(scores, 0.05, 3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.sum(1), torch.ones(8, dtype=torch.float64))      # rows: 1
    many = sinkhorn(scores, 0.5, 200)                       # converged: columns B/K each
    torch.testing.assert_close(many.sum(0), torch.full((5,), 8 / 5, dtype=torch.float64), rtol=1e-6, atol=0)


def naive_swav(scores, v, b, assign, T, eps, iters, queue=None):
    crops = scores.double().split(b)
    total = 0.0
    for i, a in enumerate(assign):
        s = crops[a] if queue is None else torch.cat([crops[a], queue[i].double()])
        q = naive_sinkhorn(s, eps, iters)[:b]
        sub = 0.0
        for c in range(v):
            if c != a:
                sub += float(-(q * torch.log_softmax(crops[c] / T, dim=1)).sum(1).mean())
        total += sub / (v - 1)
    return total / len(assign)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_matches_a_naive_loop(with_queue):
    from sslcifar.losses import swav_loss
    g = torch.Generator().manual_seed(2)
    b, k, v = 4, 6, 4
    scores = F.normalize(torch.randn(v * b, k, generator=g, dtype=torch.float64), dim=1)
    queue = [F.normalize(torch.randn(8, k, generator=g, dtype=torch.float64), dim=1) for _ in range(2)] \
        if with_queue else None
    ours = swav_loss(scores, v, (0, 1), 0.1, 0.05, 3, queue_scores=queue)
    assert ours.item() == pytest.approx(naive_swav(scores, v, b, (0, 1), 0.1, 0.05, 3, queue), rel=1e-9)


def _clusters(seed, classes=10, dim=32, batch=256):
    """Two noisy views of points from `classes` well-separated Gaussian clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3

    def batch_fn():
        y = torch.randint(classes, (batch,), generator=g)
        x = centres[y]
        return y, torch.cat([x + torch.randn(x.shape, generator=g), x + torch.randn(x.shape, generator=g)])
    return batch_fn


def _purity(y, assigned):
    """Share of the samples whose prototype's majority class is their own."""
    hits = sum(int((y[assigned == k] == y[assigned == k].mode().values).sum()) for k in assigned.unique())
    return hits / len(y)


class _NormedHead(torch.nn.Module):
    """MLP -> L2-normalised bottleneck -> prototypes (weight-normalised), as DINO's head."""

    def __init__(self, dim_in, prototypes, weight_norm=True):
        super().__init__()
        with torch.random.fork_rng():        # seeded here, without touching other tests' RNG
            torch.manual_seed(0)
            self._build(dim_in, prototypes, weight_norm)

    def _build(self, dim_in, prototypes, weight_norm):
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim_in, 128), torch.nn.GELU(), torch.nn.Linear(128, 16))
        last = torch.nn.Linear(16, prototypes, bias=False)
        self.last = torch.nn.utils.parametrizations.weight_norm(last) if weight_norm else last

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=1))


def test_dino_loss_learns_to_cluster_a_toy_problem():
    """End to end: student + EMA teacher + centring find the clusters of a toy problem
    (10 classes; DINO may merge two: purity > 0.8 where a collapse gives 0.1) and the loss
    falls far below ln K. A wrong sign or a missing centre collapses it (uniform: loss ln K,
    or one prototype for all)."""
    from sslcifar.losses import DINOLoss
    from sslcifar.methods.ema import ema_update, frozen_copy
    k, batch = 64, _clusters(0)
    student = _NormedHead(32, k)
    teacher = frozen_copy(student)
    loss_fn = DINOLoss(k, 2, student_temp=0.1, center_momentum=0.9)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        y, v = batch()
        loss = loss_fn(student(v), teacher(v), 0.04)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(teacher, student, 0.99)
    with torch.no_grad():
        y, v = batch()
        assigned = teacher(v[:len(y)]).argmax(1)
        assert _purity(y, assigned) > 0.8 and len(assigned.unique()) >= 5
    assert loss.item() < 0.5 * math.log(k)


def test_swav_loss_learns_to_cluster_a_toy_problem():
    """End to end: swapped prediction with Sinkhorn codes on unit prototypes clusters the
    toy problem (purity > 0.95, loss far below ln K, embeddings not collapsed)."""
    from sslcifar.losses import swav_loss
    k, batch = 30, _clusters(1)
    model = _NormedHead(32, k, weight_norm=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(300):
        with torch.no_grad():                # SwAV's unit prototypes
            model.last.weight.copy_(F.normalize(model.last.weight, dim=1))
        y, v = batch()
        loss = swav_loss(model(v), 2, (0, 1), 0.1, 0.05, 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        y, v = batch()
        assert _purity(y, model(v[:len(y)]).argmax(1)) > 0.95
        z = F.normalize(model.mlp(v), dim=1)
        assert z.std(0).mean() > 0.1          # spread, not one point
    assert loss.item() < 0.5 * math.log(k)


# ------------------------------------------------------------------ the invariance gradient penalty

def _toy_encoder(theta, w1, w2):
    """A per-sample encoder of the nuisance parameters: h_b = tanh(theta_b W1) W2."""
    return torch.tanh(theta @ w1) @ w2


def test_gradient_penalty_matches_a_naive_per_sample_loop_and_finite_differences():
    from sslcifar.losses import gradient_penalty
    g = torch.Generator().manual_seed(0)
    b, p, d, m = 5, 4, 6, 7
    w1 = torch.randn(p, 8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, d, generator=g, dtype=torch.float64)
    theta = torch.rand(b, p, generator=g, dtype=torch.float64).requires_grad_()
    extra = torch.rand(m, b, p, generator=g, dtype=torch.float64)
    signs = (torch.randint(0, 2, (b, d), generator=g) * 2 - 1).double()
    ours = gradient_penalty(_toy_encoder(theta, w1, w2), theta, extra, signs, upper_limit=None)
    # naive: one sample at a time, its own gradient, then the mean over (m, b)
    total = 0.0
    for i in range(b):
        t = theta[i].detach().clone().requires_grad_()
        hh = F.normalize(_toy_encoder(t[None], w1, w2), dim=1)[0]
        (gi,) = torch.autograd.grad((signs[i] * hh).sum(), t)
        total += sum(float(gi @ (extra[k, i] - theta[i].detach())) ** 2 for k in range(m))
    assert ours.item() == pytest.approx(total / (m * b), rel=1e-10)
    # the same with G by central differences of sum(s * h_hat) in theta
    def P(t):
        return float((signs * F.normalize(_toy_encoder(t, w1, w2), dim=1)).sum())
    eps, fd = 1e-6, torch.zeros(b, p, dtype=torch.float64)
    for i in range(b):
        for k in range(p):
            e = torch.zeros(b, p, dtype=torch.float64)
            e[i, k] = eps
            fd[i, k] = (P(theta.detach() + e) - P(theta.detach() - e)) / (2 * eps)
    by_fd = ((fd[None] * (extra - theta.detach()[None])).sum(2) ** 2).mean()
    assert ours.item() == pytest.approx(by_fd.item(), rel=1e-6)
    # clamped above: the value stops at the limit and so does its gradient
    low = gradient_penalty(_toy_encoder(theta, w1, w2), theta, extra, signs, upper_limit=ours.item() / 2)
    assert low.item() == pytest.approx(ours.item() / 2)
    unnormalised = gradient_penalty(_toy_encoder(theta, w1, w2), theta, extra, signs,
                                    normalize=False, upper_limit=None)
    assert unnormalised.item() != pytest.approx(ours.item())


def test_the_penalty_reaches_the_encoder_through_a_double_backward():
    from sslcifar.losses import gradient_penalty
    g = torch.Generator().manual_seed(1)
    w1 = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.rand(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    extra = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)
    penalty = gradient_penalty(_toy_encoder(theta, w1, w2), theta, extra, generator=g, upper_limit=None)
    penalty.backward()
    assert w1.grad.abs().sum() > 0 and w2.grad.abs().sum() > 0
    # a representation that ignores theta is invariant: zero penalty
    flat = gradient_penalty(_toy_encoder(theta * 0, w1, w2) + theta.sum() * 0, theta, extra,
                            generator=g, upper_limit=None)
    assert flat.item() == 0.0
