"""The CIFAR ResNets of the randomized-smoothing code bases (Cohen et al. 2019,
`code/archs/cifar_resnet.py`, itself from bearpaw/pytorch-classification), which the
denoised-smoothing paper uses as its CIFAR-10 classifier (`cifar_resnet110`).

Unlike `cifar_resnet*` (option A), shortcuts that change shape are option B: a 1x1
strided convolution + BatchNorm (`downsample`), and the head is named `fc`. Parameter
names match those checkpoints, and the default normalisation is theirs
(std 0.2023, 0.1994, 0.2010).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsmooth.models import register
from dsmooth.models.normalize import COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD, NormalizedClassifier


class BasicBlockB(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CohenResNet(nn.Module):
    """The network without normalisation (basic blocks, depth = 6n + 2)."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlockB(planes_in, planes, s))
                planes_in = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _make(depth: int):
    def build(
        num_classes: int = 10,
        mean: Sequence[float] = COHEN_CIFAR10_MEAN,
        std: Sequence[float] = COHEN_CIFAR10_STD,
    ) -> NormalizedClassifier:
        return NormalizedClassifier(CohenResNet(depth, num_classes), mean, std)

    build.__doc__ = f"Cohen et al.'s CIFAR ResNet-{depth} (option-B shortcuts) with normalisation."
    return build


for _depth in (20, 56, 110):
    register(f"cohen_resnet{_depth}")(_make(_depth))
