"""Each method as an nn.Module: MoCo's key encoder and queue, and that every
method's loss falls when it trains on a fixed tiny batch."""
import copy

import pytest
import torch

from sslcifar.data.batch import Batch
from sslcifar.methods import MoCo, build_method
from sslcifar.models import SplitBatchNorm2d, build_backbone, projection_mlp, split_batchnorm

from .test_config import compose_cfg


def _batch(views):
    b = views[0].shape[0]
    return Batch(views, torch.arange(b), torch.zeros(b, dtype=torch.long))


def tiny_moco(K=10, m=0.9, symmetric=False):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 4, "cifar", 16)
    proj = projection_mlp(backbone.num_features, None, 8, 2, bn=False)
    return MoCo(backbone, proj, queue_size=K, momentum=m, temperature=0.2,
                symmetric=symmetric, shuffle_bn=True)


def test_key_encoder_gets_no_gradient_and_moves_by_the_ema_rule():
    model = tiny_moco(m=0.9)
    x = torch.randn(4, 3, 16, 16)
    q_before = copy.deepcopy(list(model.backbone.parameters()) + list(model.projector.parameters()))
    k_before = copy.deepcopy(list(model.backbone_k.parameters()) + list(model.projector_k.parameters()))
    # make the query encoder differ from the key encoder first
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    q_now = [p.detach().clone() for p in list(model.backbone.parameters()) + list(model.projector.parameters())]
    out = model(_batch([x, x.flip(-1)]))
    out["loss"].backward()
    for p in list(model.backbone_k.parameters()) + list(model.projector_k.parameters()):
        assert p.grad is None and not p.requires_grad
    k_after = list(model.backbone_k.parameters()) + list(model.projector_k.parameters())
    for kb, qn, ka in zip(k_before, q_now, k_after):
        torch.testing.assert_close(ka, 0.9 * kb + 0.1 * qn)
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
        # keys are the normalised key-encoder outputs of the second view, computed
        # after this step's EMA update (the model's state now)
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
        copy_model._momentum_update_key_encoder()
        k = torch.nn.functional.normalize(copy_model.projector_k(copy_model.backbone_k(x.flip(-1))), dim=1)
        torch.testing.assert_close(out["loss"], moco_infonce(q, k, queue, 0.2))


@pytest.mark.parametrize("method", ["simclr", "moco", "sogclr", "supcon", "supervised", "byol",
                                    "simsiam", "barlow_twins", "vicreg", "mocov3", "dino", "swav"])
def test_loss_falls_on_a_fixed_tiny_batch(method):
    primary = "moco" if method == "moco" else "simclr"
    extra = {"moco": ["method.queue_size=64"],
             # DINO's targets move as its centre does (towards uniform: the loss rises to
             # log K); with the centre held at 0 the student can fit a fixed teacher
             "dino": ["batch_size=16", "loss.center_momentum=1.0"]}.get(method, ["batch_size=16"])
    cfg = compose_cfg(primary, [f"method={method}", "backbone.width=8", "dataset.size=16", *extra])
    torch.manual_seed(0)
    model = build_method(cfg, num_train=16, num_classes=4)
    # Barlow Twins sums over 2048^2 correlations (loss ~100): its recipe's LARS adapts the
    # step; plain SGD needs a smaller one
    lr = 0.002 if method == "barlow_twins" else 0.05
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    num_views = sum(group.count for group in cfg.augment.groups)
    views = [torch.randn(16, 3, 16, 16, generator=g) for _ in range(num_views)]
    views = [views[0] + 0.1 * torch.randn(16, 3, 16, 16, generator=g) for _ in views]
    batch = Batch(views, torch.arange(16), torch.arange(16) % 4)
    if method == "moco":                 # fill the queue with real keys first (random at start)
        with torch.no_grad():
            for _ in range(64 // 16):
                model(batch)
    losses = []
    for _ in range(12):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses
    assert out["features"].shape == (16, model.backbone.num_features)
    assert not out["features"].requires_grad


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
        model = MoCo(backbone, proj, 16, 0.9, 0.2, symmetric=False, shuffle_bn=shuffle)
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
    model = tiny_moco(K=12, m=0.9, symmetric=True).eval()   # eval: running BN, shuffle inert
    ref = copy.deepcopy(model)
    torch.manual_seed(2)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
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


def test_targets_get_no_gradient_and_follow_the_cosine_momentum_after_each_step():
    """BYOL: the target moves after the optimizer step, by tau(step) = 1 - (1 - 0.99)(cos(pi
    step / total) + 1) / 2 (solo-learn's indexing); MoCo v3: inside the forward, before the keys."""
    import math
    from sslcifar.schedule import cosine_momentum
    model = _tiny("byol")
    x = torch.randn(4, 3, 16, 16)
    out = model(_batch([x, x.flip(-1)]))
    out["loss"].backward()
    assert all(p.grad is None for p in model.backbone_t.parameters())
    assert all(p.grad is None for p in model.projector_t.parameters())
    with torch.no_grad():                        # an online step
        for p in model.backbone.parameters():
            p.add_(0.05)
    before = [p.clone() for p in model.backbone_t.parameters()]
    online = [p.clone() for p in model.backbone.parameters()]
    model.after_step(25, 100)
    tau = cosine_momentum(25, 100, 0.99)
    assert tau == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    for t, b, o in zip(model.backbone_t.parameters(), before, online):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o)
    v3 = _tiny("mocov3")
    v3.before_step(50, 100, 10)
    assert v3.m == pytest.approx(cosine_momentum(50, 100, 0.99))


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
    model = _tiny("dino", "method.clip_grad=0.5", "loss.warmup_teacher_temp_epochs=3")
    calls = []
    model.backbone_t.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)] + \
            [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    temps = []
    for step, epoch_len in ((0, 10), (15, 10), (25, 10), (40, 10)):
        model.before_step(step, 100, epoch_len)
        temps.append(model.teacher_temp)
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])       # linear over 3 epochs
    out = model(_batch(views))
    assert calls == [(8, 3, 16, 16)]                          # the two global crops only
    out["loss"].backward()
    model.after_backward(step=9, steps_per_epoch=10)           # still epoch 0
    assert all(p.grad is None for p in model.head.last_layer.parameters())
    assert all(p.grad is None or p.grad.norm() <= 0.5 * (1 + 1e-5) for p in model.parameters())
    assert model.backbone.conv1.weight.grad is not None
    assert not model.head.last_layer.weight_g.requires_grad      # norm_last_layer


def test_swav_prototypes_are_unit_vectors_frozen_first_and_the_queue_fills_then_is_used():
    model = _tiny("swav", "method.queue_size=8", "method.queue_start_epoch=0",
                  "method.freeze_prototypes_epochs=1", "batch_size=4")
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.before_step(0, 100, 10)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(3000))
    g = torch.Generator().manual_seed(0)
    batch = _batch([torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)])
    used = []
    for step in range(3):
        model.before_step(step, 100, 10)
        out = model(batch)
        used.append(out["queue_used"].item())
    assert used == [0.0, 0.0, 1.0] and int(model.queue_filled) == 8
    out["loss"].backward()
    model.after_backward(step=2, steps_per_epoch=10)
    assert model.prototypes.weight.grad is None               # frozen in the first epoch
    model.after_backward(step=12, steps_per_epoch=10)
