"""The per-iteration schedule against its closed form."""
import math

import pytest
import torch

from sslcifar.schedule import lr_schedule


def test_cosine_without_warmup_closed_form():
    lrs = lr_schedule(0.6, 101, 0, 1e-3)
    assert len(lrs) == 101 and lrs.dtype == torch.float64
    for s in (0, 25, 50, 100):
        assert lrs[s].item() == pytest.approx(1e-3 + (0.6 - 1e-3) * 0.5 * (1 + math.cos(math.pi * s / 100)))
    assert lrs[0].item() == pytest.approx(0.6) and lrs[-1].item() == pytest.approx(1e-3)
    assert (lrs[1:] <= lrs[:-1]).all()


def test_warmup_then_cosine():
    lrs = lr_schedule(1.0, 30, warmup_steps=10, final_lr=0.0)
    assert lrs[0].item() == pytest.approx(0.1) and lrs[9].item() == pytest.approx(1.0)
    assert (lrs[1:10] > lrs[:9]).all()
    assert lrs[10].item() == pytest.approx(1.0) and lrs[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert (lrs[11:] <= lrs[10:-1]).all()


def test_constant_and_edge_cases():
    assert torch.equal(lr_schedule(0.5, 5, kind="constant"), torch.full((5,), 0.5, dtype=torch.float64))
    assert lr_schedule(0.5, 1, 0, 0.1)[0].item() == pytest.approx(0.5)
    assert len(lr_schedule(0.5, 3, warmup_steps=10)) == 3
    with pytest.raises(ValueError):
        lr_schedule(0.5, 5, kind="step")


def test_warmup_cosine_reaches_its_values_on_the_steps_it_says():
    from sslcifar.schedule import warmup_cosine
    v = warmup_cosine(0.07, 0.07, 10, warmup_steps=4, warmup_start=0.04)
    assert torch.allclose(v[:4], torch.tensor([0.04, 0.05, 0.06, 0.07], dtype=torch.float64))
    assert (v[4:] == 0.07).all()                               # warm-up then constant (DINO's T)
    w = warmup_cosine(0.04, 0.4, 11)
    assert abs(w[0] - 0.04) < 1e-15 and abs(w[-1] - 0.4) < 1e-15 and abs(w[5] - 0.22) < 1e-12
    assert (w.diff() > 0).all()


def test_cosine_momentum_is_byols_formula():
    import math
    from sslcifar.schedule import cosine_momentum
    assert cosine_momentum(0, 100, 0.99) == 0.99 and cosine_momentum(100, 100, 0.99) == 1.0
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    s, k = 37, 100
    assert cosine_momentum(s, k, 0.9) == pytest.approx(1 - (1 - 0.9) * (math.cos(math.pi * s / k) + 1) / 2)
