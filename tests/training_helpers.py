"""Tiny registered architectures and shared CIFAR-10 data for the training tests.

The networks are small so that a few hundred real optimisation steps on real CIFAR-10
images take seconds on a shared 2-core CPU; the code paths are the product's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dsmooth.models import register
from dsmooth.models.normalize import CIFAR10_MEAN, CIFAR10_STD, NormalizedClassifier

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR = SHARED / "data" / "cifar10"
LOSSLESS = CIFAR / "cifar10_lossless_subsets.npz"
TRAIN = f"{LOSSLESS}:train_first4000"
TEST = f"{LOSSLESS}:test_first100"
AKAMASTER = SHARED / "models" / "third-party" / "cifar-resnet-akamaster"

needs_cifar = pytest.mark.skipif(not LOSSLESS.is_file(), reason="shared CIFAR-10 not present")

#: A five-layer, 16-channel DnCNN: the product's architecture at test size.
SMALL_DNCNN = {"depth": 5, "n_channels": 16}


def classifier_recipe(tmp_path, name="run", **kw):
    """A noisy-classifier recipe for the tiny CNN on 128 real CIFAR-10 images (fp32, one
    thread), `kw` replacing its fields."""
    from dsmooth.training.classifier import ClassifierRecipe

    base = dict(
        arch="test_tiny_cnn",
        data=[TRAIN],
        out=str(tmp_path / name),
        val_data=TEST,
        epochs=2,
        batch=32,
        lr=0.05,
        max_train_images=128,
        precision="fp32",
        progress=False,
        noise_sigma=0.1,
        label_smoothing=0.1,
        nesterov=True,
        threads=1,  # oversubscribed shared CPUs run small nets far faster on one thread
    )
    return ClassifierRecipe(**{**base, **kw})


def denoiser_recipe(tmp_path, objective="mse", name="d", **kw):
    """A recipe for the small DnCNN at sigma 0.25 on 256 real CIFAR-10 images (fp32, one
    thread), `kw` replacing its fields."""
    from dsmooth.training.denoiser import DenoiserRecipe

    base = dict(
        data=[TRAIN],
        out=str(tmp_path / name),
        sigma=0.25,
        objective=objective,
        arch="dncnn",
        arch_kwargs=dict(SMALL_DNCNN),
        epochs=3,
        batch=32,
        lr=1e-3,
        warmup_epochs=0.5,
        max_train_images=256,
        precision="fp32",
        progress=False,
        threads=1,
    )
    return DenoiserRecipe(**{**base, **kw})


class TinyNet(nn.Module):
    """Two strided convolutions (with BatchNorm) and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.body(x))


@register("test_tiny_cnn")
def tiny_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    return NormalizedClassifier(TinyNet(num_classes, width), CIFAR10_MEAN, CIFAR10_STD)


class Raising(nn.Module):
    """A classifier that fails the test if anything calls it."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, _x):
        raise AssertionError("the target classifier was called")


class Counting(nn.Module):
    """Wraps a classifier and counts its calls in training mode of the denoiser."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)
