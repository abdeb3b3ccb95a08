"""Backbones and heads."""
import pytest
import torch
import torchvision

from sslcifar.models import build_backbone, projection_mlp, resolve_stem


def test_width_64_imagenet_stem_is_torchvisions_resnet():
    for name in ("resnet18", "resnet50"):
        ours = build_backbone(name, 64, "imagenet", 224)
        ref = getattr(torchvision.models, name)()
        ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("fc.")}
        assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes
        ref.fc = torch.nn.Identity()
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name, feats", [("resnet18", 8 * 8), ("resnet34", 8 * 8), ("resnet50", 8 * 8 * 4)])
def test_width_scales_every_stage(name, feats):
    net = build_backbone(name, 8, "cifar", 32)
    assert net.num_features == feats
    assert net.layer1[0].conv1.in_channels == 8 and net(torch.randn(2, 3, 32, 32)).shape == (2, feats)


def test_cifar_and_stl_stems():
    cifar = build_backbone("resnet18", 8, "auto", 32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    stl = build_backbone("resnet18", 8, "auto", 96)
    assert stl.conv1.kernel_size == (3, 3) and isinstance(stl.maxpool, torch.nn.MaxPool2d)
    assert resolve_stem("auto", 224) == "imagenet"
    # CIFAR stem keeps 32x32 through layer1 (no early down-sampling)
    x = cifar.relu(cifar.bn1(cifar.conv1(torch.randn(1, 3, 32, 32))))
    assert cifar.layer1(cifar.maxpool(x)).shape[-1] == 32


def test_projection_mlp_variants():
    head = projection_mlp(16, 2048, 128, 2, bn=True)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].bias is None and head[3].bias is not None
    moco = projection_mlp(16, None, 128, 2, bn=False)
    assert moco[0].out_features == 16 and moco[0].bias is not None
    sog = projection_mlp(16, 32, 8, 2, bn=True, last_bn=True)
    assert isinstance(sog[-1], torch.nn.BatchNorm1d) and not sog[-1].affine
    assert sog(torch.randn(4, 16)).shape == (4, 8)
