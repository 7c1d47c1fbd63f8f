"""One small model through every local source: the same labels on the same noise.

The model (tests/byoc_models.py) is saved as a dsmooth checkpoint, TorchScript, a
Python entry point (file and module form, with weights), ONNX (scores and labels),
Keras 3 (.keras and legacy .h5, run on the PyTorch backend) and a TensorFlow
SavedModel (written by Keras under its TensorFlow backend, in a subprocess). Each
is loaded with `load_model` and must give the PyTorch original's labels on a fixed
batch of noisy images, and the same certified (class, radius).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from byoc_models import NUM_CLASSES, LabelHead, build
from safetensors.torch import save_file

from dsmooth.certify.base_classifier import to_labels
from dsmooth.certify.noise import NoiseStream
from dsmooth.certify.smooth import Smooth
from dsmooth.deploy.export import export
from dsmooth.errors import UserError
from dsmooth.models.checkpoint import save_checkpoint
from dsmooth.sources import load_model

TESTS = Path(__file__).resolve().parent
ASSET = TESTS.parent / "src/dsmooth/assets/cifar10_test_every20.npz"
SIGMA = 0.25

_SAVEDMODEL = """
import sys
import keras
assert keras.backend.backend() == "tensorflow"
model = keras.saving.load_model(sys.argv[1], compile=False)
model.export(sys.argv[2], format="tf_saved_model", verbose=False)
"""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    d = np.load(ASSET)
    # with the model of byoc_models: two abstentions and two certified images
    return torch.from_numpy(d["images"][:4]).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def noisy(images) -> torch.Tensor:
    """64 noisy copies of each image, from dsmooth's own noise stream."""
    parts = [
        NoiseStream(x.shape, SIGMA, seed=7, index=i, stage=1).take(64) + x
        for i, x in enumerate(images)
    ]
    return torch.cat(parts)


@pytest.fixture(scope="module")
def reference(noisy) -> torch.Tensor:
    with torch.inference_mode():
        return build()(noisy).argmax(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    model = build()
    out = {"checkpoint": folder / "ckpt"}
    save_checkpoint(model, out["checkpoint"], {"architecture": "byoc_small_cnn"})
    out["torchscript"] = folder / "small.pt"
    export(model, out["torchscript"], "torchscript")
    out["onnx"] = folder / "small.onnx"
    export(model, out["onnx"], "onnx")
    out["onnx-labels"] = folder / "labels.onnx"
    export(LabelHead(model), out["onnx-labels"], "onnx")
    out["weights"] = folder / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out["weights"]))
    out["weights.pt"] = folder / "small_state.pt"
    torch.save({"state_dict": model.state_dict()}, out["weights.pt"])
    return out


def labels_of(spec, batch: torch.Tensor, **options) -> torch.Tensor:
    model = load_model(str(spec), **options)
    with torch.inference_mode():
        return to_labels(model(batch), NUM_CLASSES)


def certified(spec, images, **options) -> list[tuple[int, float]]:
    smooth = Smooth(load_model(str(spec), **options), NUM_CLASSES, SIGMA, seed=7)
    return [smooth.certify(x, 16, 64, 0.01, batch_size=40, index=i) for i, x in enumerate(images)]


@pytest.fixture(scope="module")
def expected_certificates(images):
    smooth = Smooth(build(), NUM_CLASSES, SIGMA, seed=7)
    return [smooth.certify(x, 16, 64, 0.01, batch_size=40, index=i) for i, x in enumerate(images)]


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript", "onnx", "onnx-labels"])
def test_file_sources_give_identical_labels(kind, files, noisy, reference):
    assert torch.equal(labels_of(files[kind], noisy), reference)


def test_entry_points_with_and_without_weights(files, noisy, reference, monkeypatch):
    assert torch.equal(labels_of(f"{TESTS / 'byoc_models.py'}:build", noisy), reference)
    monkeypatch.syspath_prepend(str(TESTS))
    for weights in (files["weights"], files["weights.pt"]):  # other weights loaded into it
        got = labels_of("byoc_models:build_untrained", noisy, weights=str(weights))
        assert torch.equal(got, reference)
    assert not torch.equal(labels_of("byoc_models:build_untrained", noisy), reference)


def test_entry_point_weights_that_need_unpickling_are_refused_plainly(tmp_path):
    """A whole pickled model as --weights: one sentence of ours, none of torch's escape
    codes or its advice to load with weights_only=False (which would run the file)."""
    whole = tmp_path / "whole.pt"
    torch.save(build(), whole)
    with pytest.raises(UserError) as e:
        load_model(f"{TESTS / 'byoc_models.py'}:build_untrained", weights=str(whole))
    message = str(e.value)
    assert "safely" in message
    assert "model.state_dict()" in message
    assert "\x1b[" not in message
    assert "weights_only" not in message


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript", "onnx", "onnx-labels"])
def test_file_sources_certify_identically(kind, files, images, expected_certificates):
    assert certified(files[kind], images) == expected_certificates


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own numpy 2 notices
def test_keras_and_savedmodel_sources(files, images, noisy, reference, expected_certificates):
    """Keras on the torch backend (.keras, .h5) and a SavedModel written under TensorFlow."""
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs the [keras] and [tf] extras (part of [test], so CI runs this)")
    folder = files["onnx"].parent
    keras_file = folder / "small.keras"
    export(build(), keras_file, "keras", check_tensorflow=False)
    from dsmooth.sources.keras import import_keras

    keras = import_keras()
    h5 = folder / "small.h5"
    keras.saving.load_model(str(keras_file), compile=False).save(str(h5))
    saved = folder / "small_savedmodel"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", _SAVEDMODEL, str(keras_file), str(saved)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for spec in (keras_file, h5, saved):
        model = load_model(str(spec))
        assert model.contract.layout == "NHWC"  # read off the model's input shape
        assert torch.equal(labels_of(spec, noisy), reference), spec
    assert certified(keras_file, images) == expected_certificates
    assert certified(saved, images) == expected_certificates


def test_contract_round_trip_through_a_foreign_convention(noisy, reference, tmp_path):
    """A model that wants [0, 255] BGR NHWC, normalised by the caller, still matches."""

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build()
            self.mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)

        def forward(self, x):  # x: (N, H, W, C) BGR, (255 * x - mean) / 2
            rgb = x.permute(0, 3, 1, 2).flip(1)
            return self.net((rgb * 2.0 + self.mean * 255) / 255)

    path = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.trace(Foreign().eval(), torch.rand(2, 32, 32, 3)), str(path))
    options = dict(input_range=255, input_layout="NHWC", channel_order="BGR")
    options.update(input_mean="76.5,102,127.5", input_std="2")  # in the model's order: BGR
    got = labels_of(path, noisy, **options)
    assert torch.equal(got, reference)
    options["channel_order"] = "RGB"  # a wrong contract gives other answers
    assert not torch.equal(labels_of(path, noisy, **options), reference)


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript", "onnx"])
def test_each_source_declares_its_input_channels(kind, files):
    """What the grayscale-through-RGB check reads (tests/test_soundness_contract.py)."""
    from dsmooth.sources.contract import check_channels, declared_channels

    model = load_model(str(files[kind]))
    assert declared_channels(model) == 3
    with pytest.raises(UserError, match="1 channel but the classifier takes 3"):
        check_channels(model, 1, "classifier")
