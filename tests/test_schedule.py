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
