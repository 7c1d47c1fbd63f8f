"""MemNet denoiser (Tai et al. 2017) as in the denoised-smoothing code (`code/archs/memnet.py`).

A feature extractor, `num_memblock` memory blocks, each `num_resblock` residual blocks
(separate weights, as in the official code) followed by a 1x1 gate over the short-term
outputs and every earlier block's output (dense long-term memory), and a reconstructor;
the output is `x + reconstruction` (no clamping). All convolutions are pre-activation
(BatchNorm, ReLU, conv). Parameter names match the official checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from dsmooth.models import register


class BNReLUConv(nn.Sequential):
    def __init__(self, in_channels: int, channels: int, k: int = 3, s: int = 1, p: int = 1):
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, channels, k, s, p, bias=False))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.relu_conv1 = BNReLUConv(channels, channels)
        self.relu_conv2 = BNReLUConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu_conv2(self.relu_conv1(x))


class MemoryBlock(nn.Module):
    """`index` is the 1-based position of this block: its gate sees index earlier outputs."""

    def __init__(self, channels: int, num_resblock: int, index: int):
        super().__init__()
        self.recursive_unit = nn.ModuleList(ResidualBlock(channels) for _ in range(num_resblock))
        self.gate_unit = BNReLUConv((num_resblock + index) * channels, channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for layer in self.recursive_unit:
            x = layer(x)
            short_term.append(x)
        return self.gate_unit(torch.cat(short_term + long_term, 1))


class MemNet(nn.Module):
    def __init__(
        self, in_channels: int = 3, channels: int = 64, num_memblock: int = 3, num_resblock: int = 6
    ):
        super().__init__()
        self.image_channels = in_channels
        self.feature_extractor = BNReLUConv(in_channels, channels)
        self.reconstructor = BNReLUConv(channels, in_channels)
        self.dense_memory = nn.ModuleList(
            MemoryBlock(channels, num_resblock, i + 1) for i in range(num_memblock)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(x)
        memory = [out]
        for block in self.dense_memory:
            out = block(out, memory)
            memory.append(out)
        return x + self.reconstructor(out)


@register("memnet", kind="denoiser")
def memnet(
    in_channels: int = 3, channels: int = 64, num_memblock: int = 3, num_resblock: int = 6
) -> MemNet:
    """The paper's MemNet: 64 channels, 3 memory blocks of 6 residual blocks."""
    return MemNet(in_channels, channels, num_memblock, num_resblock)
