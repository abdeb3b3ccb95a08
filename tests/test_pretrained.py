"""Loading encoders: our checkpoints, the original repos' layouts, torchvision, bad and
malicious files, and picking the newest matching run under outputs/."""
import argparse
import os
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir

from sslcifar.config import register_configs
from sslcifar.errors import UserError
from sslcifar.eval_config import register_eval_configs
from sslcifar.models import build_backbone
from sslcifar.pretrained import (find_latest_run, load_checkpoint, load_encoder, map_key,
                                 resolve_checkpoint)

from .conftest import REPO

register_configs()
register_eval_configs()


def compose_eval(overrides=(), name="linear_eval"):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def trained_looking(name="resnet18", width=8, stem="cifar", seed=0):
    """A backbone whose every tensor (BN running statistics and step counters too)
    differs from a fresh one, so a load that silently skips a key is caught."""
    torch.manual_seed(seed)
    net = build_backbone(name, width, stem, 32)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v))
            else:
                v.fill_(7)
    return net


def same_tensors(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------- foreign layouts

def _moco(sd):
    head = {"module.encoder_q.fc.0.weight": torch.randn(64, 64),
            "module.encoder_q.fc.2.weight": torch.randn(128, 64)}
    return {"epoch": 200, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {**{f"module.encoder_q.{k}": v for k, v in sd.items()},
                           **{f"module.encoder_k.{k}": v + 1 for k, v in sd.items()
                              if v.is_floating_point()},
                           **head, "module.queue": torch.randn(128, 64),
                           "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}


def _sogclr(sd):
    return {"epoch": 400, "state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in sd.items()},
        **{f"module.momentum_encoder.{k}": v * 2 for k, v in sd.items()},
        "module.base_encoder.fc.0.weight": torch.randn(32, 64)}}


def _supcontrast(sd, data_parallel=True):
    prefix = "encoder.module." if data_parallel else "encoder."
    model = {prefix + k.replace(".downsample.", ".shortcut."): v for k, v in sd.items()}
    model.update({"head.0.weight": torch.randn(64, 64), "head.0.bias": torch.randn(64),
                  "head.2.weight": torch.randn(128, 64)})
    # SupContrast saves its argparse options next to the weights
    return {"opt": argparse.Namespace(model="resnet18", temp=0.1), "model": model,
            "optimizer": {}, "epoch": 1000}


def _simclr_cifar10(sd):
    return {**{f"enc.{k}": v for k, v in sd.items()},
            "projector.0.weight": torch.randn(2048, 64), "projector.2.weight": torch.randn(128, 2048)}


def _torchvision(sd):
    return {**sd, "fc.weight": torch.randn(1000, 64), "fc.bias": torch.randn(1000)}


def _ours(sd):
    return {"step": 10, "metrics": [], "config": {"backbone": {"name": "resnet18", "width": 8,
                                                               "stem": "auto"},
                                                  "dataset": {"name": "cifar10", "size": 32}},
            "model": {**{f"backbone.{k}": v for k, v in sd.items()},
                      **{f"backbone_k.{k}": v + 1 for k, v in sd.items() if v.is_floating_point()},
                      "projector.0.weight": torch.randn(32, 64)}}


LAYOUTS = {"moco": _moco, "sogclr": _sogclr, "supcontrast": _supcontrast,
           "supcontrast_single_gpu": lambda sd: _supcontrast(sd, data_parallel=False),
           "simclr-cifar10": _simclr_cifar10, "torchvision": _torchvision, "sslcifar": _ours}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_the_same_tensors(tmp_path, layout):
    net = trained_looking()
    path = tmp_path / "ckpt.pth.tar"
    torch.save(LAYOUTS[layout](net.state_dict()), path)
    enc = load_checkpoint(path, name="resnet50", stem="auto", image_size=32)  # fall-backs unused
    assert (enc.name, enc.width, enc.stem) == ("resnet18", 8, "cifar")
    assert enc.format == layout.replace("_single_gpu", "")
    same_tensors(enc.backbone.state_dict(), net.state_dict())
    assert not enc.backbone.training
    assert not any(p.requires_grad for p in enc.backbone.parameters())


@pytest.mark.parametrize("name,stem", [("resnet34", "cifar"), ("resnet50", "cifar"),
                                       ("resnet18", "imagenet")])
def test_architecture_and_stem_are_read_from_the_keys(tmp_path, name, stem):
    net = trained_looking(name, width=4, stem=stem)
    path = tmp_path / "c.pt"
    torch.save(_moco(net.state_dict()), path)
    enc = load_checkpoint(path, name="resnet18", stem="auto", image_size=32)
    assert (enc.name, enc.width, enc.stem) == (name, 4, stem)
    same_tensors(enc.backbone.state_dict(), net.state_dict())


def test_a_real_torchvision_resnet18_loads_with_the_imagenet_stem(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    enc = load_checkpoint(path, image_size=32)
    assert (enc.format, enc.name, enc.width, enc.stem) == ("torchvision", "resnet18", 64, "imagenet")
    tv.fc = torch.nn.Identity()
    tv.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(enc.backbone(x), tv(x))


def test_stl_stem_for_3x3_conv1_at_96px(tmp_path):
    net = trained_looking(stem="stl")
    path = tmp_path / "c.pt"
    torch.save(_simclr_cifar10(net.state_dict()), path)
    assert load_checkpoint(path, image_size=96).stem == "stl"


@pytest.mark.parametrize("key,mapped", [
    ("module.encoder_q.layer1.0.conv1.weight", "layer1.0.conv1.weight"),
    ("module.encoder_k.layer1.0.conv1.weight", None),
    ("module.encoder_q.fc.0.weight", None),
    ("module.queue", None),
    ("encoder.module.layer2.0.shortcut.1.running_mean", "layer2.0.downsample.1.running_mean"),
    ("module.encoder.bn1.weight", "bn1.weight"),
    ("head.2.weight", None),
    ("enc.conv1.weight", "conv1.weight"),
    ("projector.0.weight", None),
    ("model.backbone.layer4.1.bn2.bias", "layer4.1.bn2.bias"),
    ("fc.bias", None),
    ("conv1.weight", "conv1.weight"),
])
def test_key_rules(key, mapped):
    assert map_key(key) == mapped


# ---------------------------------------------------------------------- bad files

def test_a_checkpoint_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path):
    sd = trained_looking().state_dict()
    del sd["layer4.1.conv2.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert f"checkpoint {path} does not fit a resnet18 (width 8, cifar stem)" in msg
    assert "missing keys [layer4.1.conv2.weight]" in msg
    assert "unexpected keys [layer5.0.conv1.weight]" in msg


def test_wrong_shapes_are_named(tmp_path):
    state = _ours(trained_looking().state_dict())
    state["config"]["backbone"]["width"] = 16                   # config and weights disagree
    path = tmp_path / "last.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"wrong shapes \[conv1.weight \(8, 3, 3, 3\) vs "
                                        r"\(16, 3, 3, 3\)"):
        load_checkpoint(path)


def test_a_file_without_a_resnet_says_so(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save({"state_dict": {"module.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(UserError, match="has no ResNet encoder: no conv1.weight"):
        load_checkpoint(path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(UserError, match="holds no tensors"):
        load_checkpoint(path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "opt": _Exploit(marker)}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------- choosing the checkpoint

def test_a_run_directory_means_its_last_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="directory without checkpoints/last.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope.pt")


def fake_run(outputs: Path, rel: str, width: int, mtime: float, hydra_config=True) -> Path:
    """A pretraining run directory with a real checkpoint of a width-`width` encoder."""
    run = outputs / rel
    (run / "checkpoints").mkdir(parents=True)
    state = _ours(trained_looking(width=width, seed=int(mtime)).state_dict())
    state["config"]["backbone"]["width"] = width
    last = run / "checkpoints" / "last.pt"
    torch.save(state, last)
    if hydra_config:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(
            f"backbone:\n  name: resnet18\n  width: {width}\n  stem: auto\n"
            f"dataset:\n  root: ${{oc.env:SSLCIFAR_DATA,data}}\n")
    os.utime(last, (mtime, mtime))
    return last


def test_the_newest_run_with_the_same_backbone_is_picked(tmp_path, caplog):
    out = tmp_path / "outputs"
    fake_run(out, "simclr/2026-01-01_00-00-00", 8, 1000)
    newest_match = fake_run(out, "multirun/moco/2026-01-02_00-00-00/0_moco_k=64", 8, 2000,
                            hydra_config=False)                 # found through its checkpoint
    fake_run(out, "simclr/2026-01-03_00-00-00", 16, 3000)       # newer, other width
    (out / "linear_eval" / "2026-01-04_00-00-00").mkdir(parents=True)   # no checkpoint: ignored
    caplog.set_level("INFO", logger="sslcifar")
    assert find_latest_run(out, "resnet18", 8) == newest_match
    assert "using the newest resnet18 (width 8) run" in caplog.text
    assert "(not finished" in caplog.text
    assert find_latest_run(out, "resnet18", 16).parts[-3] == "2026-01-03_00-00-00"
    with pytest.raises(UserError) as e:
        find_latest_run(out, "resnet50", 8)
    msg = str(e.value)
    assert f"no pretraining run with backbone resnet50 (width 8) found under {out}" in msg
    assert "Fix: pretrained=PATH" in msg and "3 run(s) of other backbones" in msg


def test_pretrained_random_is_the_pretraining_starting_point():
    """The baseline encoder is exactly the backbone a pretraining run with the same seed
    starts from: the comparison isolates what training changed."""
    from sslcifar.methods import build_method
    cfg = compose_eval(["pretrained=random", "backbone.width=8", "seed=3"])
    enc = load_encoder(cfg)
    assert enc.format == "random" and enc.path is None
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        train_cfg = compose(config_name="simclr", overrides=["backbone.width=8", "seed=3"])
    torch.manual_seed(train_cfg.seed)
    method = build_method(train_cfg, 100, 10)
    same_tensors(enc.backbone.state_dict(), method.backbone.state_dict())
    other = load_encoder(compose_eval(["pretrained=random", "backbone.width=8", "seed=4"]))
    assert not torch.equal(other.backbone.conv1.weight, enc.backbone.conv1.weight)


def test_a_relative_path_is_relative_to_the_launch_directory(tmp_path, monkeypatch):
    torch.save(_torchvision(trained_looking().state_dict()), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    enc = load_encoder(compose_eval(["pretrained=w.pt"]))
    assert enc.path == tmp_path / "w.pt" and enc.width == 8


# ---------------------------------------------------------------------- the peers' checkpoints

def _lightning(state_dict):
    """A PyTorch Lightning checkpoint's layout (what solo-learn and lightly save)."""
    return {"epoch": 999, "global_step": 195000, "pytorch-lightning_version": "2.1.0",
            "state_dict": state_dict, "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": [{"last_epoch": 999}], "callbacks": {}, "hyper_parameters": {"lr": 0.3}}


def test_a_solo_learn_checkpoint_loads_its_backbone_not_the_momentum_one(tmp_path):
    net = trained_looking()
    sd = net.state_dict()
    f = tmp_path / "byol-cifar10-ep=999.ckpt"
    torch.save(_lightning({**{f"backbone.{k}": v for k, v in sd.items()},
                           **{f"momentum_backbone.{k}": v + 1 for k, v in sd.items()
                              if v.is_floating_point()},
                           "projector.0.weight": torch.randn(4096, 64), "predictor.0.weight":
                           torch.randn(4096, 256), "momentum_projector.0.weight": torch.randn(4096, 64),
                           "classifier.weight": torch.randn(10, 64), "classifier.bias": torch.randn(10)}), f)
    enc = load_checkpoint(f)
    assert enc.format == "solo-learn" and (enc.name, enc.width, enc.stem) == ("resnet18", 8, "cifar")
    same_tensors(enc.backbone.state_dict(), sd)


@pytest.mark.parametrize("layout", ["lightly", "torchvision"])
def test_a_lightly_checkpoint_of_a_sequential_backbone_computes_what_it_trained(tmp_path, layout):
    """lightly keeps `nn.Sequential(*resnet.children()[:-1])`: numbered keys. Its CIFAR
    ResNetGenerator has no ReLU module after the stem's BN (its forward applies one
    functionally, the Sequential does not), so the loaded encoder must not apply one either."""
    net = trained_looking().eval()
    stem = [net.conv1, net.bn1] + ([] if layout == "lightly" else [net.relu, net.maxpool])
    seq = torch.nn.Sequential(*stem, net.layer1, net.layer2, net.layer3, net.layer4,
                              torch.nn.AdaptiveAvgPool2d(1)).eval()
    f = tmp_path / "lightly.ckpt"
    torch.save(_lightning({**{f"backbone.{k}": v for k, v in seq.state_dict().items()},
                           "projection_head.layers.0.weight": torch.randn(512, 64)}), f)
    enc = load_checkpoint(f)
    assert enc.format == "lightly" and (enc.name, enc.width, enc.stem) == ("resnet18", 8, "cifar")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(x), seq(x).flatten(1))
