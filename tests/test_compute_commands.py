"""evaluate and test-denoiser run their models as certify does: the same engine options
and precision default, and every denoiser that certify takes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from helpers import torch_threads
from safetensors.torch import save_file
from torch import nn

from dsmooth.cli import build_parser, main
from dsmooth.data.datasets import load_dataset
from dsmooth.models import create
from dsmooth.pipeline.evaluation import evaluate_accuracy


class Identity(nn.Module):
    """D(x) = x: a denoiser whose test-denoiser scores must equal no denoiser's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity_denoiser() -> nn.Module:
    """A Python entry point (`tests/test_compute_commands.py:identity_denoiser`)."""
    return Identity()


@pytest.fixture
def keep_threads():
    """--threads sets torch's thread count for the whole process: put it back."""
    with torch_threads():
        yield


def test_evaluate_and_test_denoiser_default_to_certifys_precision(monkeypatch):
    monkeypatch.setenv("DSMOOTH_PRECISION", "auto")  # the suite's own default is fp32
    parser = build_parser()
    common = ["--data", "d.npz", "--sigma", "0.25"]
    certify = parser.parse_args(["certify", *common, "--classifier", "c.pt", "--out", "l.tsv"])
    evaluate = parser.parse_args(["evaluate", *common, "--classifier", "c.pt"])
    test = parser.parse_args(["test-denoiser", *common, "--denoiser", "d"])
    assert certify.precision == evaluate.precision == test.precision == "auto"


def test_evaluate_takes_the_engine_options_of_certify():
    parser = build_parser()
    engine = ["--precision", "bf16", "--backend", "torch", "--compile", "--no-channels-last"]
    engine += ["--threads", "1", "--calibration-images", "10"]
    base = ["--data", "d.npz", "--classifier", "c.pt"]
    certify = parser.parse_args(["certify", *base, "--sigma", "0.25", "--out", "l", *engine])
    evaluate = parser.parse_args(["evaluate", *base, *engine])
    names = ("precision", "backend", "compile", "channels_last", "threads", "calibration_images")
    assert {k: getattr(evaluate, k) for k in names} == {k: getattr(certify, k) for k in names}


@pytest.mark.usefixtures("keep_threads")
def test_evaluate_runs_the_classifier_through_the_engine(
    tiny_classifier_file, tiny_data_file, capsys
):
    argv = ["evaluate", "--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    argv += ["--sigma", "0.25", "--json", "--no-progress"]
    engine = ["--precision", "bf16", "--backend", "torch", "--no-compile", "--no-channels-last"]
    assert main([*argv, *engine, "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["engine"] == {
        "backend": "torch",
        "precision": "bf16",
        "asked_backend": "torch",
        "asked_precision": "bf16",
        "device": "cpu",
        "compile": False,
        "channels_last": False,
        "batch": 256,
        "threads": 1,
    }
    assert "dsmooth: engine: torch bf16 (asked torch bf16), device cpu, compile off" in err

    assert main(argv) == 0  # the defaults: fp32 in this suite (DSMOOTH_PRECISION)
    result = json.loads(capsys.readouterr().out)
    assert result["engine"]["precision"] == "fp32"
    assert result["engine"]["backend"] == "torch"
    data = load_dataset(str(tiny_data_file), "test")
    direct = evaluate_accuracy(
        torch.jit.load(str(tiny_classifier_file)), data, sigma=0.25, progress=False
    )
    assert {k: result[k] for k in direct} == direct  # fp32 through the engine: same numbers


@pytest.fixture
def denoisers(tmp_path) -> dict[str, str]:
    """One denoiser in each form certify's --denoiser takes, without Keras (slow to import;
    tests/test_sources_local.py covers its source). All but the shipped one are D(x) = x."""
    torchscript = tmp_path / "identity.pt"
    torch.jit.save(torch.jit.script(Identity()), str(torchscript))
    weights = tmp_path / "dncnn.safetensors"  # a fresh DnCNN is exactly the identity
    save_file({k: v.contiguous() for k, v in create("dncnn").state_dict().items()}, str(weights))
    return {
        "torchscript": str(torchscript),
        "entry point": f"{__file__}:identity_denoiser",
        "ARCH:PATH": f"dncnn:{weights}",
        "pretrained": "pretrained:cifar10-dncnn-mse-0.25",
    }


@pytest.mark.parametrize("kind", ["torchscript", "entry point", "ARCH:PATH", "pretrained"])
def test_test_denoiser_takes_every_denoiser_certify_takes(
    kind, denoisers, tiny_classifier_file, tiny_data_file, tmp_path
):
    report = tmp_path / "r.json"
    argv = ["test-denoiser", "--denoiser", denoisers[kind], "--sigma", "0.25"]
    argv += ["--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    assert main([*argv, "--json", str(report), "--no-progress"]) == 0
    r = json.loads(report.read_text())
    assert r["n"] == 12
    assert math.isfinite(r["psnr"])
    assert r["precision"] == "fp32"
    if kind != "pretrained":
        assert r["psnr"] == pytest.approx(r["psnr_noisy_input"], abs=1e-6)
        assert r["noisy_acc"] == r["no_denoiser_noisy_acc"]


def test_test_denoiser_scores_a_black_box_classifier(tiny_data_file, tmp_path):
    """An ONNX classifier answers in numpy: test-denoiser counts its answers all the same."""
    pytest.importorskip("onnxruntime")
    from dsmooth.deploy.export import export

    f = LinearClassifier(3 * 8 * 8, 3).eval()
    onnx_file, torchscript = tmp_path / "f.onnx", tmp_path / "f.pt"
    export(f, onnx_file, "onnx", shape=(3, 8, 8))
    torch.jit.save(torch.jit.script(f), str(torchscript))
    identity = tmp_path / "identity.pt"
    torch.jit.save(torch.jit.script(Identity()), str(identity))
    reports = {}
    for name, spec in (("onnx", onnx_file), ("torch", torchscript)):
        argv = ["test-denoiser", "--denoiser", str(identity), "--classifier", str(spec)]
        argv += ["--sigma", "0.25", "--data", str(tiny_data_file), "--no-progress"]
        assert main([*argv, "--json", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["onnx"]["noisy_acc"] == reports["torch"]["noisy_acc"]
    assert reports["onnx"]["clean_acc"] == reports["torch"]["clean_acc"]
    assert np.isfinite(reports["onnx"]["psnr"])
