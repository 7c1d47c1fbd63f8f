"""ONNX classifiers on OpenVINO: the same fp32 certificates as onnxruntime, bf16 only
where asked for or chosen, `auto` that measures, and a log that says what ran."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_engine import SHAPE, TinyConvNet

from dsmooth import Smooth
from dsmooth.cli import main
from dsmooth.deploy.export import export
from dsmooth.errors import UserError
from dsmooth.pipeline.engine import EngineOptions, accelerate
from dsmooth.sources import load_model

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export(TinyConvNet().eval(), path, "onnx", shape=SHAPE)
    return path


def options(backend: str, precision: str = "fp32") -> EngineOptions:
    return EngineOptions(precision=precision, compile=False, backend=backend)


def counts(base, batch: int) -> np.ndarray:
    image = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    return Smooth(base, 4, 0.5, seed=3).sample_counts(image, 300, batch, index=5)


def test_fp32_counts_equal_onnxruntime_for_any_batch_size(onnx_file):
    model = load_model(str(onnx_file))
    reference = counts(model, 300)
    assert (reference > 0).sum() >= 2  # several classes: a flipped label would show
    ov = accelerate(model, options("openvino"), image_shape=SHAPE)
    assert ov.runtime == "openvino"
    assert model.runtime == "onnxruntime"
    for batch in (7, 64, 300):
        assert np.array_equal(counts(ov, batch), reference)
    assert accelerate(model, options("torch")) is model  # backend torch: its own runtime


def test_precisions_that_onnxruntime_or_onnx_cannot_run_are_refused(onnx_file):
    model = load_model(str(onnx_file))
    with pytest.raises(UserError, match="onnxruntime runs ONNX models in fp32"):
        accelerate(model, options("torch", "bf16"))
    with pytest.raises(UserError, match="int8 quantises a PyTorch graph"):
        accelerate(model, options("openvino", "int8"))


def test_auto_measures_both_and_says_which_it_keeps(onnx_file):
    lines = []
    model = load_model(str(onnx_file))
    chosen = accelerate(model, options("auto"), report=lines.append, image_shape=SHAPE)
    assert len(lines) == 1
    assert "just measured" in lines[0]
    assert f"backend auto: {chosen.runtime} (fp32: openvino" in lines[0]
    assert accelerate(model, options("auto")) is model  # no image shape: nothing to measure


def test_a_missing_openvino_leaves_onnxruntime_with_one_warning(onnx_file, monkeypatch):
    from dsmooth.pipeline import openvino_backend

    monkeypatch.setattr(openvino_backend, "unavailable", lambda: "openvino cannot be imported")
    model = load_model(str(onnx_file))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert accelerate(model, options("openvino"), image_shape=SHAPE) is model
    assert len(caught) == 1
    assert "onnxruntime instead" in str(caught[0].message)


def test_cli_log_records_the_runtime_and_equals_onnxruntimes(onnx_file, tmp_path):
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), labels=[0, 1, 2, 3])
    argv = ["certify", "--data", str(data), "--classifier", str(onnx_file), "--sigma", "0.25"]
    argv += ["--n0", "10", "--n", "60", "--alpha", "0.01", "--no-progress", "--precision", "fp32"]
    rows, records = {}, {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}.tsv"
        assert main([*argv, "--out", str(out), "--backend", backend]) == 0
        rows[backend] = [line.split("\t")[:5] for line in out.read_text().splitlines()]
        records[backend] = json.loads((tmp_path / f"{backend}.tsv.json").read_text())
    assert rows["openvino"] == rows["torch"]
    assert len(rows["torch"]) == 5
    assert records["openvino"]["engine"]["runtime"] == "openvino"
    assert records["torch"]["engine"]["runtime"] == "onnxruntime"
    for record in records.values():  # the same f: either log resumes the other's run
        assert record["precision"] == "fp32 (not a torch module)"
