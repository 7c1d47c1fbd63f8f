"""CIFAR ResNets of He et al. (2016), option-A shortcuts, as in the widely shared
checkpoints (akamaster/pytorch_resnet_cifar10, the Cohen/Salman code's resnet110):
3 stages of n basic blocks with 16/32/64 channels; depth = 6n + 2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsmooth.models import register
from dsmooth.models.cifar_resnet_parts import CifarTrunk, ResidualBranch
from dsmooth.models.normalize import CIFAR10_MEAN, CIFAR10_STD, NormalizedClassifier


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad planes/4 channels per side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(ResidualBranch):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__(in_planes, planes, stride)
        self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class CifarResNet(CifarTrunk):
    """The network without normalisation; parameter names match akamaster's."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__(depth, BasicBlock)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> NormalizedClassifier:
    """A CIFAR ResNet of `depth` with its input normalisation, taking [0, 1] images."""
    return NormalizedClassifier(CifarResNet(depth, num_classes), mean, std)


for _depth in (20, 32, 44, 56, 110):
    register(f"cifar_resnet{_depth}")(
        lambda num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, _d=_depth: cifar_resnet(
            _d, num_classes, mean, std
        )
    )
