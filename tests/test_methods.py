"""Each method as an nn.Module: MoCo's key encoder and queue, and that every
method's loss falls when it trains on a fixed tiny batch."""
import copy

import pytest
import torch

from sslcifar.data.batch import Batch
from sslcifar.methods import MoCo, build_method
from sslcifar.methods.ema import update_targets
from sslcifar.models import SplitBatchNorm2d, build_backbone, projection_mlp, split_batchnorm
from sslcifar.schedule import Now, Schedules
from sslcifar.step import train_step

from .test_config import compose_cfg


def _batch(views):
    b = views[0].shape[0]
    return Batch(views, torch.arange(b), torch.zeros(b, dtype=torch.long))


def tiny_moco(K=10, symmetric=False):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 4, "cifar", 16)
    proj = projection_mlp(backbone.num_features, None, 8, 2, bn=False)
    return MoCo(backbone, proj, queue_size=K, temperature=0.2, symmetric=symmetric,
                shuffle_bn=True)


def test_key_encoder_gets_no_gradient_and_moves_by_the_ema_rule_before_the_keys():
    """The loop's step (sslcifar.step.train_step): MoCo's key encoder moves by m = 0.9 before
    the forward, so this step's keys come from the updated encoder (MoCo's builder)."""
    model = tiny_moco()
    x = torch.randn(4, 3, 16, 16)
    q_before = copy.deepcopy(list(model.backbone.parameters()) + list(model.projector.parameters()))
    k_before = copy.deepcopy(list(model.backbone_k.parameters()) + list(model.projector_k.parameters()))
    # make the query encoder differ from the key encoder first
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    q_now = [p.detach().clone() for p in list(model.backbone.parameters()) + list(model.projector.parameters())]
    keys_seen = []
    model.projector_k.register_forward_hook(lambda m, i, o: keys_seen.append(
        [p.detach().clone() for p in model.backbone_k.parameters()]))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    train_step(model, model, opt, _batch([x, x.flip(-1)]), Now(0, 0, {"momentum": 0.9}))
    for p in list(model.backbone_k.parameters()) + list(model.projector_k.parameters()):
        assert p.grad is None and not p.requires_grad
    k_after = list(model.backbone_k.parameters()) + list(model.projector_k.parameters())
    for kb, qn, ka in zip(k_before, q_now, k_after):
        torch.testing.assert_close(ka, 0.9 * kb + 0.1 * qn)
    for seen, ka in zip(keys_seen[0], model.backbone_k.parameters()):    # keys: after the EMA
        assert torch.equal(seen, ka)
    assert any(p.grad is not None for p in model.backbone.parameters())
    del q_before


def test_queue_holds_the_latest_keys_and_wraps_around():
    K, b = 10, 4
    model = tiny_moco(K=K)
    initial = model.queue.clone()
    written = []                        # (row, key) in enqueue order, from an independent model
    for step in range(4):               # 16 keys through a queue of 10: wraps around once
        x = torch.randn(b, 3, 16, 16)
        queue_before = model.queue.clone()
        with torch.no_grad():
            out = model(_batch([x, x]))
        # keys are the normalised key-encoder outputs of the second view (the loop updates
        # the key encoder before the forward; here it is not updated)
        with torch.no_grad():
            model.backbone_k.train()
            k = torch.nn.functional.normalize(model.projector_k(model.backbone_k(x)), dim=1)
        for i in range(b):
            written.append(((step * b + i) % K, k[i]))
        assert torch.isfinite(out["loss"])
        changed = (model.queue != queue_before).any(1).nonzero().flatten().tolist()
        assert sorted(changed) == sorted(((step * b + i) % K) for i in range(b))
    assert int(model.queue_ptr) == (4 * b) % K
    expected = initial.clone()
    for row, key in written:
        expected[row] = key
    torch.testing.assert_close(model.queue, expected, atol=1e-5, rtol=1e-5)


def test_moco_loss_uses_the_queue_before_this_batch_is_enqueued():
    model = tiny_moco(K=8)
    x = torch.randn(4, 3, 16, 16)
    queue = model.queue.clone()
    with torch.no_grad():
        copy_model = copy.deepcopy(model)
        out = model(_batch([x, x.flip(-1)]))
        # recompute with the old queue through the pure loss
        from sslcifar.losses import moco_infonce
        q = torch.nn.functional.normalize(copy_model.projector(copy_model.backbone(x)), dim=1)
        k = torch.nn.functional.normalize(copy_model.projector_k(copy_model.backbone_k(x.flip(-1))), dim=1)
        torch.testing.assert_close(out["loss"], moco_infonce(q, k, queue, 0.2))


