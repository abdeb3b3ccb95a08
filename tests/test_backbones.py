"""Backbones beyond the ResNets: WideResNet (ours) and timm's ViT, Swin, ConvNeXt and any
timm model, at tiny sizes (tests/conftest.py's TINY_BACKBONES): built, trained through the
real entry point, resumed, on 2 processes, and read back by the evaluation commands."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sslcifar.models import build_backbone, count_parameters
from sslcifar.optim import exclude_from_decay

from .conftest import REPO, TINY, TINY_BACKBONES, method_overrides, run
from .test_config import compose_cfg
from .test_every_method import (B, _batch, _cfg, _load, _model, _rows, _steps,
                                _train_in_process, spawn_two_ranks)

# which method each backbone trains with here: DINO for the ViT (multi-crop: views of 16 and
# 8 px through one ViT), VICRegL for ConvNeXt (its feature map), SimCLR for the others
RUNS = {"wide_resnet28w2": "simclr", "vit_tiny": "dino", "swin_tiny": "simclr",
        "convnext_tiny": "vicregl", "timm": "simclr"}
NAMES = [f"{m}@{b}" for b, m in RUNS.items()]


def _backbone(name, **kw):
    cfg = compose_cfg("simclr", [*TINY_BACKBONES[name], *[f"{k}={v}" for k, v in kw.items()]])
    from sslcifar.models import backbone_from_config
    torch.manual_seed(0)
    return backbone_from_config(cfg.backbone, 32).eval()


# ---------------------------------------------------------------------- the modules

@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_features_are_the_pooled_feature_map(name):
    net = _backbone(name)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = net(x)
        torch.testing.assert_close(net.pool(net.feature_map(x)), h, rtol=0, atol=0)
    assert h.shape == (3, net.num_features)


def test_wide_resnets_have_the_papers_sizes():
    """WRN-28-2: 1.47 M parameters, 128 features (FixMatch: 1.5 M); WRN-28-8: 23.4 M, 512."""
    small, large = build_backbone("wide_resnet28w2", 16, "auto", 32), build_backbone("wide_resnet28w8", 16, "auto", 32)
    assert (small.num_features, large.num_features) == (128, 512)
    assert round(count_parameters(small) / 1e6, 2) == 1.47
    assert round(count_parameters(large) / 1e6, 1) == 23.4
    assert small.feature_map(torch.randn(2, 3, 32, 32)).shape == (2, 128, 8, 8)


def test_vit_takes_every_view_size_with_its_patches():
    """Patch 4 at 32 px: 8 x 8 tokens; a 16 px local crop gives 4 x 4 through the same
    weights (position embeddings interpolated)."""
    net = _backbone("vit_tiny")
    assert net.model.patch_embed.patch_size == (4, 4)
    assert net.model.pos_embed.shape[1] == 1 + 64
    for s in (32, 24, 16):
        assert net(torch.randn(2, 3, s, s)).shape == (2, 32)
    assert _backbone("vit_tiny", **{"backbone.patch_size": 8}).model.pos_embed.shape[1] == 1 + 16


def test_weights_only_decay_exempts_biases_norms_position_embeddings_and_class_token():
    cfg = _cfg("dino@vit_tiny")
    method = _model("dino@vit_tiny", cfg)
    groups = exclude_from_decay(method.param_groups(), method)
    names = {id(p): n for n, p in method.named_parameters()}
    free = {names[id(p)] for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if "weight_decay" not in g for p in g["params"]}
    assert {"backbone.model.pos_embed", "backbone.model.cls_token"} <= free
    assert all(n in free for n, p in method.named_parameters() if p.requires_grad and p.ndim <= 1)
    assert "backbone.model.blocks.0.attn.qkv.weight" in decay
    assert free.isdisjoint(decay)
    assert free | decay == {n for n, p in method.named_parameters() if p.requires_grad}


def test_without_timm_a_timm_backbone_is_one_line_saying_how_to_install_it(tmp_path):
    code = ("import sys, runpy; sys.modules['timm'] = None; "
            f"sys.argv = ['simclr.py', *{TINY + TINY_BACKBONES['vit_tiny']!r}, "
            f"'hydra.run.dir={tmp_path}']; runpy.run_path('simclr.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[timm]'" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("override, expected", [
    ("backbone.patch_size=5", "backbone.patch_size=5 is not allowed: views of [16] px"),
    ("backbone=swin_tiny augment.small_crops=2", "Swin's windows are fixed to one image size"),
    ("backbone=vit_tiny method=densecl", "method=densecl works on a convolutional feature map"),
])
def test_backbone_rules_are_checked_before_training(override, expected):
    from sslcifar.errors import UserError
    from sslcifar.validate import validate_config
    overrides = ["backbone=vit_tiny", "dataset.size=16", *override.split()]
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_config(compose_cfg(overrides=overrides))


# ---------------------------------------------------------------------- through the loop

@pytest.mark.dist
def test_two_ranks_equal_one_process(tmp_path):
    """As test_every_method's check, for a method on each backbone (BatchNorm in eval mode;
    the ViT has none)."""
    results = spawn_two_ranks(NAMES, tmp_path)
    for name in NAMES:
        cfg = _cfg(name)
        method = _model(name, cfg, torch.float64).eval()
        loss, grads, _ = _steps(method, method, cfg, _batch(name, cfg, B, dtype=torch.float64))
        for r in results[name]:
            assert not isinstance(r, str), r
            torch.testing.assert_close(r["loss"], loss, atol=1e-10, rtol=1e-10)
            for n in grads:
                # timm resizes the position embeddings for the local crops in float32
                # (resample_abs_pos_embed): their gradient passes float32 rounding
                rtol = 1e-6 if n.endswith("pos_embed") else 1e-8
                torch.testing.assert_close(r["grads"][n], grads[n], atol=1e-10, rtol=rtol, msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dino@vit_tiny", "simclr@wide_resnet28w2"])
def test_resumes_mid_epoch_bit_identically(tmp_path, cifar_root, name):
    common = [*method_overrides(name), f"dataset.root={cifar_root}", "dataset.subset=64",
              "epochs=2", "eval.knn_every=0", "optimizer.exclude_bias_n_norm_wd=true"]
    _train_in_process(tmp_path / "full", common)
    _train_in_process(tmp_path / "split", [*common, "max_steps=3"])
    _train_in_process(tmp_path / "split", [*common, "resume=true"])
    a, b = _load(tmp_path / "full"), _load(tmp_path / "split")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "split")


@pytest.mark.slow
def test_each_backbone_trains_from_simclr_py_and_evaluates_from_its_checkpoint(tmp_path, cifar_root):
    data = [f"dataset.root={cifar_root}", "dataset.subset=64"]
    runs = {}
    for name in NAMES:
        out = tmp_path / name.replace("@", "_")
        proc = run("simclr.py", *TINY, *method_overrides(name), *data, "max_steps=2",
                   "eval.knn_every=0", f"hydra.run.dir={out}")
        assert "final:" in proc.stdout
        runs[name] = out
        assert _load(out)["config"]["backbone"]["name"] == name.partition("@")[2]
    paths = ",".join(str(p) for p in runs.values())
    run("linear_eval.py", "-m", f"pretrained={paths}", "recipe=fast", *data, "device=cpu",
              "progress=false", f"hydra.sweep.dir={tmp_path / 'linear'}")
    knn = run("-m sslcifar.knn", "-m", f"pretrained={paths}", "max_train=64", "k=5", *data,
              "device=cpu", "progress=false", f"hydra.sweep.dir={tmp_path / 'knn'}")
    results = [json.loads(p.read_text()) for p in (tmp_path / "linear").glob("*/linear_eval.json")]
    assert sorted(r["checkpoint"].split("/checkpoints")[0] for r in results) == sorted(map(str, runs.values()))
    assert all(0 <= r["top1"] <= 100 and r["checkpoint_format"] == "sslcifar" for r in results)
    assert sum(line.startswith("knn: top1=") for line in knn.stdout.splitlines()) == len(runs), \
        knn.stdout[-3000:]


# ---------------------------------------------------------------------- foreign ViT checkpoints

def _vit_source():
    """A ViT-Tiny-width encoder of 1 block (3 heads, as ViT-Ti), patch 4 at 32 px, in timm's
    layout: the names DINO's, MoCo v3's and solo-learn's ViTs share."""
    torch.manual_seed(1)
    net = build_backbone("vit_tiny", 192, "auto", 32, patch_size=4,
                         timm_name="vit_tiny_patch16_224", kwargs={"depth": 1, "num_heads": 3})
    with torch.no_grad():           # not the initial zeros: a load that missed them would show
        net.model.pos_embed.normal_()
        net.model.cls_token.normal_()
    return net.eval(), {k[len("model."):]: v for k, v in net.state_dict().items()}


