"""DnCNN denoisers (Zhang et al. 2017) as in the denoised-smoothing code (`code/archs/dncnn.py`).

17 convolutions: conv+ReLU, 15 x (conv, BatchNorm, ReLU), conv; the network estimates the
noise and the output is `x - estimate` (no clamping, like the official code). Parameter
names (`dncnn.<i>.weight`) match the official checkpoints so they import directly. The
last convolution starts at zero, so a fresh denoiser is the identity map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init

from dsmooth.models import register


class DnCNN(nn.Module):
    """Residual denoiser on [0, 1] NCHW images; output = x - predicted noise."""

    def __init__(
        self,
        image_channels: int = 3,
        depth: int = 17,
        n_channels: int = 64,
        bn_eps: float = 1e-4,
        bn_momentum: float = 0.95,
    ):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be at least 3, got {depth}")
        self.image_channels = image_channels
        layers: list[nn.Module] = [
            nn.Conv2d(image_channels, n_channels, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(n_channels, n_channels, 3, padding=1, bias=False),
                # eps and momentum as in the official code (momentum 0.95 in PyTorch's
                # convention: running statistics follow the latest batches closely).
                nn.BatchNorm2d(n_channels, eps=bn_eps, momentum=bn_momentum),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(n_channels, image_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        last = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                last = m
                init.orthogonal_(m.weight)
                if m.bias is not None:
                    init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                init.ones_(m.weight)
                init.zeros_(m.bias)
        init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.dncnn(x)


@register("dncnn", kind="denoiser")
def dncnn(image_channels: int = 3, depth: int = 17, n_channels: int = 64) -> DnCNN:
    """The paper's CIFAR-10 / ImageNet DnCNN: 17 layers, 64 channels (~0.56M parameters)."""
    return DnCNN(image_channels, depth, n_channels)


@register("dncnn_wide", kind="denoiser")
def dncnn_wide(image_channels: int = 3, depth: int = 17, n_channels: int = 128) -> DnCNN:
    """The paper's wide DnCNN: 17 layers, 128 channels (~2.2M parameters)."""
    return DnCNN(image_channels, depth, n_channels)
