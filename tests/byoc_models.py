"""Small models for the bring-your-own-classifier tests (also an entry point target).

`build()` is what `tests/byoc_models.py:build` names; its weights are set by a seed so
every source (TorchScript, ONNX, Keras, SavedModel, a server) computes the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from dsmooth.models.normalize import Normalize

NUM_CLASSES = 10


class SmallCNN(nn.Module):
    """Normalize, two convolutions (one strided), batch norm, pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


def build() -> nn.Module:
    """A fixed, randomly initialised SmallCNN (seed 0), with non-trivial BN statistics."""
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(0)
        model = SmallCNN()
        bn = model.features[3]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
        model.head.weight.data.mul_(4.0)  # confident logits: few near-ties under noise
    return model.eval()


def build_untrained() -> nn.Module:
    """The same architecture with other weights (for weight-loading tests)."""
    torch.manual_seed(1)
    return SmallCNN().eval()