@pytest.mark.parametrize("layout, fmt", [
    # DINO: the released teacher backbone (a plain state dict) and checkpoint.pth's "teacher"
    (lambda sd: dict(sd), "dino"),
    (lambda sd: {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                             "head.last_layer.weight_g": torch.ones(8, 1)},
                 "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()}, "epoch": 3},
     "dino"),
    # MoCo v3: DDP prefix, base and momentum encoders, the projector as the ViT's head
    (lambda sd: {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in sd.items()},
                                **{f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()},
                                "module.base_encoder.head.0.weight": torch.ones(4, 192),
                                "module.predictor.0.weight": torch.ones(4, 4)}, "epoch": 3},
     "mocov3"),
    # solo-learn: Lightning's state_dict with backbone / momentum_backbone / heads
    (lambda sd: {"state_dict": {**{f"backbone.{k}": v for k, v in sd.items()},
                                **{f"momentum_backbone.{k}": v + 1 for k, v in sd.items()},
                                "projector.0.weight": torch.ones(4, 192),
                                "classifier.weight": torch.ones(10, 192)}, "global_step": 7},
     "solo-learn"),
])
def test_foreign_vit_checkpoints_load_into_the_same_encoder(tmp_path, layout, fmt):
    from sslcifar.pretrained import load_checkpoint
    source, sd = _vit_source()
    path = tmp_path / "vit.pth"
    torch.save(layout(sd), path)
    loaded = load_checkpoint(path)
    assert loaded.format == fmt and loaded.name == "vit_tiny" and loaded.width == 192
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(x), source(x), rtol=0, atol=0)
        assert loaded.backbone(torch.randn(2, 3, 16, 16)).shape == (2, 192)   # other sizes