def test_one_process_key_shuffle_keeps_key_order_and_changes_bn_groups():
    """With one process, shuffle_bn encodes the keys in a random order and puts them
    back: in eval mode (per-sample BN) the keys equal those of the unshuffled batch; in
    training with split BatchNorm each key is normalised with a different group of
    images than its query would be, so the keys differ; with plain BN they do not."""
    x = torch.randn(8, 3, 16, 16)

    def keys(bn_splits, train, shuffle):
        torch.manual_seed(0)
        backbone = build_backbone("resnet18", 4, "cifar", 16)
        if bn_splits > 1:
            split_batchnorm(backbone, bn_splits)
        proj = projection_mlp(backbone.num_features, None, 8, 2, bn=False)
        model = MoCo(backbone, proj, 16, 0.2, symmetric=False, shuffle_bn=shuffle)
        model.train(train)
        torch.manual_seed(1)
        return model._keys(x)

    torch.testing.assert_close(keys(2, False, True), keys(2, False, False))
    assert not torch.allclose(keys(2, True, True), keys(2, True, False), atol=1e-4)
    torch.testing.assert_close(keys(1, True, True), keys(1, True, False), atol=1e-5, rtol=1e-4)


def test_moco_config_uses_the_cifar_demos_split_batchnorm():
    cfg = compose_cfg("moco", ["backbone.width=4", "dataset.size=16"])
    assert cfg.method.bn_splits == 8 and cfg.method.shuffle_bn
    model = build_method(cfg, num_train=16, num_classes=4)
    splits = {m.num_splits for m in model.modules() if isinstance(m, SplitBatchNorm2d)}
    assert splits == {8}
    assert any(isinstance(m, SplitBatchNorm2d) for m in model.backbone_k.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.backbone.modules())


def test_symmetric_moco_sums_both_directions_like_the_moco_cifar_demo():
    """loss = loss_12 + loss_21 (not their mean); both use the queue before this batch's
    keys, which are enqueued as [k1, k2]."""
    model = tiny_moco(K=12, symmetric=True).eval()   # eval: running BN, shuffle inert
    ref = copy.deepcopy(model)
    torch.manual_seed(2)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    update_targets(model, 0.9)              # what the loop does before MoCo's forward
    loss = model(_batch([x1, x2]))["loss"]

    def naive_infonce(q, k, queue, t=0.2):
        total = 0.0
        for i in range(q.shape[0]):
            logits = torch.cat([(q[i] * k[i]).sum().view(1), queue @ q[i]]) / t
            total = total - torch.log_softmax(logits, 0)[0]
        return total / q.shape[0]

    with torch.no_grad():
        queue = ref.queue.clone()
        for a, b in ((ref.backbone, ref.backbone_k), (ref.projector, ref.projector_k)):
            for pq, pk in zip(a.parameters(), b.parameters()):
                pk.copy_(0.9 * pk + 0.1 * pq)                   # the EMA step, once per batch
        enc = lambda bb, pr, x: torch.nn.functional.normalize(pr(bb(x)), dim=1)  # noqa: E731
        q1, q2 = enc(ref.backbone, ref.projector, x1), enc(ref.backbone, ref.projector, x2)
        k1, k2 = enc(ref.backbone_k, ref.projector_k, x1), enc(ref.backbone_k, ref.projector_k, x2)
        expected = naive_infonce(q1, k2, queue) + naive_infonce(q2, k1, queue)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[:8], torch.cat([k1, k2]), rtol=1e-5, atol=1e-6)


def test_encode_runs_the_backbone_once_per_run_of_one_size():
    cfg = compose_cfg(overrides=["backbone.width=4", "augment.small_crops=3", "augment.small_size=16"])
    torch.manual_seed(0)
    model = build_method(cfg, num_train=8, num_classes=2)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)] + \
            [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    h = model.encode(views)
    assert calls == [(8, 3, 32, 32), (12, 3, 16, 16)] and h.shape == (20, model.backbone.num_features)
    model.eval()            # per-sample results: the same as one view at a time
    torch.testing.assert_close(model.encode(views), torch.cat([model.backbone(v) for v in views]))


def test_simclr_with_three_views_and_with_small_crops_trains_one_step():
    for extra in (["augment.groups.0.count=3"], ["augment.small_crops=2", "augment.small_size=16"]):
        cfg = compose_cfg(overrides=["backbone.width=4", *extra])
        torch.manual_seed(0)
        model = build_method(cfg, num_train=8, num_classes=2)
        g = torch.Generator().manual_seed(0)
        sizes = [32, 32, 32] if len(extra) == 1 else [32, 32, 16, 16]
        views = [torch.randn(4, 3, s, s, generator=g) for s in sizes]
        out = model(_batch(views))
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and out["features"].shape[0] == 4
        assert model.backbone.conv1.weight.grad.abs().sum() > 0


def _tiny(method, *extra):
    cfg = compose_cfg(overrides=[f"method={method}", "backbone.width=4", "dataset.size=16", *extra])
    torch.manual_seed(0)
    return build_method(cfg, num_train=8, num_classes=2)


def test_targets_get_no_gradient_and_follow_the_cosine_momentum():
    """BYOL: the target moves after the optimizer step, by tau(step) = 1 - (1 - 0.99)(cos(pi
    step / total) + 1) / 2 (solo-learn's indexing); MoCo v3: before the forward, so the keys
    of a step come from the encoder updated by that step's momentum."""
    import math
    model = _tiny("byol")
    cfg = compose_cfg(overrides=["method=byol"])
    taus = Schedules(model.schedules(cfg, 100, 10), 10)
    tau = taus.at(25)["momentum"]
    assert tau == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert taus.at(0)["momentum"] == 0.99 and taus.at(50)["momentum"] == pytest.approx(0.995)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():                        # the online network differs from the target
        for p in model.backbone.parameters():
            p.add_(0.05)
    before = [p.clone() for p in model.backbone_t.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_step(model, model, opt, _batch([x, x.flip(-1)]), taus.at(25))
    assert all(p.grad is None for p in model.backbone_t.parameters())
    assert all(p.grad is None for p in model.projector_t.parameters())
    online = list(model.backbone.parameters())         # after the optimizer step
    for t, b, o in zip(model.backbone_t.parameters(), before, online):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o)
    v3 = _tiny("mocov3")
    assert v3.ema_timing == "before_forward" and model.ema_timing == "after_step"
    m = Schedules(v3.schedules(compose_cfg(overrides=["method=mocov3"]), 100, 10), 10)
    assert m.at(50)["momentum"] == pytest.approx(0.995)


def test_simsiams_predictor_keeps_the_base_lr_in_the_loop():
    """The predictor's group is marked fixed_lr: the loop gives it the base lr at every step
    while the encoder follows the schedule."""
    model = _tiny("simsiam")
    groups = model.param_groups()
    assert [g.get("fixed_lr", False) for g in groups] == [False, True]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.predictor.parameters()}
    n = sum(len(g["params"]) for g in groups)
    assert n == len([p for p in model.parameters() if p.requires_grad])


