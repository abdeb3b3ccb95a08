"""VICRegL's loss (sslcifar.losses.local) against a naive transcription of the authors' code
(facebookresearch/VICRegL 803ae4c, main_vicregl.py), written here with Python loops over
images, positions and channels, and against cases worked by hand."""
import math

import pytest
import torch

from sslcifar.losses import location_grid, nearest_matches, vicreg, vicregl_loss

F64 = torch.float64
EPS = 1e-4


# ---------------------------------------------------------------------- the naive reference

def naive_nn(inputs, candidates, dist, num_matches):
    """The authors' `neirest_neighbores`, one image at a time: each input position's nearest
    candidate; the num_matches input positions with the closest ones kept, in map order.
    Ties: the lowest index, as the implementation under test."""
    n, s, _ = inputs.shape
    m = s if num_matches is None or num_matches > s else num_matches
    fa, fb = [], []
    for i in range(n):
        best = []
        for p in range(s):
            row = [dist[i][p][q] for q in range(dist.shape[2])]
            q = min(range(len(row)), key=lambda k: (row[k], k))
            best.append((row[q], p, q))
        kept = sorted(sorted(best, key=lambda t: (t[0], t[1]))[:m], key=lambda t: t[1])
        fa.append(torch.stack([inputs[i, p] for _, p, _ in kept]))
        fb.append(torch.stack([candidates[i, q] for _, _, q in kept]))
    return torch.stack(fa), torch.stack(fb)


def naive_var(x):
    """x [N, M, D]: mean over (m, d) of relu(1 - sqrt(var over images + eps))."""
    n, m, d = x.shape
    total = 0.0
    for a in range(m):
        for c in range(d):
            col = x[:, a, c]
            var = ((col - col.mean()) ** 2).sum() / (n - 1)
            total = total + torch.relu(1 - torch.sqrt(var + EPS))
    return total / (m * d)


def naive_cov(x):
    """x [N, M, D]: per slot the covariance over images, sum of squared off-diagonal / D,
    averaged over the slots."""
    n, m, d = x.shape
    total = 0.0
    for a in range(m):
        xc = x[:, a, :] - x[:, a, :].mean(0)
        s = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    s = s + ((xc[:, i] * xc[:, j]).sum() / (n - 1)) ** 2
        total = total + s / d
    return total / m


def naive_vicreg_local(x, y, coeffs):
    """The authors' `_vicreg_loss`: (inv, var, cov), each already times its coefficient."""
    sim, std, cov = coeffs
    return (sim * ((x - y) ** 2).mean(), std * (naive_var(x) / 2 + naive_var(y) / 2),
            cov * (naive_cov(x) / 2 + naive_cov(y) / 2))


def naive_vicregl(z, maps, grids, num_global, alpha, coeffs, num_matches, l2_all):
    sim, std, cov = coeffs
    v = len(z)
    pairs = [(i, j) for i in range(num_global) for j in range(v) if j != i]
    # global_loss
    inv = sum(((z[i] - z[j]) ** 2).mean() for i, j in pairs) / len(pairs)
    var = sum(naive_var(x[:, None]) for x in z) / v
    cv = sum(naive_cov(x[:, None]) for x in z) / v
    glob = sim * inv + std * var + cov * cv
    # local_loss: per pair, l2 then location, each direction's _vicreg_loss halved
    l_inv = l_var = l_cov = 0.0
    for i, j in pairs:
        a, b, ga, gb = maps[i], maps[j], grids[i], grids[j]
        l2 = (None, None) if l2_all else num_matches
        for (d_ab, d_ba), (m_ab, m_ba) in (
                ((torch.cdist(a, b), torch.cdist(b, a)), l2),
                ((torch.cdist(ga, gb), torch.cdist(gb, ga)), num_matches)):
            t1 = naive_vicreg_local(*naive_nn(a, b, d_ab, m_ab), coeffs)
            t2 = naive_vicreg_local(*naive_nn(b, a, d_ba, m_ba), coeffs)
            l_inv = l_inv + t1[0] / 2 + t2[0] / 2
            l_var = l_var + t1[1] / 2 + t2[1] / 2
            l_cov = l_cov + t1[2] / 2 + t2[2] / 2
    local = (l_inv + l_var + l_cov) / len(pairs)
    return alpha * glob + (1 - alpha) * local


def _inputs(n=5, sizes=(4, 4, 1), d=6, e=5, seed=0):
    """z, maps, grids of views whose maps are sizes[v] x sizes[v], grids from real boxes."""
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, d, generator=g, dtype=F64) for _ in sizes]
    maps = [torch.randn(n, s * s, e, generator=g, dtype=F64) for s in sizes]
    grids = []
    for s in sizes:
        top, left = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
        hw = torch.randint(8, 24, (n, 2), generator=g)
        box = torch.stack([top, left, hw[:, 0], hw[:, 1]], 1)
        grids.append(location_grid(box, torch.zeros(n, dtype=torch.bool), s, s))
    return z, maps, grids


# ---------------------------------------------------------------------- against the naive one

