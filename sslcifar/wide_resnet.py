"""WideResNet-28-k (Zagoruyko & Komodakis, 2016) as solo-learn's `wide_resnet28w2` /
`wide_resnet28w8` (solo/backbones/wide_resnet/wide_resnet.py at 9187ea3, itself FixMatch's
CIFAR network): pre-activation basic blocks with LeakyReLU 0.1, BatchNorm with momentum
0.001 and eps 0.001 (TensorFlow's decay 0.999 in PyTorch's convention), convolutions with
biases, a 3x3 stride-1 first convolution and three stages of (28 - 4) / 6 = 4 blocks, the
last two strided; BN + LeakyReLU before the average pool.

`width` is the first convolution's channels (16 in the paper: stages 16k, 32k, 64k), so
`backbone.width=8` halves every layer for CPU runs, as with the ResNets. `feature_map(x)`
gives the last stage's map [B, 64k, h, w] after its BN and activation, `pool` the features.
"""
import torch
from torch import nn
from torch.nn import functional as F


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.001, eps=0.001)


class WideBlock(nn.Module):
    """BN-LReLU-conv3x3(stride)-BN-LReLU-conv3x3 plus the shortcut. When the channels change
    the shortcut is a strided 1x1 conv of the block's input: pre-activated in the first
    block of the network (`activate_before_residual`), raw in the others (as solo-learn's).
    In those others solo-learn's block computes a pre-activation it never uses; it has no
    effect on any output, so it is left out here (an unused BatchNorm's parameters would
    never get a gradient, which DistributedDataParallel does not allow)."""

    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool = False):
        super().__init__()
        used = cin == cout or activate_before_residual
        self.bn1 = _bn(cin) if used else None
        self.relu1 = nn.LeakyReLU(0.1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.bn2, self.relu2 = _bn(cout), nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=True)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            pre = self.relu1(self.bn1(x))
            return x + self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        if self.activate_before_residual:
            x = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(x))))
        return self.shortcut(x) + out


class WideResNet(nn.Module):
    """Images [B, 3, S, S] -> features [B, num_features] (num_features = 4 * width * k)."""

    def __init__(self, depth: int = 28, widen_factor: int = 2, width: int = 16):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WideResNet's depth is 6n + 4, not {depth}")
        n = (depth - 4) // 6
        ch = [width, width * widen_factor, 2 * width * widen_factor, 4 * width * widen_factor]
        self.num_features = ch[3]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=True)
        self.block1 = self._stage(n, ch[0], ch[1], 1, activate_first=True)
        self.block2 = self._stage(n, ch[1], ch[2], 2)
        self.block3 = self._stage(n, ch[2], ch[3], 2)
        self.bn1, self.relu = _bn(ch[3]), nn.LeakyReLU(0.1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(n: int, cin: int, cout: int, stride: int, activate_first: bool = False):
        return nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                         activate_first and i == 0) for i in range(n)])

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x))
