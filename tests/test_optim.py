"""LARS against a naive per-tensor loop, the other optimizers' settings, lr scaling."""
import math

import pytest
import torch

from sslcifar.optim import LARS, build_optimizer, scaled_lr


def naive_lars(params, grads_per_step, lr, m, wd, eta):
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.dim() > 1:
                d = g + wd * p
                pn, dn = p.norm().item(), d.norm().item()
                d = d * (eta * pn / dn if pn > 0 and dn > 0 else 1.0)
            else:
                d = g
            mus[i] = m * mus[i] + d
            params[i] = p - lr * mus[i]
    return params


def test_lars_matches_a_naive_loop_over_several_steps():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (2, 3, 3, 3), (4,), ()]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    init.append(torch.zeros(3, 3, dtype=torch.float64))          # zero norm: trust ratio 1
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in init] for _ in range(4)]
    params = [p.clone().requires_grad_() for p in init]
    opt = LARS(params, lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.01)
    for step in grads:
        for p, gr in zip(params, step):
            p.grad = gr.clone()
        opt.step()
    for ours, ref in zip(params, naive_lars(init, grads, 0.5, 0.9, 1e-2, 0.01)):
        torch.testing.assert_close(ours.detach(), ref, atol=1e-12, rtol=1e-12)


def naive_solo_lars(params, grads_per_step, lr, m, wd, eta, clip, every_param=False, eps=1e-8):
    """solo-learn's LARS (solo/utils/lars.py) / torchlars, one tensor at a time in Python floats:
    ratio eta*|p| / (|g| + wd*|p| + eps), clipped to lr when asked; biases excluded unless
    every_param."""
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            pn, gn = p.norm().item(), g.norm().item()
            if (p.dim() > 1 or every_param) and pn > 0 and gn > 0:
                r = eta * pn / (gn + wd * pn + eps)
                if clip:
                    r = min(r / lr, 1.0)
                d = (g + wd * p) * r
            else:
                d = g + wd * p if every_param else g        # torchlars: ratio 1, wd kept
            mus[i] = m * mus[i] + d
            params[i] = p - lr * mus[i]
    return params


@pytest.mark.parametrize("variant, clip", [("solo", True), ("solo", False), ("torchlars", False)])
def test_solo_and_torchlars_variants_match_a_naive_loop(variant, clip):
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(4, 3), (2, 3, 3, 3), (4,)]]
    init.append(torch.zeros(3, 3, dtype=torch.float64))          # zero norm: the plain gradient
    init.append(torch.randn(2, 2, generator=g, dtype=torch.float64))   # a zero gradient below
    init[0] *= 50                       # a large weight: its unclipped ratio exceeds lr
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in init] for _ in range(4)]
    for step in grads:
        step[-1].zero_()
    params = [p.clone().requires_grad_() for p in init]
    opt = LARS(params, lr=0.3, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02,
               variant=variant, clip_lr=clip)
    for step in grads:
        for p, gr in zip(params, step):
            p.grad = gr.clone()
        opt.step()
    ref = naive_solo_lars(init, grads, 0.3, 0.9, 1e-4, 0.02, clip, every_param=variant == "torchlars")
    for ours, r in zip(params, ref):
        torch.testing.assert_close(ours.detach(), r, atol=1e-12, rtol=1e-12)
    if variant == "solo":           # the bias kept plain momentum SGD: no wd, no ratio
        bias, mu = init[2].clone(), torch.zeros(4, dtype=torch.float64)
        for k in range(4):
            mu = 0.9 * mu + grads[k][2]
            bias = bias - 0.3 * mu
        torch.testing.assert_close(params[2].detach(), bias, atol=1e-12, rtol=1e-12)


def test_lars_biases_and_bn_get_plain_momentum_sgd():
    w = torch.ones(5, requires_grad=True)
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    w.grad = torch.full((5,), 2.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((5,), 1 - 0.1 * 2.0))


def test_lars_param_groups_have_their_own_lr():
    a, b = torch.ones(2, 2, requires_grad=True), torch.ones(2, 2, requires_grad=True)
    opt = LARS([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.0}], lr=0.1)
    a.grad, b.grad = torch.ones(2, 2), torch.ones(2, 2)
    opt.step()
    assert not torch.equal(a, torch.ones(2, 2)) and torch.equal(b, torch.ones(2, 2))


def test_build_optimizer_settings():
    from .test_config import compose_cfg
    p = [torch.nn.Parameter(torch.ones(2))]
    sgd = build_optimizer(p, compose_cfg(overrides=["optimizer=sgd"]).optimizer, 0.6)
    assert isinstance(sgd, torch.optim.SGD)
    gr = sgd.param_groups[0]
    assert (gr["lr"], gr["weight_decay"], gr["momentum"], gr["nesterov"]) == (0.6, 1e-6, 0.9, True)
    lars = build_optimizer(p, compose_cfg(overrides=["optimizer=lars"]).optimizer, 8.0)
    assert isinstance(lars, LARS) and lars.param_groups[0]["trust_coefficient"] == 0.001
    assert lars.param_groups[0]["variant"] == "sogclr"
    solo = build_optimizer(p, compose_cfg(overrides=["optimizer=lars_solo"]).optimizer, 0.3)
    assert (solo.param_groups[0]["variant"], solo.param_groups[0]["trust_coefficient"],
            solo.param_groups[0]["clip_lr"]) == ("solo", 0.02, True)
    o = compose_cfg(overrides=["optimizer=adamw", "optimizer.betas=[0.9,0.95]"]).optimizer
    adamw = build_optimizer(p, o, 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.95)
    o = compose_cfg(overrides=["optimizer=adam", "optimizer.weight_decay=1e-6"]).optimizer
    adam = build_optimizer(p, o, 2e-3)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 1e-6
    o.name = "rmsprop"
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(p, o, 1.0)


def test_scaled_lr_rules():
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(1.0, 64, "sqrt") == pytest.approx(8.0)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(0.075 * math.sqrt(4096))
    assert scaled_lr(0.5, 1024, "none") == 0.5
    with pytest.raises(ValueError):
        scaled_lr(1.0, 64, "log")