@pytest.mark.parametrize("sizes,num_global,num_matches,l2_all", [
    ((4, 4), 2, (20, 4), True),          # CIFAR's 4 x 4 maps: 20 clamps to all 16
    ((3, 3, 2), 2, (5, 2), True),        # a local crop with a smaller map
    ((3, 3, 2, 2), 2, (4, 3), False),    # feature matches limited too
    ((3, 3, 3), 3, (2, 9), True),        # three global views
])
def test_vicregl_equals_the_authors_code_term_by_term(sizes, num_global, num_matches, l2_all):
    z, maps, grids = _inputs(sizes=sizes)
    coeffs = (25.0, 25.0, 1.0)
    for x in z + maps:
        x.requires_grad_(True)
    ours = vicregl_loss(z, maps, grids, num_global, 0.75, *coeffs, num_matches, l2_all)
    ref = naive_vicregl(z, maps, grids, num_global, 0.75, coeffs, num_matches, l2_all)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    g_ours = torch.autograd.grad(ours, z + maps)
    g_ref = torch.autograd.grad(ref, z + maps)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_alpha_one_is_vicreg_with_the_covariance_averaged_over_the_views():
    """The global term alone: VICReg's invariance and variance, and the covariance of each
    view averaged over the two (VICReg sums them: lightly's VICRegLLoss halves nu)."""
    z, maps, grids = _inputs(sizes=(2, 2))
    ours = vicregl_loss(z, maps, grids, alpha=1.0)
    assert ours.item() == pytest.approx(vicreg(z[0], z[1], 25.0, 25.0, 0.5).item(), rel=1e-12)


def test_local_loss_of_identical_views_is_only_the_regularisers():
    """Two views with the same maps and the same grid: every position matches itself, both
    ways, so the invariance is 0 and, with every position kept, the local loss is
    2 x (var + cov) of the map (feature matching plus location matching)."""
    z, maps, grids = _inputs(sizes=(3, 3))
    maps[1], grids[1], z[1] = maps[0].clone(), grids[0].clone(), z[0].clone()
    local = vicregl_loss(z, maps, grids, alpha=0.0, sim_coeff=1.0, std_coeff=0.0, cov_coeff=0.0)
    assert local.item() == pytest.approx(0.0, abs=1e-12)
    expected = 2 * (25 * naive_var(maps[0]) + naive_cov(maps[0]))
    full = vicregl_loss(z, maps, grids, alpha=0.0, num_matches=(9, 9))
    assert full.item() == pytest.approx(expected.item(), rel=1e-10)


# ---------------------------------------------------------------------- the pieces, by hand

def test_nearest_matches_keeps_the_closest_in_map_order_and_breaks_ties_low():
    inputs = torch.arange(4.0).view(1, 4, 1)             # positions 0..3, feature = index
    candidates = 10 + torch.arange(3.0).view(1, 3, 1)
    dist = torch.tensor([[[5.0, 1.0, 1.0],              # p0 -> q1 (tie with q2: the lower)
                          [0.5, 2.0, 3.0],              # p1 -> q0 at 0.5
                          [4.0, 4.0, 0.2],              # p2 -> q2 at 0.2
                          [0.5, 9.0, 9.0]]])            # p3 -> q0 at 0.5 (tie with p1)
    a, b = nearest_matches(inputs, candidates, dist, 2)
    # closest: p2 (0.2), then p1 / p3 tied at 0.5: p1; kept in map order p1, p2
    assert a.flatten().tolist() == [1.0, 2.0] and b.flatten().tolist() == [10.0, 12.0]
    a, b = nearest_matches(inputs, candidates, dist, None)
    assert a.flatten().tolist() == [0, 1, 2, 3] and b.flatten().tolist() == [11, 10, 12, 10]
    assert nearest_matches(inputs, candidates, dist, 99)[0].shape == (1, 4, 1)


def test_location_grid_is_the_centre_of_each_cell_of_the_crop_box():
    box = torch.tensor([[0, 0, 32, 32], [4, 8, 8, 16]])
    flip = torch.tensor([False, True])
    g = location_grid(box, flip, 4, 4)
    assert g.shape == (2, 16, 2)
    assert g[0, :4, 1].tolist() == [4.0, 12.0, 20.0, 28.0]     # first row: its columns
    assert g[0, ::4, 0].tolist() == [4.0, 12.0, 20.0, 28.0]    # first column: its rows
    assert g[1, 0].tolist() == [5.0, 10.0]                     # top 4 + 8/8, left 8 + 16/8
    assert g[1, 15].tolist() == [11.0, 22.0]
    # the authors ignore the flip (--no-flip-grid 1); flip_grid mirrors the columns
    mirrored = location_grid(box, flip, 4, 4, flip_grid=True)
    assert torch.equal(mirrored[0], g[0])
    assert mirrored[1, 0].tolist() == [5.0, 22.0] and mirrored[1, 3].tolist() == [5.0, 10.0]


def test_location_matching_pairs_the_same_place_of_the_image():
    """A view and its half-size crop of the top-left quarter: each of the small view's
    positions lies inside a cell of the large one, and location matching pairs them so."""
    big = location_grid(torch.tensor([[0, 0, 16, 16]]), torch.tensor([False]), 4, 4)
    small = location_grid(torch.tensor([[0, 0, 8, 8]]), torch.tensor([False]), 2, 2)
    ids = torch.arange(16.0).view(1, 16, 1)
    a, b = nearest_matches(torch.arange(4.0).view(1, 4, 1), ids,
                           (small[:, :, None] - big[:, None]).pow(2).sum(-1), None)
    # the small view's 2 x 2 cells are the big view's cells 0, 1, 4, 5
    assert b.flatten().tolist() == [0.0, 1.0, 4.0, 5.0]
    assert math.isclose(small[0, 3, 0].item(), 6.0)


@pytest.mark.parametrize("override, expected", [
    ("dataset.pipeline=torchvision", "dataset.pipeline=torchvision is not allowed: VICRegL "
                                     "needs each view's crop box"),
    ("dataset=spirograph", "dataset=spirograph is not allowed: VICRegL locates"),
])
def test_a_pipeline_without_crop_boxes_is_refused_before_training(override, expected):
    from sslcifar.errors import UserError
    from sslcifar.validate import validate_config

    from .test_config import compose_cfg
    with pytest.raises(UserError, match=expected):
        validate_config(compose_cfg(overrides=["method=vicregl", override]))
