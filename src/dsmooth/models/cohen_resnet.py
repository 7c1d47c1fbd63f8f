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
from dsmooth.models.cifar_resnet_parts import CifarTrunk, ResidualBranch
from dsmooth.models.normalize import COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD, NormalizedClassifier


class BasicBlockB(ResidualBranch):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__(in_planes, planes, stride)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.residual(x) + shortcut)


class CohenResNet(CifarTrunk):
    """The network without normalisation (basic blocks, depth = 6n + 2)."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__(depth, BasicBlockB)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


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
