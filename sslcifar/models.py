"""Encoders and heads: ResNets with small-image stems, projection MLPs.

`build_backbone` returns a ResNet whose `forward` gives the pooled feature
vector [B, F] (fc removed), with
- the CIFAR stem (3x3 stride-1 conv1, no max-pool) for images up to 64 px,
  as in SimCLR's and SupContrast's CIFAR code;
- the STL stem (3x3 stride-1 conv1 followed by the max-pool) for up to 128 px;
- torchvision's ImageNet stem (7x7 stride-2 conv1 + max-pool) above that.
`width` scales every stage (64 is the standard ResNet: stages 64-128-256-512).

The ResNet is written here rather than imported from torchvision: importing
`torchvision.models` also imports `torchvision.ops` and with it torch's compiler
(2.6 s on a 2-core CPU, every time a command starts). Ours has torchvision's module
names (so its state dicts load both ways), builds its modules in torchvision's order
and initialises them as torchvision does, so a seed gives the same weights
(`tests/test_models.py` compares it with torchvision's ResNet).
"""
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34): [B, cin, H, W] -> [B, planes, H/s, W/s]."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions and a shortcut (ResNet-50, torchvision's
    "v1.5": the stride sits on the 3x3): [B, cin, H, W] -> [B, 4 planes, H/s, W/s]."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


_BLOCKS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def resolve_stem(stem: str, image_size: int) -> str:
    if stem != "auto":
        return stem
    if image_size <= 64:
        return "cifar"
    return "stl" if image_size <= 128 else "imagenet"


class ResNet(nn.Module):
    """A ResNet with every stage width scaled by width/64; forward: [B, 3, S, S] -> [B, F],
    the pooled `feature_map`."""

    def __init__(self, block, layers, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._cin = width
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        del self._cin
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()    # the encoder ends at the pooled features
        self.num_features = width * 8 * block.expansion
        # torchvision's initialisation (He normal for convs, BN weight 1 / bias 0), drawn
        # after construction in module order, as torchvision draws it
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        cout = planes * block.expansion
        downsample = None
        if stride != 1 or self._cin != cout:   # built before the block, as torchvision does
            downsample = nn.Sequential(_conv(self._cin, cout, 1, stride), nn.BatchNorm2d(cout))
        layers = [block(self._cin, planes, stride, downsample)]
        self._cin = cout
        layers += [block(cout, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map [B, num_features, h, w] (4 x 4 for 32 px with the CIFAR stem),
        before the pooling: what dense methods (DenseCL) contrast position by position."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """A feature map [B, C, h, w] -> the encoder's features [B, C]."""
        return self.fc(torch.flatten(self.avgpool(fmap), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x))


WIDE_RESNETS = {"wide_resnet28w2": (28, 2), "wide_resnet28w8": (28, 8)}


def has_feature_map(name: str) -> bool:
    """Whether backbone `name` hands out a map [B, C, h, w] (dense methods need one): the
    convolutional ones, not a ViT's tokens or Swin's channels-last map."""
    return name in _BLOCKS or name in WIDE_RESNETS or name == "convnext_tiny"


def backbone_from_config(b, image_size: int) -> nn.Module:
    """build_backbone from a backbone config (cfg.backbone, or a checkpoint's saved dict:
    files written before the timm keys existed lack them)."""
    from omegaconf import OmegaConf
    get = b.get
    kwargs = get("kwargs") or {}
    kwargs = OmegaConf.to_container(kwargs) if OmegaConf.is_config(kwargs) else dict(kwargs)
    return build_backbone(get("name"), int(get("width")), get("stem", "auto"), image_size,
                          patch_size=get("patch_size"), timm_name=get("timm_name"),
                          kwargs=kwargs)


def build_backbone(name: str, width: int, stem: str, image_size: int,
                   patch_size: Optional[int] = None, timm_name: Optional[str] = None,
                   kwargs: Optional[dict] = None) -> nn.Module:
    """An encoder: images [B, 3, S, S] -> features [B, num_features], with
    `feature_map(x)` and `pool(fmap)` splitting it. ResNets (here), WideResNets
    (`sslcifar.wide_resnet`) and timm's models (`sslcifar.timm_backbones`: patch_size,
    timm_name and kwargs are theirs)."""
    if name in WIDE_RESNETS:
        from .wide_resnet import WideResNet
        depth, k = WIDE_RESNETS[name]
        return WideResNet(depth, k, width)
    from .timm_backbones import FAMILIES, build_timm
    if name in FAMILIES:
        return build_timm(name, width, image_size, patch_size, timm_name, kwargs or {})
    if name not in _BLOCKS:
        raise ValueError(f"backbone.name={name!r} is not one of "
                         f"{sorted(_BLOCKS) + sorted(WIDE_RESNETS) + sorted(FAMILIES)}")
    block, layers = _BLOCKS[name]
    net = ResNet(block, layers, width)
    stem = resolve_stem(stem, image_size)
    if stem in ("cifar", "stl"):
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if stem == "cifar":
            net.maxpool = nn.Identity()
    elif stem != "imagenet":
        raise ValueError(f"backbone.stem={stem!r} is not one of auto, cifar, stl, imagenet")
    return net


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics come from `num_splits` groups of the
    batch separately, as if each group sat on its own GPU: the MoCo CIFAR demo's way to
    give one process multi-GPU BatchNorm, so that, with the key batch shuffled, BN
    statistics cannot tell a query which key is its positive. Sample n is in group
    n % num_splits. Each group updates its own copy of the running statistics and the
    copies are averaged. Eval mode is plain BatchNorm2d; the state dict is the same.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"a batch of {n} cannot be split into {s} BatchNorm groups")
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        # [n, c] -> [n/s, s*c]: group j's samples become channels j*c..(j+1)*c
        out = F.batch_norm(x.reshape(n // s, s * c, h, w), mean, var, self.weight.repeat(s),
                           self.bias.repeat(s), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
            self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d of `module` (in place) by a SplitBatchNorm2d holding the
    same parameters and statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps,
                                     momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split.to(child.weight.device, child.weight.dtype))
        else:
            split_batchnorm(child, num_splits)
    return module


def projection_mlp(in_dim: int, hidden_dim: Optional[int], out_dim: int, num_layers: int = 2,
                   bn: bool = True, last_bn: bool = False,
                   last_bias: Optional[bool] = None, last_bn_affine: bool = False
                   ) -> nn.Sequential:
    """Projection head: (Linear -> [BN] -> ReLU) x (num_layers-1) -> Linear [-> BN].

    hidden_dim None means the input size (MoCo v2 / SupContrast heads).
    Linear layers followed by BN carry no bias (it would be cancelled); the last one has a
    bias unless last_bn, or unless last_bias=False (MoCo v3's predictor). The last BN has
    no affine parameters (SimSiam), unless last_bn_affine (solo-learn's NNCLR projector).
    """
    hidden_dim = hidden_dim or in_dim
    layers = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=(not last_bn) if last_bias is None else last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
