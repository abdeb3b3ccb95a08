"""Backbones and heads."""
import copy

import pytest
import torch
import torchvision

from sslcifar.models import (SplitBatchNorm2d, build_backbone, projection_mlp, resolve_stem,
                             split_batchnorm)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_width_64_imagenet_stem_is_torchvisions_resnet(name):
    # same seed -> the same weights, bit for bit: our ResNet draws its initialisation
    # with the same calls in the same order (the numbers of every earlier run survive)
    torch.manual_seed(0)
    ours = build_backbone(name, 64, "imagenet", 224)
    torch.manual_seed(0)
    # num_classes=0: an empty fc, which draws no random numbers (ours has none)
    ref = getattr(torchvision.models, name)(num_classes=0)
    ref_state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours_state = ours.state_dict()
    assert list(ours_state) == list(ref_state)
    for k, v in ref_state.items():
        assert torch.equal(ours_state[k], v), k
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    # the same modules applied in the same order: equal outputs in both modes
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.train()(x), ref.train()(x), rtol=0, atol=0)


def test_the_commands_start_without_importing_torchvision():
    # torchvision's import pulls in torch's compiler (seconds per command start)
    import subprocess
    import sys
    code = ("import sys, sslcifar.train, sslcifar.linear_eval, sslcifar.knn, sslcifar.figures; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


def _affine_bn(c, seed):
    bn = torch.nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def test_split_batchnorm_is_batchnorm_on_each_group_separately():
    """The MoCo CIFAR demo's SplitBatchNorm: group j = samples j, j+s, j+2s, ...; each
    normalised by its own statistics; running statistics averaged over the groups;
    gradients those of the groups' BatchNorms added up (the parameters are shared)."""
    s, c = 3, 4
    x = torch.randn(12, c, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, c, 5, 5, dtype=torch.float64)              # a random upstream gradient
    base = _affine_bn(c, 0).double()
    split = split_batchnorm(torch.nn.Sequential(copy.deepcopy(base)), s)[0]
    assert isinstance(split, SplitBatchNorm2d)
    out = split(x)
    (out * w).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    out_ref = torch.empty_like(out)
    groups = [copy.deepcopy(base) for _ in range(s)]
    for j, bn in enumerate(groups):
        out_ref[j::s] = bn(x_ref[j::s])
    (out_ref * w).sum().backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(split.weight.grad, sum(bn.weight.grad for bn in groups))
    torch.testing.assert_close(split.bias.grad, sum(bn.bias.grad for bn in groups))
    torch.testing.assert_close(split.running_mean, sum(bn.running_mean for bn in groups) / s)
    torch.testing.assert_close(split.running_var, sum(bn.running_var for bn in groups) / s)
    assert int(split.num_batches_tracked) == 1
    # eval mode, and one split, are plain BatchNorm2d
    split.eval()
    base.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x.detach()), base.eval()(x.detach()))
    one = SplitBatchNorm2d(c, 1).double()
    torch.testing.assert_close(one(x.detach()), torch.nn.BatchNorm2d(c).double()(x.detach()))
    with pytest.raises(ValueError, match="cannot be split into 3"):
        split.train()(torch.randn(4, c, 5, 5, dtype=torch.float64))


def test_split_batchnorm_converts_a_resnet_keeping_its_state_dict():
    net = build_backbone("resnet18", 8, "cifar", 32)
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    before = net.eval()(x)
    split_batchnorm(net, 2)
    assert sum(isinstance(m, SplitBatchNorm2d) for m in net.modules()) == 20  # every BN of R18
    assert not any(type(m) is torch.nn.BatchNorm2d for m in net.modules())
    assert all(torch.equal(keys[k], v) for k, v in net.state_dict().items())
    assert net.state_dict().keys() == keys.keys()
    torch.testing.assert_close(net.eval()(x), before)
