"""lightly's methods and the newest ones: DCL/DCLW, FastSiam, TiCo and MMCR's losses against
naive loops written here (values and gradients, in float64) and against the papers'
formulas on cases small enough to compute by hand; TiCo's running covariance as the method
keeps it."""
import math

import pytest
import torch
import torch.nn.functional as F

from sslcifar.losses import dcl_loss, fastsiam_loss, mmcr_loss, nt_xent, simsiam, tico_loss


def _randn(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def _unit(v):
    return v / torch.sqrt((v * v).sum())


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


# ---------------------------------------------------------------------- DCL / DCLW

def naive_dcl(z1, z2, T, sigma=None):
    """Eq. 6 of Yeh et al. (2022) one anchor at a time: the positive's -w s/T plus the log of
    the sum over the 2N - 2 negatives (the same view's other images and the other view's);
    DCLW's weights 2 - N exp(s_ii/sigma) / sum_k exp(s_kk/sigma) taken as constants."""
    n = len(z1)
    a = [_unit(z1[i]) for i in range(n)]
    b = [_unit(z2[i]) for i in range(n)]
    pos = [a[i] @ b[i] for i in range(n)]
    if sigma is None:
        w = [1.0] * n
    else:
        e = [math.exp(float(p.detach()) / sigma) for p in pos]
        w = [2 - n * e[i] / sum(e) for i in range(n)]
    total = 0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            negs = [x[i] @ x[j] / T for j in range(n) if j != i] + \
                   [x[i] @ y[j] / T for j in range(n) if j != i]
            total = total + (-w[i] * pos[i] / T + torch.log(sum(torch.exp(v) for v in negs))) / n
    return total / 2


@pytest.mark.parametrize("n, T, sigma", [(4, 0.1, None), (5, 0.5, None), (4, 0.1, 0.5), (6, 0.2, 1.0)])
def test_dcl_loss_matches_a_naive_loop_values_and_gradients(n, T, sigma):
    z1, z2 = _randn(n, 5, seed=n), _randn(n, 5, seed=n + 100)
    ours, ref = dcl_loss(z1, z2, T, sigma), naive_dcl(z1, z2, T, sigma)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    for g, r in zip(_grads(ours, z1, z2), _grads(ref, z1, z2)):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


def test_dcl_loss_by_hand_and_against_nt_xent():
    """Identical embeddings: every similarity 1, the loss -1/T + 1/T + log(2N - 2). And DCL
    is NT-Xent without the positive in the denominator: always below it."""
    n, T = 4, 0.1
    same = torch.ones(n, 3, dtype=torch.float64)
    assert dcl_loss(same, same, T).item() == pytest.approx(math.log(2 * n - 2), rel=1e-12)
    # DCLW on identical pairs: every weight 2 - N/N = 1, the same value
    assert dcl_loss(same, same, T, 0.5).item() == pytest.approx(math.log(2 * n - 2), rel=1e-12)
    z1, z2 = _randn(8, 6, seed=1, grad=False), _randn(8, 6, seed=2, grad=False)
    assert dcl_loss(z1, z2, 0.5) < nt_xent(z1, z2, 0.5)
    # two images, views aligned and orthogonal (e1, e2): positives s=1, negatives 0 and 0
    e = torch.eye(2, dtype=torch.float64)
    assert dcl_loss(e, e, 1.0).item() == pytest.approx(-1 + math.log(2), rel=1e-12)


def test_dclw_weights_favour_the_harder_positives_and_carry_no_gradient():
    """The weight of a pair is larger when its views disagree (lower s_ii): the loss weights
    hard positives up. Changing sigma changes the loss but the gradient is that of the
    weighted sum with the weights held fixed (checked against the naive loop above)."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)     # pair 2 disagrees
    s = torch.tensor([1.0, 1 / math.sqrt(2)], dtype=torch.float64)
    w = 2 - 2 * torch.softmax(s / 0.5, 0)
    assert w[1] > 1 > w[0]
    assert dcl_loss(z1, z2, 1.0, 0.5).item() == pytest.approx(naive_dcl(z1, z2, 1.0, 0.5).item(), rel=1e-12)


# ---------------------------------------------------------------------- FastSiam

def naive_fastsiam(p, z):
    """lightly's FastSiamModel.training_step: for each view i, the negative cosine of its
    prediction and the mean of the other views' projections (no gradient), averaged over
    the batch, divided by the number of views, summed."""
    n, v, _ = p.shape
    loss = 0
    for i in range(v):
        others = torch.stack([z[:, j] for j in range(v) if j != i]).mean(0).detach()
        loss = loss - F.cosine_similarity(p[:, i], others, dim=1).mean() / v
    return loss


@pytest.mark.parametrize("v", [2, 3, 4, 6])
def test_fastsiam_loss_matches_lightly_s_loop_and_trains_only_the_predictions(v):
    p, z = _randn(5, v, 7, seed=v), _randn(5, v, 7, seed=v + 10)
    ours, ref = fastsiam_loss(p, z), naive_fastsiam(p, z)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(_grads(ours, p)[0], _grads(ref, p)[0], atol=1e-12, rtol=1e-10)
    assert torch.autograd.grad(fastsiam_loss(p, z), z, allow_unused=True)[0] is None


def test_fastsiam_with_two_views_is_simsiam_and_by_hand():
    p, z = _randn(4, 2, 5, seed=3, grad=False), _randn(4, 2, 5, seed=4, grad=False)
    torch.testing.assert_close(fastsiam_loss(p, z), simsiam(p[:, 0], p[:, 1], z[:, 0], z[:, 1]))
    # 3 views: z = e1, e2, e1+... the mean of the others of view 0 is (e2 + e3)/2, p0 along it
    e = torch.eye(3, dtype=torch.float64)
    z = e.unsqueeze(0)                                              # [1, 3, 3]: views e1, e2, e3
    p = torch.stack([e[1] + e[2], e[0] + e[2], e[0] + e[1]]).unsqueeze(0)
    assert fastsiam_loss(p, z).item() == pytest.approx(-1.0, rel=1e-12)
    assert fastsiam_loss(e.unsqueeze(0), z).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- TiCo

def naive_tico(z1, z2, C, beta, rho):
    """Eq. 5 of Zhu et al. (2022), entry by entry: B = 1/N sum_n z1_n z1_n^T of the normalised
    online embeddings (a constant), C' = beta C + (1 - beta) B, and
    1 - mean <z1_n, z2_n> + rho mean z1_n^T C' z1_n."""
    n, d = z1.shape
    a = [_unit(z1[i]) for i in range(n)]
    b = [_unit(z2[i]) for i in range(n)]
    B = [[sum(float(a[k][i].detach()) * float(a[k][j].detach()) for k in range(n)) / n for j in range(d)]
         for i in range(d)]
    Cn = torch.tensor([[beta * float(C[i, j]) + (1 - beta) * B[i][j] for j in range(d)] for i in range(d)],
                      dtype=torch.float64)
    inv = 1 - sum(a[k] @ b[k] for k in range(n)) / n
    contrast = sum(sum(a[k][i] * Cn[i, j] * a[k][j] for i in range(d) for j in range(d)) for k in range(n)) / n
    return inv + rho * contrast, Cn


@pytest.mark.parametrize("beta, rho", [(0.9, 8.0), (0.5, 1.0), (0.0, 20.0)])
def test_tico_loss_matches_a_naive_loop_values_gradients_and_the_new_covariance(beta, rho):
    z1, z2 = _randn(5, 4, seed=1), _randn(5, 4, seed=2, grad=False)
    C = _randn(4, 4, seed=3, grad=False)
    C = C @ C.T / 4                                                  # a covariance
    (ours, C_new), (ref, C_ref) = tico_loss(z1, z2, C, beta, rho), naive_tico(z1, z2, C, beta, rho)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(C_new, C_ref, atol=1e-14, rtol=1e-12)
    assert not C_new.requires_grad
    torch.testing.assert_close(_grads(ours, z1)[0], _grads(ref, z1)[0], atol=1e-12, rtol=1e-10)


def test_tico_loss_by_hand():
    """z1 = z2 = (e1, e2), C = 0, beta 1/2, rho 1: B = I/2, C' = I/4, the invariance term 0
    and the contrast 1/4."""
    e = torch.eye(2, dtype=torch.float64)
    loss, C_new = tico_loss(e, e, torch.zeros(2, 2, dtype=torch.float64), 0.5, 1.0)
    assert loss.item() == pytest.approx(0.25, rel=1e-12)
    torch.testing.assert_close(C_new, e / 4)


def test_tico_keeps_the_running_covariance_of_its_online_embeddings():
    """One forward of method=tico: C becomes (1 - beta) z1^T z1 / N of view 1's online
    projections (C starts at zeros, as lightly's), and the next forward starts from it."""
    from sslcifar.data.batch import Batch
    from sslcifar.methods import build_method
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", ["method=tico", "backbone.width=4", "dataset.size=16"])
    torch.manual_seed(0)
    method = build_method(cfg, num_train=16, num_classes=3).double().eval()
    views = [_randn(6, 3, 16, 16, seed=s, grad=False) for s in (1, 2)]
    batch = Batch(views=views, labels=torch.zeros(6, dtype=torch.long), index=torch.arange(6))
    assert torch.equal(method.C, torch.zeros_like(method.C))
    with torch.no_grad():
        method(batch)
        z1 = F.normalize(method.projector(method.backbone(views[0])), dim=1)
    beta = cfg.loss.beta
    torch.testing.assert_close(method.C, (1 - beta) * z1.T @ z1 / 6, atol=1e-14, rtol=1e-12)
    first = method.C.clone()
    with torch.no_grad():
        method(batch)
    torch.testing.assert_close(method.C, beta * first + (1 - beta) * z1.T @ z1 / 6, atol=1e-14, rtol=1e-12)


# ---------------------------------------------------------------------- MMCR

def naive_nuclear(m):
    """The nuclear norm as the sum of the square roots of the eigenvalues of M M^T (or M^T M,
    the smaller)."""
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(g).clamp_min(0).sqrt().sum()


def naive_mmcr(z, lmbda):
    """Eq. 3 of Yerxa et al. (2023) written out: normalise each view, average each image's
    views, -||centroids||_* + lmbda / N sum_n ||Z_n||_*."""
    n, v, d = z.shape
    unit = torch.stack([torch.stack([_unit(z[i, j]) for j in range(v)]) for i in range(n)])
    centroids = torch.stack([sum(unit[i, j] for j in range(v)) / v for i in range(n)])
    local = sum(naive_nuclear(unit[i]) for i in range(n)) / n
    return -naive_nuclear(centroids) + lmbda * local


@pytest.mark.parametrize("n, v, d, lmbda", [(6, 4, 5, 0.0), (4, 3, 8, 0.5), (8, 2, 3, 5e-3)])
def test_mmcr_loss_matches_a_naive_loop_values_and_gradients(n, v, d, lmbda):
    z = _randn(n, v, d, seed=n * v)
    ours, ref = mmcr_loss(z, lmbda), naive_mmcr(z, lmbda)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(_grads(ours, z)[0], _grads(ref, z)[0], atol=1e-8, rtol=1e-7)


def test_mmcr_loss_by_hand():
    """Two images in 2-D: views that agree on orthogonal directions give centroids (e1, e2)
    and -||I||_* = -2; views that cancel (e1, -e1) give a zero centroid; each image's views
    e1, e1 form a rank-1 [2, 2] matrix of singular value sqrt(2) (the local term)."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    agree = torch.stack([torch.stack([e1, e1]), torch.stack([e2, 3 * e2])])        # [2, 2, 2]
    assert mmcr_loss(agree).item() == pytest.approx(-2.0, rel=1e-6)
    assert mmcr_loss(agree, 0.5).item() == pytest.approx(-2.0 + 0.5 * math.sqrt(2), rel=1e-6)
    cancel = torch.stack([torch.stack([e1, -e1]), torch.stack([e2, e2])])
    assert mmcr_loss(cancel).item() == pytest.approx(-1.0, rel=1e-6)
    with pytest.raises(ValueError, match="lmbda"):
        mmcr_loss(agree, -1.0)


# ---------------------------------------------------------------------- LeJEPA / SIGReg

def naive_epps_pulley(x, t_max=3.0, knots=17):
    """The Epps-Pulley statistic of 1-D samples x [N] against N(0, 1), with complex numbers
    on the whole symmetric grid of [-t_max, t_max] (2K - 1 points, the plain trapezoidal
    rule): N * integral |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt."""
    n = len(x)
    ts = torch.linspace(-t_max, t_max, 2 * knots - 1, dtype=torch.float64)
    dt = float(ts[1] - ts[0])
    total = 0
    for k, t in enumerate(ts):
        ecf = sum(torch.exp(1j * t * x[m]) for m in range(n)) / n
        gauss = math.exp(-float(t) ** 2 / 2)
        w = dt / 2 if k in (0, len(ts) - 1) else dt
        total = total + w * (ecf - gauss).abs().square() * gauss
    return n * total


def naive_sigreg(z, slices, t_max=3.0, knots=17):
    """z [V, N, D], slices [D, S] unit columns: the mean over views and slices."""
    stats = [naive_epps_pulley(z[v] @ slices[:, s], t_max, knots)
             for v in range(z.shape[0]) for s in range(slices.shape[1])]
    return sum(stats) / len(stats)


@pytest.mark.parametrize("v, n, d, s", [(1, 6, 3, 4), (3, 5, 4, 2)])
def test_sigreg_loss_matches_the_epps_pulley_statistic_on_its_slices(v, n, d, s):
    from sslcifar.losses import sigreg_loss
    z = _randn(v, n, d, seed=v + n)
    ours = sigreg_loss(z, s, torch.Generator().manual_seed(7), knots=9, t_max=2.5)
    a = torch.randn(d, s, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = naive_sigreg(z, a / a.norm(dim=0), t_max=2.5, knots=9)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(_grads(ours, z)[0], _grads(ref, z)[0], atol=1e-11, rtol=1e-9)


def test_sigreg_is_small_for_a_gaussian_and_large_for_a_collapse_and_its_slices_are_seeded():
    from sslcifar.losses import sigreg_loss
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(2048, 16, generator=g, dtype=torch.float64)
    collapsed = torch.ones(2048, 16, dtype=torch.float64) / 4           # every sample the same
    seeded = lambda: torch.Generator().manual_seed(3)                   # noqa: E731
    small, large = sigreg_loss(gaussian, 64, seeded()), sigreg_loss(collapsed, 64, seeded())
    # under the null E[N |phi_N(t) - phi(t)|^2] = 1 - phi(t)^2, so the statistic's mean is
    # about the integral of (1 - e^{-t^2}) e^{-t^2/2}: sqrt(2 pi)(1 - 1/sqrt 3) = 1.06
    assert small < 2.0 and 100 < large
    # a narrow Gaussian (sd 0.1) is far from N(0, I) as well: SIGReg fixes the scale too
    assert sigreg_loss(gaussian / 10, 64, seeded()) > 50 * small
    assert sigreg_loss(gaussian, 64, seeded()) == small                 # same generator, same slices
    assert sigreg_loss(gaussian, 64, torch.Generator().manual_seed(4)) != small


def test_lejepa_loss_is_the_weighted_sum_of_sigreg_and_the_invariance_to_the_global_mean():
    """By hand: two global views z1, z2 and a local z3 of one image in 1-D with values 1, 3
    and 5 (centre 2): invariance = ((2-1)^2 + (2-3)^2 + (2-5)^2) / 3 = 11/3; lambda = 0 gives
    it alone. Then against the formula for random views."""
    from sslcifar.losses import lejepa_loss, sigreg_loss
    z = torch.tensor([[[1.0]], [[3.0]], [[5.0]]], dtype=torch.float64)   # [V=3, N=1, D=1]
    assert lejepa_loss(z, 2, 0.0, 4).item() == pytest.approx(11 / 3, rel=1e-12)
    z = _randn(4, 6, 5, seed=11, grad=False)
    centre = z[:2].mean(0)
    inv = sum(float(((centre - z[v]) ** 2).sum()) for v in range(4)) / (4 * 6 * 5)
    sig = sigreg_loss(z, 8, torch.Generator().manual_seed(1))
    ours = lejepa_loss(z, 2, 0.05, 8, torch.Generator().manual_seed(1))
    assert ours.item() == pytest.approx(0.05 * sig.item() + 0.95 * inv, rel=1e-12)
    with pytest.raises(ValueError, match="lambda_param"):
        lejepa_loss(z, 2, 1.5, 8)


# ---------------------------------------------------------------------- SMoG

def naive_smog(p, z, zt, groups, beta, T):
    """lightly's SMoGPrototypes and SMoGModel.training_step, step by step: the targets by the
    momentum projections, then each assigned group moved by the mean of its online
    projections (a loop over the groups), then the cross-entropy of the predictions'
    cosine logits."""
    unit = groups / groups.norm(dim=1, keepdim=True)
    cos = lambda x: (x / x.norm(dim=1, keepdim=True)) @ unit.T          # noqa: E731
    target = cos(zt.detach()).argmax(1)
    assign = cos(z.detach()).argmax(1)
    new = groups.clone()
    rows = []
    for g in range(len(groups)):
        mask = assign == g
        rows.append(beta * groups[g] + (1 - beta) * z[mask].mean(0) if mask.any() else groups[g])
    new = torch.stack(rows)
    logits = (p / p.norm(dim=1, keepdim=True)) @ (new / new.norm(dim=1, keepdim=True)).T / T
    loss = sum(-torch.log_softmax(logits[n], 0)[target[n]] for n in range(len(p))) / len(p)
    return loss, new.detach()


@pytest.mark.parametrize("n, g, beta", [(8, 3, 0.99), (6, 5, 0.5), (10, 10, 0.0)])
def test_smog_loss_matches_lightly_s_steps_values_gradients_and_the_new_groups(n, g, beta):
    from sslcifar.losses import smog_loss
    p, z = _randn(n, 4, seed=n), _randn(n, 4, seed=n + 1)
    zt, groups = _randn(n, 4, seed=n + 2, grad=False), _randn(g, 4, seed=n + 3, grad=False)
    (ours, new), (ref, new_ref) = smog_loss(p, z, zt, groups, beta, 0.1), naive_smog(p, z, zt, groups, beta, 0.1)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(new, new_ref, atol=1e-14, rtol=1e-12)
    for a, b in zip(_grads(ours, p, z), _grads(ref, p, z)):            # z: through the moved groups
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_smog_loss_by_hand():
    """Two groups e1, e2; one sample whose online projection and prediction are e1 and whose
    momentum projection is e2: target group 2; group 1 moves to (beta + 1 - beta) e1 = e1,
    group 2 stays; logits (1, 0) / T with T = 1: loss = log(1 + e) - 0 = log(1 + e^1) - 0."""
    from sslcifar.losses import smog_loss
    e = torch.eye(2, dtype=torch.float64)
    loss, new = smog_loss(e[:1], e[:1], e[1:], e.clone(), 0.5, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e), rel=1e-12)
    torch.testing.assert_close(new, e)


def test_smog_resets_its_groups_by_kmeans_and_its_target_every_reset_steps():
    """method=smog: the momentum is 0 (the target copies the online weights) at each reset
    step and the method's momentum elsewhere; before a reset step's forward the groups are
    the spherical k-means centroids of the bank (seeded by seed and step); the views swap
    at odd steps."""
    from sslcifar.losses import spherical_kmeans
    from sslcifar.methods import build_method, method_class
    from sslcifar.schedule import Schedules
    from .test_config import compose_cfg
    cfg = compose_cfg("simclr", ["method=smog", "backbone.width=4", "dataset.size=16",
                                 "method.num_groups=4", "method.queue_size=12",
                                 "method.reset_every=3", "method.proj_hidden_dim=16",
                                 "method.pred_hidden_dim=16"])
    sched = method_class("smog").schedules(cfg, 10, 5)["momentum"]
    assert sched.tolist() == [0.99, 0.99, 0.99, 0.0, 0.99, 0.99, 0.0, 0.99, 0.99, 0.0]
    torch.manual_seed(0)
    method = build_method(cfg, num_train=16, num_classes=3)
    now = Schedules(method.schedules(cfg, 10, 5), 5)
    method.bank.queue.copy_(torch.nn.functional.normalize(_randn(12, 128, seed=5, grad=False).float(), dim=1))
    before = method.groups.clone()
    method.before_step(now.at(2))
    assert torch.equal(method.groups, before)                          # not a reset step
    method.before_step(now.at(3))
    g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + 3) % 2**63)
    torch.testing.assert_close(method.groups, spherical_kmeans(method.bank.queue, 4, 10, g)[0])
    # the online network sees view 1 at even steps, view 2 at odd ones
    from sslcifar.data.batch import Batch
    method.eval()
    views = [_randn(4, 3, 16, 16, seed=s, grad=False).float() for s in (1, 2)]
    with torch.no_grad():
        for step, v in ((4, 0), (5, 1)):
            out = method(Batch(views, torch.arange(4), torch.zeros(4, dtype=torch.long), now=now.at(step)))
            torch.testing.assert_close(out["features"], method.backbone(views[v]))


# ---------------------------------------------------------------------- EMP-SSL

def naive_tcr(z, eps):
    """1/2 log det(I + D/(N eps) sum_n z_n z_n^T), the determinant from the eigenvalues of
    the Gram sum written as an outer-product loop."""
    n, d = z.shape
    gram = sum(torch.outer(z[k], z[k]) for k in range(n))
    return torch.log(torch.linalg.eigvalsh(torch.eye(d, dtype=z.dtype) + d / (n * eps) * gram)).sum() / 2


def naive_emp_ssl(z, eps, inv_coef):
    """The authors' main.py: cal_TCR (the mean over patches of -R) + patch_sim x
    Similarity_Loss (-1/V sum over patches of the mean cosine to the patches' mean)."""
    v = len(z)
    tcr = sum(-naive_tcr(z[i], eps) for i in range(v)) / v
    mean = sum(z[i] for i in range(v)) / v
    sim = sum(F.cosine_similarity(z[i], mean, dim=1).mean() for i in range(v)) / v
    return tcr - inv_coef * sim


@pytest.mark.parametrize("v, n, d, eps", [(3, 6, 4, 0.2), (5, 4, 6, 0.5), (2, 8, 3, 0.01)])
def test_emp_ssl_loss_matches_the_authors_steps_values_and_gradients(v, n, d, eps):
    from sslcifar.losses import emp_ssl_loss
    z = F.normalize(_randn(v, n, d, seed=v * n, grad=False), dim=-1).requires_grad_(True)
    ours, ref = emp_ssl_loss(z, eps, 200.0), naive_emp_ssl(z, eps, 200.0)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(_grads(ours, z)[0], _grads(ref, z)[0], atol=1e-9, rtol=1e-8)


def test_total_coding_rate_by_hand_and_its_sign_in_the_loss():
    """N = D = 2 orthonormal rows, eps = 1: I + 2/2 I = 2I, R = 1/2 log 4 = log 2. Collapsed
    rows (e1, e1): I + diag(2, 0), R = 1/2 log 3 < log 2: spread embeddings code more bits,
    and the loss (which subtracts R, the authors' sign; lightly's adds it) is lower for them."""
    from sslcifar.losses import emp_ssl_loss, total_coding_rate
    e = torch.eye(2, dtype=torch.float64)
    assert total_coding_rate(e, 1.0).item() == pytest.approx(math.log(2), rel=1e-12)
    same = torch.stack([e[0], e[0]])
    assert total_coding_rate(same, 1.0).item() == pytest.approx(math.log(3) / 2, rel=1e-12)
    spread, collapsed = torch.stack([e, e]), torch.stack([same, same])      # 2 patches each
    assert emp_ssl_loss(spread, 1.0, 0.0) < emp_ssl_loss(collapsed, 1.0, 0.0)
    # the invariance term alone: patches equal to their mean give cos 1
    assert emp_ssl_loss(spread, 1.0, 200.0).item() == pytest.approx(-math.log(2) - 200, rel=1e-12)


# ---------------------------------------------------------------------- DenseCL

def naive_densecl(q, k, queue, q_grid, k_grid, f_q, f_k, dense_queue, T, lam):
    """The authors' forward_train, position by position: the matched key position by the
    largest cosine of the backbone features, then MoCo's InfoNCE (positive first) for the
    global projections and for each of the N*S positions, mixed by lambda."""
    def infonce(qv, kv, negatives):
        logits = torch.cat([(qv * kv).sum().view(1), negatives @ qv]) / T
        return -torch.log_softmax(logits, 0)[0]
    n, d, s = q_grid.shape
    glob = sum(infonce(q[i], k[i], queue) for i in range(n)) / n
    dense = 0
    for i in range(n):
        for a in range(s):
            sims = [float(_unit(f_q[i, :, a]) @ _unit(f_k[i, :, b])) for b in range(s)]
            b = max(range(s), key=lambda j: sims[j])
            dense = dense + infonce(q_grid[i, :, a], k_grid[i, :, b], dense_queue)
    return (1 - lam) * glob + lam * dense / (n * s)


def test_densecl_loss_matches_the_authors_position_by_position():
    from sslcifar.losses import densecl_loss, densecl_match
    n, d, s, c, K = 3, 4, 5, 6, 7
    unit = lambda t, dim: F.normalize(t, dim=dim)                      # noqa: E731
    q, q_grid = unit(_randn(n, d, seed=1), 1), unit(_randn(n, d, s, seed=2), 1)
    k, k_grid = unit(_randn(n, d, seed=3, grad=False), 1), unit(_randn(n, d, s, seed=4, grad=False), 1)
    f_q, f_k = _randn(n, c, s, seed=5, grad=False), _randn(n, c, s, seed=6, grad=False)
    queue, dense_queue = unit(_randn(K, d, seed=7, grad=False), 1), unit(_randn(K, d, seed=8, grad=False), 1)
    match = densecl_match(f_q, f_k)
    ours = densecl_loss(q, k, queue, q_grid, k_grid, match, dense_queue, 0.2, 0.5)
    ref = naive_densecl(q, k, queue, q_grid, k_grid, f_q, f_k, dense_queue, 0.2, 0.5)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(_grads(ours, q, q_grid), _grads(ref, q, q_grid)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_densecl_matches_positions_by_backbone_features_and_by_hand():
    """Key map = the query map with its positions reversed: position s matches S-1-s. With
    every projection identical the loss is log(K + 1), whatever the match."""
    from sslcifar.losses import densecl_loss, densecl_match
    f_q = _randn(2, 8, 5, seed=9, grad=False)
    assert densecl_match(f_q, f_q.flip(2)).tolist() == [[4, 3, 2, 1, 0]] * 2
    one = torch.ones(2, 3, dtype=torch.float64) / math.sqrt(3)
    grid = one.unsqueeze(2).expand(2, 3, 5)
    queue = torch.ones(6, 3, dtype=torch.float64) / math.sqrt(3)
    loss = densecl_loss(one, one, queue, grid, grid, densecl_match(f_q, f_q.flip(2)), queue, 0.2, 0.5)
    assert loss.item() == pytest.approx(math.log(7), rel=1e-12)


def test_the_backbone_feature_map_pooled_is_its_forward():
    from sslcifar.models import build_backbone
    net = build_backbone("resnet18", 4, "cifar", 32).eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = net.feature_map(x)
    assert fmap.shape == (2, net.num_features, 4, 4)
    assert torch.equal(net.pool(fmap), net(x))
