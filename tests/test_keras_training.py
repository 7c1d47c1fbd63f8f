"""Stab training through a Keras classifier: gradients reach the denoiser, and they are
the gradients the PyTorch original gives (Keras 3 on its PyTorch backend is white-box).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from byoc_models import ASSET, build
from torch.nn import init

from dsmooth.deploy.export import export
from dsmooth.models import create
from dsmooth.sources import load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("keras") is None,
        reason="needs the [keras] extra (part of [test], so CI runs this)",
    ),
]


def stab_loss(classifier, denoiser, clean, noisy):
    """Salman et al.'s Stab objective: CE(f(D(x + d)), argmax f(x)), f frozen."""
    with torch.no_grad():
        targets = classifier(clean).argmax(1)
    return F.cross_entropy(classifier(denoiser(noisy)), targets)


def small_denoiser() -> torch.nn.Module:
    torch.manual_seed(0)
    d = create("dncnn", depth=4, n_channels=8)
    last = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    init.normal_(last.weight, std=0.05)  # not the identity: gradients reach every layer
    return d


@pytest.fixture(scope="module")
def keras_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    export(build(), path, "keras", check_tensorflow=False)
    return load_model(str(path))


@pytest.fixture(scope="module")
def batch():
    d = np.load(ASSET)
    clean = torch.from_numpy(d["images"][:8]).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(0)
    return clean, clean + 0.25 * torch.randn(clean.shape, generator=g)


def test_stab_gradients_through_keras_equal_pytorch(keras_classifier, batch):
    clean, noisy = batch
    grads = []
    for classifier in (keras_classifier, build()):
        for p in classifier.parameters():
            p.requires_grad_(False)
        denoiser = small_denoiser()
        loss = stab_loss(classifier, denoiser, clean, noisy)
        loss.backward()
        grads.append([p.grad.clone() for p in denoiser.parameters()])
        assert all(p.grad is not None for p in denoiser.parameters())
        assert all(p.grad is None for p in classifier.parameters())  # frozen
    via_keras, via_torch = grads
    assert all(float(g.abs().sum()) > 0 for g in via_keras)
    for a, b in zip(via_keras, via_torch, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_a_few_stab_steps_through_keras_lower_the_loss(keras_classifier, batch):
    clean, noisy = batch
    denoiser = small_denoiser()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-2)
    before = stab_loss(keras_classifier, denoiser, clean, noisy).item()
    for _ in range(6):
        optimizer.zero_grad()
        stab_loss(keras_classifier, denoiser, clean, noisy).backward()
        optimizer.step()
    after = stab_loss(keras_classifier, denoiser, clean, noisy).item()
    assert after < 0.9 * before


def test_training_objective_accepts_a_keras_classifier(keras_classifier, batch):
    """The denoiser trainer's own stab objective runs through the Keras model."""
    objectives = pytest.importorskip("dsmooth.training.objectives")
    clean, noisy = batch
    denoiser = small_denoiser()
    objective = objectives.DenoiserObjective("stab", [keras_classifier])
    loss, _ = objective(denoiser(noisy), clean, torch.zeros(len(clean), dtype=torch.long), 0)
    loss.backward()
    expected = stab_loss(keras_classifier, small_denoiser(), clean, noisy)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert all(float(p.grad.abs().sum()) > 0 for p in denoiser.parameters())
