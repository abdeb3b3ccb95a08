"""Time: the one per-step array builder against its closed forms, and each schedule the
loop builds with it against the formula of the code it follows."""
import math

import pytest
import torch

from sslcifar.schedule import Now, Schedules, cosine_scheduler, per_epoch


def test_cosine_without_warmup_closed_form():
    lrs = cosine_scheduler(0.6, 1e-3, 101)
    assert len(lrs) == 101 and lrs.dtype == torch.float64
    for s in (0, 25, 50, 100):
        assert lrs[s].item() == pytest.approx(1e-3 + (0.6 - 1e-3) * 0.5 * (1 + math.cos(math.pi * s / 100)))
    assert lrs[0].item() == pytest.approx(0.6) and lrs[-1].item() == pytest.approx(1e-3)
    assert (lrs[1:] <= lrs[:-1]).all()


def test_warmup_then_cosine():
    lrs = cosine_scheduler(1.0, 0.0, 30, warmup_steps=10)
    assert lrs[0].item() == pytest.approx(0.1) and lrs[9].item() == pytest.approx(1.0)
    assert (lrs[1:10] > lrs[:9]).all()
    assert lrs[10].item() == pytest.approx(1.0) and lrs[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert (lrs[11:] <= lrs[10:-1]).all()


def test_warmup_from_a_start_value_reaches_its_values_on_the_steps_it_says():
    """solo-learn's LinearWarmupCosineAnnealingLR (3e-5 at step 0, the base at step W-1) and
    DINO's teacher temperature (a warm-up, then base == final: constant)."""
    v = cosine_scheduler(0.07, 0.07, 10, warmup_steps=4, warmup_start=0.04)
    assert torch.allclose(v[:4], torch.tensor([0.04, 0.05, 0.06, 0.07], dtype=torch.float64))
    assert (v[4:] == 0.07).all()
    lr = cosine_scheduler(0.3, 0.0, 100, warmup_steps=10, warmup_start=3e-5)
    assert lr[0].item() == 3e-5 and lr[9].item() == pytest.approx(0.3) and lr[10].item() == 0.3


def test_constant_and_edge_cases():
    assert torch.equal(cosine_scheduler(0.5, 0.5, 5), torch.full((5,), 0.5, dtype=torch.float64))
    assert cosine_scheduler(0.5, 0.1, 1)[0].item() == pytest.approx(0.5)
    assert len(cosine_scheduler(0.5, 0.0, 3, warmup_steps=10)) == 3       # all warm-up
    assert len(cosine_scheduler(0.5, 0.0, 0)) == 0


def test_the_weight_decay_cosine_reaches_its_final_value():
    """DINO's weight decay: 0.04 -> 0.4 over the run, rising."""
    w = cosine_scheduler(0.04, 0.4, 11)
    assert abs(w[0] - 0.04) < 1e-15 and abs(w[-1] - 0.4) < 1e-15 and abs(w[5] - 0.22) < 1e-12
    assert (w.diff() > 0).all()


def test_the_ema_momentum_is_byols_formula():
    """tau_s = 1 - (1 - base)(cos(pi s / total) + 1) / 2 for s < total (BYOL sec. 3.2,
    solo-learn's cosine_scheduler): one step past the run it would reach final."""
    from sslcifar.methods.ema import cosine_momentum
    from .test_config import compose_cfg
    cfg = compose_cfg(overrides=["method=byol", "method.base_momentum=0.9"])
    tau = cosine_momentum(cfg, 100)
    assert len(tau) == 100 and tau[0].item() == 0.9
    for s in (1, 37, 50, 99):
        assert tau[s].item() == pytest.approx(1 - (1 - 0.9) * (math.cos(math.pi * s / 100) + 1) / 2,
                                              rel=1e-15)


def test_per_epoch_values_repeat_over_each_epochs_steps():
    temps = per_epoch(cosine_scheduler(0.07, 0.07, 5, warmup_steps=3, warmup_start=0.04), 4)
    assert temps.tolist() == pytest.approx([0.04] * 4 + [0.055] * 4 + [0.07] * 12)


def test_schedules_hand_each_step_its_values():
    s = Schedules({"lr": cosine_scheduler(1.0, 0.0, 6), "m": torch.arange(6.0)}, steps_per_epoch=4)
    now = s.at(5)
    assert isinstance(now, Now) and (now.step, now.epoch) == (5, 1)
    assert now["m"] == 5.0 and now["lr"] == s["lr"][5] == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        Schedules({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)


def test_a_warm_up_that_does_not_fit_the_run_is_named():
    """Every solo-learn, SupContrast and SogCLR preset warms up for 10 epochs: with
    epochs=10 the run is all ramp. Their full length, or the warm-up shortened with the
    run, says nothing."""
    from sslcifar.validate import schedule_warnings
    from .test_config import compose_cfg
    for preset in ("byol_cifar10", "supcon_cifar10", "sogclr_cifar10"):
        short = schedule_warnings(compose_cfg(overrides=[f"experiment={preset}", "epochs=10"]))
        assert len(short) == 1 and short[0].startswith(
            "scheduler.warmup_epochs=10 is half the run or more (epochs=10): the learning rate "
            "ends at or near its peak"), short
        assert "scheduler.warmup_epochs=0.1" in short[0]
        assert schedule_warnings(compose_cfg(overrides=[f"experiment={preset}"])) == []
        assert schedule_warnings(compose_cfg(overrides=[f"experiment={preset}", "epochs=10",
                                                        "scheduler.warmup_epochs=0.1"])) == []