def test_heads_are_the_recipes_architectures():
    from torch import nn
    byol = _tiny("byol")
    assert [type(m) for m in byol.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (byol.projector[0].out_features, byol.projector[3].out_features) == (4096, 256)
    assert (byol.predictor[0].in_features, byol.predictor[0].out_features) == (256, 4096)
    siam = _tiny("simsiam")
    assert len(siam.projector) == 8 and not siam.projector[-1].affine         # 3 layers, BN last
    assert siam.predictor[0].out_features == 512
    v3 = _tiny("mocov3")
    assert isinstance(v3.projector[-1], nn.BatchNorm1d) and not v3.projector[-1].affine
    assert v3.predictor[-1].bias is None and isinstance(v3.predictor[-1], nn.Linear)
    bt = _tiny("barlow_twins")
    assert [m.out_features for m in bt.projector if isinstance(m, nn.Linear)] == [2048, 2048, 2048]


def test_dino_teacher_sees_the_global_crops_and_the_last_layer_waits_an_epoch():
    overrides = ["method.clip_grad=0.5", "loss.warmup_teacher_temp_epochs=3"]
    model = _tiny("dino", *overrides)
    cfg = compose_cfg(overrides=["method=dino", *overrides])
    time = Schedules(model.schedules(cfg, 100, 10), 10)
    calls = []
    model.backbone_t.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)] + \
            [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    temps = [time.at(step)["teacher_temp"] for step in (0, 15, 25, 40)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])       # linear over 3 epochs
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    grads = {}
    model.head.mlp[0].weight.register_hook(lambda g: grads.setdefault("hooked", g))
    out = train_step(model, model, opt, _batch(views), time.at(9))   # still epoch 0
    assert calls == [(8, 3, 16, 16)]                          # the two global crops only
    assert out["teacher_temp"].item() == pytest.approx(0.04)
    assert all(p.grad is None for p in model.head.last_layer.parameters())
    # clipped to 0.5, to float32 rounding of a norm over 2048 x 2048 entries
    assert all(p.grad is None or p.grad.norm() <= 0.5 * (1 + 1e-4) for p in model.parameters())
    assert model.backbone.conv1.weight.grad is not None
    assert not model.head.last_layer.weight_g.requires_grad      # norm_last_layer
    train_step(model, model, opt, _batch(views), time.at(10))       # epoch 1: it learns
    assert model.head.last_layer.weight_v.grad is not None


def test_swav_prototypes_are_unit_vectors_frozen_first_and_the_queue_fills_then_is_used():
    overrides = ["method.queue_size=8", "method.queue_start_epoch=0",
                 "method.freeze_prototypes_epochs=1", "batch_size=4"]
    model = _tiny("swav", *overrides)
    time = Schedules(model.schedules(compose_cfg(overrides=["method=swav", *overrides]), 100, 10), 10)
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.before_step(time.at(0))
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(3000))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    used = []
    for step in range(3):
        model.before_step(time.at(step))
        out = model(Batch(views, torch.arange(4), torch.zeros(4, dtype=torch.long), now=time.at(step)))
        used.append(out["queue_used"].item())
    assert used == [0.0, 0.0, 1.0] and int(model.queue_filled) == 8
    out["loss"].backward()
    model.after_backward(time.at(2))
    assert model.prototypes.weight.grad is None               # frozen in the first epoch
    out = model(Batch(views, torch.arange(4), torch.zeros(4, dtype=torch.long), now=time.at(12)))
    out["loss"].backward()
    model.after_backward(time.at(12))                         # epoch 1: they learn
    assert model.prototypes.weight.grad is not None

