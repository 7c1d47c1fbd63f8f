"""Wide ResNets (Zagoruyko & Komodakis 2016) for 32x32 inputs, with input normalisation.

WRN-d-k: 3 stages of (d - 4) / 6 pre-activation basic blocks with 16k/32k/64k channels and
1x1 projection shortcuts where the shape changes. Parameter names follow the widely used
PyTorch port (xternalz/WideResNet-pytorch: `block1.layer.0.bn1`, `fc`), so its
checkpoints import with `--arch wrn28_10`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsmooth.models import register
from dsmooth.models.normalize import CIFAR10_MEAN, CIFAR10_STD, NormalizedClassifier


class WideBasic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal = in_planes == planes and stride == 1
        self.convShortcut = (
            None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        shortcut = x if self.equal else self.convShortcut(o)
        out = F.relu(self.bn2(self.conv1(o)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, blocks: int, in_planes: int, planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasic(
                    in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """The network without normalisation."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wide_resnet(
    depth: int,
    widen: int,
    *,
    num_classes: int = 10,
    drop_rate: float = 0.0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> NormalizedClassifier:
    """WRN-depth-widen with its input normalisation, taking [0, 1] images."""
    return NormalizedClassifier(WideResNet(depth, widen, num_classes, drop_rate), mean, std)


def _make(depth: int, widen: int):
    def build(
        num_classes: int = 10,
        drop_rate: float = 0.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> NormalizedClassifier:
        return wide_resnet(
            depth, widen, num_classes=num_classes, drop_rate=drop_rate, mean=mean, std=std
        )

    build.__doc__ = f"WRN-{depth}-{widen} with CIFAR-10 normalisation by default."
    return build


for _depth, _widen in ((16, 4), (16, 8), (28, 10), (40, 2)):
    register(f"wrn{_depth}_{_widen}")(_make(_depth, _widen))
