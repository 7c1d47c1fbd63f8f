"""Small models for the bring-your-own-classifier tests (also an entry point target).

`build()` is what `tests/byoc_models.py:build` names; its weights are set by a seed so
every source (TorchScript, ONNX, Keras, SavedModel, a server) computes the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmooth.models import register
from dsmooth.models.normalize import Normalize

NUM_CLASSES = 10
ASSET = Path(__file__).resolve().parents[1] / "src/dsmooth/assets/cifar10_test_every20.npz"


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
    """A fixed SmallCNN whose answers vary from image to image and under noise.

    Random weights (seed 0), then batch-norm statistics and a whitened linear head
    calibrated on noisy CIFAR-10 images shipped with dsmooth, so that noisy samples
    land in many classes (label tests are not trivially passed by a constant model)
    and some images certify while others abstain at sigma 0.25.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN().eval()
    g = torch.Generator().manual_seed(1)
    data = np.load(ASSET)
    cal = torch.from_numpy(data["images"][100:356]).permute(0, 3, 1, 2).float() / 255
    cal = cal + 0.25 * torch.randn(cal.shape, generator=g)
    bn = model.features[3]
    with torch.no_grad():
        h = model.features[:3](model.normalize(cal))
        bn.running_mean.copy_(h.mean((0, 2, 3)))
        bn.running_var.copy_(h.var((0, 2, 3)))
        f = model.features(model.normalize(cal))
        mu, sd = f.mean(0), f.std(0) + 1e-3
        w = torch.randn(NUM_CLASSES, f.shape[1], generator=g) * 4.0
        model.head.weight.copy_(w / sd)
        model.head.bias.copy_(-(w / sd) @ mu)
    return model


def build_untrained() -> nn.Module:
    """The same architecture with other weights (for weight-loading tests)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return SmallCNN().eval()


class LabelHead(nn.Module):
    """A classifier that answers labels (argmax) instead of scores."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).argmax(dim=1)


# Registered so a dsmooth checkpoint of it can name its architecture.
register("byoc_small_cnn")(SmallCNN)
