"""Shared fixtures: tiny models and datasets that make CLI tests fast."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

#: The suite's engine defaults, each set only where the user has not set it (tests and the
#: CLI processes they spawn inherit it): CLI tests run the engine eagerly in fp32 (results
#: then match direct Smooth calls on any CPU, and no test pays a torch.compile;
#: tests/test_engine.py covers compile and bf16) ...
SUITE_ENVIRONMENT = {
    "DSMOOTH_COMPILE": "0",
    "DSMOOTH_PRECISION": "fp32",
    # ... on torch, unless a test asks for OpenVINO (tests/test_openvino_backend.py) ...
    "DSMOOTH_BACKEND": "torch",
    # ... with one thread, not a measured count: tiny models gain nothing from two, and each
    # CLI test would pay the measurement (tests/test_engine.py covers --threads auto).
    "DSMOOTH_THREADS": "1",
}


@pytest.fixture(autouse=True, scope="session")
def _suite_environment(tmp_path_factory):
    """SUITE_ENVIRONMENT, and a graph/download cache (DSMOOTH_CACHE) in a folder of the
    test run's own, for the session; a variable the user set is left as it is."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SUITE_ENVIRONMENT.items():
            if name not in os.environ:
                mp.setenv(name, value)
        if "DSMOOTH_CACHE" not in os.environ:
            mp.setenv("DSMOOTH_CACHE", str(tmp_path_factory.mktemp("dsmooth-cache")))
        yield


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


class LinearClassifier(nn.Module):
    """Logits of a linear model on flattened [0, 1] images; deterministic weights."""

    def __init__(self, in_features: int, num_classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, in_features, generator=g) * 0.5)
            self.fc.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_classifier_file(tmp_path) -> Path:
    """A TorchScript 3-class classifier for 3x8x8 images."""
    path = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.script(LinearClassifier(3 * 8 * 8, 3).eval()), str(path))
    return path


@pytest.fixture
def tiny_data_file(tmp_path) -> Path:
    """Twelve uint8 8x8 RGB images with labels in 0..2."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
        labels=rng.integers(0, 3, 12),
    )
    return path


@pytest.fixture
def conv_checkpoint(tmp_path) -> Path:
    """A dsmooth checkpoint of a 3-class CIFAR ResNet-20: an nn.Module source, so the
    engine can compile or convert it, with a first convolution that takes 3 channels."""
    from dsmooth.models import create
    from dsmooth.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "resnet"
    save_checkpoint(
        create("cifar_resnet20", num_classes=3),
        path,
        {"architecture": "cifar_resnet20", "kwargs": {"num_classes": 3}},
    )
    return path


@pytest.fixture
def denoiser_025(tmp_path) -> Path:
    """A tiny DnCNN checkpoint (the identity at init) that records training sigma 0.25."""
    from dsmooth.models import create
    from dsmooth.models.checkpoint import save_checkpoint

    kwargs = {"depth": 3, "n_channels": 4}
    path = tmp_path / "denoiser"
    save_checkpoint(
        create("dncnn", **kwargs), path, {"architecture": "dncnn", "kwargs": kwargs, "sigma": 0.25}
    )
    return path
