"""`dsmooth export`: ONNX, TorchScript and Keras files reload and compute what PyTorch does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from byoc_models import NUM_CLASSES, build
from torch.nn import init

from dsmooth.certify.smooth import Smooth
from dsmooth.cli import main
from dsmooth.deploy.export import TOLERANCE, export, max_error, run_keras_tensorflow, sample_inputs
from dsmooth.errors import UserError
from dsmooth.models import create
from dsmooth.models.checkpoint import save_checkpoint
from dsmooth.pipeline.compose import compose
from dsmooth.sources import load_model

HAS_KERAS = importlib.util.find_spec("keras") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
EXTRAS = "needs the [keras]/[tf] extras (part of [test], so CI runs this)"


def trained_looking_dncnn(seed: int = 0) -> torch.nn.Module:
    """A small DnCNN that is not the identity: random last layer and BN statistics."""
    torch.manual_seed(seed)
    d = create("dncnn", depth=5, n_channels=16)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    init.normal_(convs[-1].weight, std=0.05)
    for bn in (m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.1)
    return d.eval()


def outputs(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_denoiser_and_pipeline_exports_reload_and_match(tmp_path, fmt, suffix):
    denoiser = trained_looking_dncnn()
    report = export(denoiser, tmp_path / f"d{suffix}", fmt)
    assert report["max_error"] <= TOLERANCE
    x = sample_inputs((3, 24, 40), n=3, seed=1)  # another size: the export is convolutional
    if fmt == "torchscript":
        reloaded = load_model(str(tmp_path / f"d{suffix}"), role="denoiser")
        assert max_error(outputs(denoiser, x), outputs(reloaded, x)) <= TOLERANCE
    pipeline = compose(build(), denoiser)
    export(pipeline, tmp_path / f"p{suffix}", fmt)
    classifier = load_model(str(tmp_path / f"p{suffix}"))  # a classifier for certify/serve
    x = sample_inputs((3, 32, 32), n=5, seed=2)
    assert max_error(outputs(pipeline, x), outputs(classifier, x)) <= TOLERANCE


def test_export_that_cannot_match_writes_nothing(tmp_path):
    class Sigmoid(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    if HAS_KERAS:
        with pytest.raises(UserError, match="Keras export does not support"):
            export(Sigmoid(), tmp_path / "s.keras", "keras", check_tensorflow=False)
    with pytest.raises(UserError, match="format must be one of"):
        export(Sigmoid(), tmp_path / "s.tflite", "tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_KERAS and HAS_TF), reason=EXTRAS)
def test_keras_export_matches_under_tensorflow(tmp_path):
    denoiser = trained_looking_dncnn()
    path = tmp_path / "dncnn.keras"
    report = export(denoiser, path, "keras", check_tensorflow=False)
    assert report["max_error"] <= TOLERANCE  # on Keras' torch backend, in this process
    x = sample_inputs((3, 24, 40), n=3, seed=3)
    got = run_keras_tensorflow(path, x)  # Keras on TensorFlow, in a fresh process
    assert got.shape == x.shape
    assert max_error(outputs(denoiser, x), got) <= TOLERANCE
    # the Keras denoiser loads back as a dsmooth denoiser (NHWC handled) in front of ours
    reloaded = load_model(str(path), role="denoiser")
    assert max_error(outputs(denoiser, x), outputs(reloaded, x)) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.skipif(not HAS_KERAS, reason=EXTRAS)
def test_cli_exports_a_checkpoint_denoiser_and_certifies_the_export(tmp_path, capsys):
    denoiser = trained_looking_dncnn()
    ckpt = tmp_path / "dncnn"
    save_checkpoint(
        denoiser, ckpt, {"architecture": "dncnn", "kwargs": {"depth": 5, "n_channels": 16}}
    )
    classifier = f"{Path(__file__).resolve().parent / 'byoc_models.py'}:build"
    out = tmp_path / "robust.onnx"
    args = ["export", "--denoiser", str(ckpt), "--classifier", str(classifier)]
    assert main([*args, "--format", "onnx", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_error"] <= TOLERANCE
    assert out.is_file()
    keras_out = tmp_path / "dncnn.keras"
    args = ["export", "--denoiser", str(ckpt), "--format", "keras", "--out", str(keras_out)]
    assert main([*args, "--no-tensorflow-check"]) == 0
    assert keras_out.is_file()
    # the exported pipeline certifies exactly like classifier(denoiser(.)) in PyTorch
    x = torch.from_numpy(sample_inputs((3, 32, 32), n=2, seed=4)).clamp(0, 1)
    local = Smooth(compose(build(), denoiser), NUM_CLASSES, 0.25, seed=1)
    exported = Smooth(load_model(str(out)), NUM_CLASSES, 0.25, seed=1)
    for i, xi in enumerate(x):
        assert local.certify(xi, 16, 64, 0.01, 40, index=i) == exported.certify(
            xi, 16, 64, 0.01, 40, index=i
        )