# ---------------------------------------------------------------------- MoCo v3's stop-grad

def test_mocov3_stop_grad_conv1_keeps_the_patch_embedding_at_its_initialisation():
    """method.stop_grad_conv1=true (MoCo v3's --stop-grad-conv1, facebookresearch/moco-v3 at
    c349e6e: requires_grad=False on patch_embed.proj for the whole run): AdamW steps with
    weight decay leave the patch embedding of both encoders exactly at its initialisation
    while every other block learns; stop_grad_conv1_epochs=1 frees it from epoch 1 on. On a
    ResNet the option ends in one line naming the fix."""
    from sslcifar.errors import UserError
    from sslcifar.step import train_step
    from .conftest import method_schedules
    from .test_every_method import STEPS_PER_EPOCH

    def run_steps(*extra, steps):
        cfg = _cfg("mocov3@vit_tiny", "method.stop_grad_conv1=true", *extra)
        method = _model("mocov3@vit_tiny", cfg)
        start = {k: v.clone() for k, v in method.state_dict().items()}
        opt = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
        now = method_schedules(method, cfg, 10 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
        batch = _batch("mocov3@vit_tiny", cfg, B)
        for s in steps:
            train_step(method, method, opt, batch, now.at(s))
        end = method.state_dict()
        return {k: torch.equal(start[k], end[k]) for k in start}

    same = run_steps(steps=[0, 1, 2])
    embedding = [k for k in same if ".patch_embed.proj." in k]
    assert sorted(embedding) == ["backbone.model.patch_embed.proj.bias",
                                 "backbone.model.patch_embed.proj.weight",
                                 "backbone_k.model.patch_embed.proj.bias",
                                 "backbone_k.model.patch_embed.proj.weight"]
    assert all(same[k] for k in embedding)
    assert not same["backbone.model.blocks.0.attn.qkv.weight"]
    assert not same["backbone_k.model.blocks.0.attn.qkv.weight"]           # the EMA moved
    # frozen for epoch 0 only: steps of epoch 1 move it
    later = run_steps("method.stop_grad_conv1_epochs=1", steps=[STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1])
    assert not later["backbone.model.patch_embed.proj.weight"]
    assert all(run_steps("method.stop_grad_conv1_epochs=1", steps=[0, 1])[k] for k in embedding)
    with pytest.raises(UserError, match="use a ViT backbone"):
        _model("mocov3", _cfg("mocov3", "method.stop_grad_conv1=true"))
