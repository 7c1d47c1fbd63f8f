"""Keras models through the OpenVINO engine: converted (BatchNormalization included, whose
aten::subtract the TorchScript frontend lacks), the same fp32 counts as eager Keras for
any batch size, and a graph cache keyed on the Keras architecture, not only the weights
(two models with equal weights and other strides must never share a graph)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from helpers import torch_threads

pytest.importorskip("openvino")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from dsmooth import Smooth  # noqa: E402
from dsmooth.pipeline.engine import EngineOptions, accelerate  # noqa: E402
from dsmooth.pipeline.openvino_backend import OpenVINOEngine, module_fingerprint  # noqa: E402
from dsmooth.sources import load_model  # noqa: E402

SHAPE = (3, 16, 16)


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMOOTH_CACHE", str(tmp_path / "cache"))
    with torch_threads(1):
        yield


def keras_file(path, strides: int = 1, weights=None):
    """A small functional Keras CNN with fixed layer names (so equal weights get equal
    names), saved as .keras and loaded the way dsmooth loads a user's file."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SHAPE[1], SHAPE[2], SHAPE[0]))
    x = keras.layers.Conv2D(8, 3, strides=strides, activation="relu", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)  # aten::subtract: the export route
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    if weights is not None:
        model.set_weights(weights)
    model.save(path)
    return load_model(str(path), role="classifier"), model.get_weights()


def test_fp32_counts_through_openvino_equal_eager_keras(tmp_path):
    f, _ = keras_file(tmp_path / "m.keras")
    image = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))

    def counts(base, batch):
        return Smooth(base, 4, 0.5, seed=3).sample_counts(image, 200, batch, index=5)

    reference = counts(f, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to torch
        ov = accelerate(f, EngineOptions(precision="fp32", backend="openvino"), image_shape=SHAPE)
    assert isinstance(ov, OpenVINOEngine)
    for batch in (1, 7, 200):
        np.testing.assert_array_equal(counts(ov, batch), reference)


def test_equal_weights_with_other_strides_get_another_graph_key(tmp_path):
    a, weights = keras_file(tmp_path / "a.keras", strides=1)
    b, _ = keras_file(tmp_path / "b.keras", strides=2, weights=weights)
    x = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a(x), b(x))  # other functions ...
    assert module_fingerprint(a) != module_fingerprint(b)  # ... so other cache keys
    again = load_model(str(tmp_path / "a.keras"), role="classifier")
    assert module_fingerprint(again) == module_fingerprint(a)  # the same file: reused
