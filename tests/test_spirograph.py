"""The Spirograph renderer against the formula of Foster et al. (ICLR 2021), written
out independently here pixel by pixel, and its data set."""
import math

import pytest
import torch

from sslcifar.data import spirograph


def naive_render(d, n):
    """One image, loops over pixels and curve points, straight from the spec."""
    m, b, sigma, fr = d.tolist()
    h, br, fg, bg, fb, bb = n.tolist()
    ts = [2 * math.pi * k / 39 for k in range(40)]
    xs = [(m - h) * math.cos(t) + h * math.cos(t * (m - h) / b) for t in ts]
    ys = [(m - h) * math.sin(t) - h * math.sin(t * (m - h) / b) for t in ts]
    g = [-6 + 12 * i / 31 for i in range(32)]
    v = torch.zeros(32, 32, dtype=torch.float64)
    for i in range(32):
        for j in range(32):
            v[i, j] = sum(math.exp(-((g[i] - x) ** 2 + (g[j] - y) ** 2) / sigma)
                          for x, y in zip(xs, ys)) / 40
    v = v / (v.max(dim=1, keepdim=True).values + 1e-8)
    fore, back = (fr, fg, fb), (br, bg, bb)
    return torch.stack([v * fore[c] + (1 - v) * back[c] for c in range(3)])


def test_render_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    d = spirograph.sample_data_params(3, g).double()
    n = spirograph.sample_nuisance_params(3, g).double()
    out = spirograph.render(d, n)
    assert out.shape == (3, 3, 32, 32)
    for k in range(3):
        torch.testing.assert_close(out[k], naive_render(d[k], n[k]), atol=1e-10, rtol=1e-8)


def test_render_is_differentiable_in_both_parameter_sets():
    g = torch.Generator().manual_seed(1)
    d = spirograph.sample_data_params(2, g).double().requires_grad_()
    n = spirograph.sample_nuisance_params(2, g).double().requires_grad_()
    assert torch.autograd.gradcheck(spirograph.render, (d, n), eps=1e-6, atol=1e-5)


def test_parameter_ranges():
    g = torch.Generator().manual_seed(2)
    d = spirograph.sample_data_params(20000, g)
    n = spirograph.sample_nuisance_params(20000, g)
    lo, hi = torch.tensor(spirograph.DATA_LOW), torch.tensor(spirograph.DATA_HIGH)
    assert (d >= lo).all() and (d <= hi).all()
    torch.testing.assert_close(d.mean(0), (lo + hi) / 2, atol=0.02, rtol=0.02)
    assert spirograph.DATA_LOW == (2.0, 0.1, 0.25, 0.4) and spirograph.DATA_HIGH == (5.0, 1.1, 1.0, 1.0)
    assert spirograph.NUISANCE_LOW == (0.5, 0.0, 0.4, 0.0, 0.4, 0.0)
    assert spirograph.NUISANCE_HIGH == (2.5, 0.6, 1.0, 0.6, 1.0, 0.6)
    nlo, nhi = torch.tensor(spirograph.NUISANCE_LOW), torch.tensor(spirograph.NUISANCE_HIGH)
    assert (n >= nlo).all() and (n <= nhi).all()
    img = spirograph.render(d[:64], n[:64])
    assert img.min() >= 0 and img.max() <= 1


def test_views_share_generative_parameters_but_not_nuisance():
    from sslcifar.data.sources import SpirographSource
    src = SpirographSource(16, seed=0, device=torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3)
    g = torch.Generator().manual_seed(0)
    (v1, v2), params, replay, nuisance = src.views(torch.arange(4), g)
    assert nuisance.key == "nuisance" and nuisance.draw(0, 5, 4, g).shape == (5, 4, 6)
    assert not torch.equal(v1, v2)
    # each view hands back its nuisance parameters, and is re-rendered from them
    assert [p["nuisance"].shape for p in params] == [(4, 6), (4, 6)]
    assert torch.equal(replay(1, params[1]), v2)
    torch.testing.assert_close(src.plain(torch.arange(4)), src.plain(torch.arange(4)))
    other = SpirographSource(16, seed=1, device=torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3)
    assert not torch.equal(src.params, other.params)       # train and test are different draws


def test_subset_keeps_the_first_samples_of_the_full_set():
    from sslcifar.data.sources import build_source
    from sslcifar.errors import UserError
    from .test_config import compose_cfg
    base = ["dataset=spirograph", "dataset.num_train=40", "dataset.num_test=8"]
    full = build_source(compose_cfg(overrides=base), "train", torch.device("cpu"))
    sub = build_source(compose_cfg(overrides=[*base, "dataset.subset=10"]), "train",
                       torch.device("cpu"))
    assert len(full) == 40 and len(sub) == 10
    assert torch.equal(sub.targets, full.targets[:10])
    assert torch.equal(sub.plain(torch.arange(10)), full.plain(torch.arange(10)))
    with pytest.raises(UserError, match="dataset.subset=41 is larger"):
        build_source(compose_cfg(overrides=[*base, "dataset.subset=41"]), "train", torch.device("cpu"))
