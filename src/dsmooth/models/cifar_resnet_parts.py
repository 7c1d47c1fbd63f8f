"""What the two CIFAR ResNet families share (`cifar_resnet*`, option-A shortcuts, and
`cohen_resnet*`, option B): the basic block's residual branch and the 16/32/64-channel
trunk of depth 6n + 2. Each family adds its shortcut and head under the names of its
own checkpoints, so both keep loading them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBranch(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN; subclasses add the shortcut and the final ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class CifarTrunk(nn.Module):
    """Stem (conv1, bn1) and stages layer1..layer3 of n blocks each, 16/32/64 channels,
    depth = 6n + 2; `features` ends with global average pooling. Subclasses add the head."""

    def __init__(self, depth: int, block: Callable[[int, int, int], nn.Module]):
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
                blocks.append(block(planes_in, planes, s))
                planes_in = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
