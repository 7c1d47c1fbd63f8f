"""The OpenVINO backend: same fp32 certificates as torch, a cache that is never wrongly
reused, a torch fallback with one warning, `auto` that measures and says so, and int8
calibration recorded in the log."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from helpers import torch_threads
from test_engine import EAGER, SHAPE, TinyConvNet
from torch import nn

from dsmooth import Smooth, compose
from dsmooth.cli import main
from dsmooth.errors import UserError
from dsmooth.logs.provenance import differences
from dsmooth.pipeline import engine, openvino_backend
from dsmooth.pipeline.engine import EngineModule, EngineOptions, accelerate
from dsmooth.pipeline.openvino_backend import Calibration, OpenVINOEngine

pytest.importorskip("openvino")

OV_FP32 = EngineOptions(precision="fp32", compile=False, backend="openvino")


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch):
    """Each test its own cache folder (and one torch thread: tiny models)."""
    monkeypatch.setenv("DSMOOTH_CACHE", str(tmp_path / "cache"))
    with torch_threads(1):
        yield tmp_path / "cache"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))


def counts(base, image, batch: int, num: int = 300) -> np.ndarray:
    return Smooth(base, 4, 0.5, seed=3).sample_counts(image, num, batch, index=5)


def test_fp32_counts_equal_torch_for_any_batch_size(image):
    reference = counts(accelerate(TinyConvNet(), EAGER), image, 300)
    assert (reference > 0).sum() >= 2  # several classes: a flipped label would show
    ov = accelerate(TinyConvNet(), OV_FP32, image_shape=SHAPE)
    assert isinstance(ov, OpenVINOEngine)
    assert ov.precision == "fp32"
    for batch in (1, 7, 64, 300):
        np.testing.assert_array_equal(counts(ov, image, batch), reference)


def test_the_graph_cache_is_reused_only_when_it_matches(image, cache_here):
    first = OpenVINOEngine(TinyConvNet(), SHAPE)
    assert first.cache == "built"
    assert OpenVINOEngine(TinyConvNet(), SHAPE).cache == "reused"
    assert OpenVINOEngine(TinyConvNet(seed=1), SHAPE).cache == "built"  # other weights
    entries = [p for p in (cache_here / "openvino").iterdir() if p.is_dir()]
    assert len(entries) == 2
    reference = counts(first, image, 50)
    mine = openvino_backend.module_fingerprint(TinyConvNet())
    (entry,) = [
        e for e in entries if json.loads((e / "record.json").read_text())["key"]["model"] == mine
    ]
    # a damaged entry (its weights file changed) is rebuilt, not read
    blob = bytearray((entry / "model.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (entry / "model.bin").write_bytes(bytes(blob))
    assert OpenVINOEngine(TinyConvNet(), SHAPE).cache == "built"
    # a record whose key is not the one asked for is not reused either
    record = json.loads((entry / "record.json").read_text())
    record["key"]["openvino"] = "0.0"
    (entry / "record.json").write_text(json.dumps(record))
    rebuilt = OpenVINOEngine(TinyConvNet(), SHAPE)
    assert rebuilt.cache == "built"
    np.testing.assert_array_equal(counts(rebuilt, image, 50), reference)


class Doubled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) * 2


class Tripled(Doubled):
    def forward(self, x):
        return self.fc(x) * 3


def test_the_fingerprint_sees_code_as_well_as_weights():
    a, b = Doubled(), Tripled()
    b.load_state_dict(a.state_dict())
    fa, fb = openvino_backend.module_fingerprint(a), openvino_backend.module_fingerprint(b)
    assert fa
    assert fb
    assert fa != fb
    assert openvino_backend.module_fingerprint(a) == fa
    with torch.no_grad():
        a.fc.bias.add_(1)
    assert openvino_backend.module_fingerprint(a) != fa


def strided(stride: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=stride, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


class Scaled(nn.Module):
    """A sigma-aware toy denoiser: its noise level is a plain float, not a weight."""

    def __init__(self, sigma: float = 0.25):
        super().__init__()
        self.sigma = sigma

    def at_sigma(self, sigma: float) -> nn.Module:
        return Scaled(sigma)

    def forward(self, x):
        return x / (1 + self.sigma)


def test_equal_weights_with_other_settings_get_other_keys():
    """Every layer's settings count, not only the first of each class; so do plain
    attributes such as a sigma-aware denoiser's noise level."""
    a, b = strided(1), strided(2)
    weights = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in weights)
    assert openvino_backend.module_fingerprint(a) != openvino_backend.module_fingerprint(b)
    at = [compose(TinyConvNet(), Scaled(), sigma=s) for s in (0.25, 0.5)]
    assert openvino_backend.module_fingerprint(at[0]) != openvino_backend.module_fingerprint(at[1])


class Branchy(nn.Module):
    """A data-dependent branch: a trace keeps only the branch its example input took."""

    def __init__(self):
        super().__init__()
        self.net = TinyConvNet()

    def forward(self, x):
        if x.mean() > 0.5:
            return self.net(1 - x)
        return self.net(x)


def test_a_trace_that_warns_is_not_trusted():
    """The torch.rand example takes one branch; the engine must not freeze it."""
    torch.manual_seed(0)
    model = Branchy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fallback to torch says so
        fast = accelerate(model, OV_FP32, image_shape=SHAPE)
    low, high = torch.rand((8, *SHAPE)) * 0.4, 0.6 + torch.rand((8, *SHAPE)) * 0.4
    with torch.no_grad():
        for x in (low, high):
            np.testing.assert_allclose(np.asarray(fast(x)), model(x).numpy(), atol=1e-4)


def test_a_missing_openvino_falls_back_to_torch_with_one_warning(monkeypatch):
    monkeypatch.setattr(openvino_backend, "unavailable", lambda: "openvino cannot be imported")
    with pytest.warns(RuntimeWarning, match="openvino cannot be imported") as caught:
        base = accelerate(TinyConvNet(), OV_FP32, image_shape=SHAPE)
    assert isinstance(base, EngineModule)
    assert len(caught) == 1


def test_a_failing_conversion_falls_back_to_torch(monkeypatch, image):
    def broken(_self):
        raise RuntimeError("cannot trace this\nmore detail")

    monkeypatch.setattr(OpenVINOEngine, "_convert", broken)
    with pytest.warns(RuntimeWarning, match="OpenVINO failed .RuntimeError: cannot trace this"):
        base = accelerate(TinyConvNet(), OV_FP32, image_shape=SHAPE)
    assert isinstance(base, EngineModule)
    np.testing.assert_array_equal(
        counts(base, image, 50), counts(accelerate(TinyConvNet(), EAGER), image, 50)
    )


def test_auto_measures_both_says_so_and_remembers():
    said: list[str] = []
    options = EngineOptions(precision="fp32", compile=False, backend="auto")
    first = accelerate(TinyConvNet(), options, report=said.append, image_shape=SHAPE)
    line = [s for s in said if "backend auto" in s]
    assert len(line) == 1
    assert "just measured" in line[0]
    assert engine.backend_of(first) in line[0].split("backend auto: ")[1]
    said.clear()
    second = accelerate(TinyConvNet(), options, report=said.append, image_shape=SHAPE)
    assert engine.backend_of(second) == engine.backend_of(first)
    assert any("measured earlier here" in s for s in said)
    # without an image shape (a library call that cannot convert) auto is torch, silently
    assert isinstance(accelerate(TinyConvNet(), options), EngineModule)


def test_short_runs_skip_compilation_and_the_measurement():
    asked = EngineOptions(compile=None, backend="auto")
    short = engine.for_work(asked, 10 * 600)
    assert short.compile is False
    assert short.backend == "torch"
    long = engine.for_work(asked, 500 * 10_100)
    assert long.compile is True
    assert long.backend == "auto"
    forced = engine.for_work(EngineOptions(compile=True, backend="openvino"), 100)
    assert forced.compile is True
    assert forced.backend == "openvino"


def test_int8_is_openvino_only_and_needs_calibration():
    with pytest.raises(UserError, match="int8 runs on OpenVINO"):
        accelerate(
            TinyConvNet(), EngineOptions(precision="int8", backend="torch"), image_shape=SHAPE
        )
    with pytest.raises(UserError, match="calibration"):
        OpenVINOEngine(TinyConvNet(), SHAPE, precision="int8")


def test_int8_calibration_is_seeded_and_part_of_the_key():
    images = torch.rand((16, *SHAPE), generator=torch.Generator().manual_seed(0))
    a, b = Calibration(images, 0.25, 0), Calibration(images, 0.25, 1)
    np.testing.assert_array_equal(a.noisy(), Calibration(images, 0.25, 0).noisy())
    assert not np.array_equal(a.noisy(), b.noisy())
    assert np.std(a.noisy() - images.numpy()) == pytest.approx(0.25, rel=0.05)
    assert a.record() != b.record()
    assert a.record()["images"] == 16
    q = OpenVINOEngine(TinyConvNet(), SHAPE, precision="int8", calibration=a)
    assert q.cache == "built"
    assert q.calibration == a.record()
    assert OpenVINOEngine(TinyConvNet(), SHAPE, precision="int8", calibration=a).cache == "reused"
    assert OpenVINOEngine(TinyConvNet(), SHAPE, precision="int8", calibration=b).cache == "built"
    x = images + 0.25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        agree = (q(x).argmax(1) == TinyConvNet().eval()(x).argmax(1)).float().mean()
    assert agree >= 0.75  # a coarse check; benchmarks/precision_agreement.py measures it


def test_resuming_across_backends_is_refused_only_where_the_arithmetic_differs():
    fp32 = {"precision": "fp32", "backend": "torch"}
    assert differences(fp32, {**fp32, "backend": "openvino"}) == []
    bf16 = {"precision": "bf16", "backend": "torch"}
    assert differences(bf16, {**bf16, "backend": "openvino"}) == ["backend"]
    assert differences({"precision": "bf16"}, bf16) == []  # logs from before ran on torch
    calibrated = {"precision": "int8", "backend": "openvino", "calibration": {"images": 8}}
    assert differences(calibrated, {**calibrated, "calibration": {"images": 9}}) == ["calibration"]


def test_cli_openvino_fp32_log_equals_torch_and_int8_is_recorded(
    tiny_data_file, conv_checkpoint, tmp_path, capsys
):
    argv = ["certify", "--data", str(tiny_data_file), "--classifier", str(conv_checkpoint)]
    argv += ["--sigma", "0.25"]
    argv += ["--n0", "10", "--n", "60", "--alpha", "0.01", "--max", "3", "--no-progress"]
    rows = {}
    for name, flags in {
        "torch": ["--backend", "torch", "--precision", "fp32", "--batch", "7"],
        "openvino": ["--backend", "openvino", "--precision", "fp32", "--batch", "64"],
        "int8": ["--backend", "openvino", "--precision", "int8", "--calibration-images", "8"],
    }.items():
        out = tmp_path / f"{name}.tsv"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NNCF's own chatter
            assert main([*argv, "--out", str(out), *flags]) == 0
        rows[name] = [line.split("\t")[:5] for line in out.read_text().splitlines()]
        record = json.loads((tmp_path / f"{name}.tsv.json").read_text())
        assert record["backend"] == ("torch" if name == "torch" else "openvino")
        assert record["precision"] == ("int8" if name == "int8" else "fp32")
    assert rows["openvino"] == rows["torch"]
    assert len(rows["torch"]) == 4
    assert record["calibration"]["images"] == 8
    assert record["calibration"]["sigma"] == 0.25
    err = capsys.readouterr().err
    assert "engine: openvino int8" in err
    assert "engine: openvino fp32" in err


def test_bench_adds_the_openvino_paths_in_the_same_rounds(tmp_path):
    out = tmp_path / "bench.txt"
    argv = ["bench", "--pipelines", "cifar_resnet20", "--samples", "16", "--rounds", "1"]
    argv += ["--reference-batch", "8", "--batch", "8", "--no-compile", "--peak-size", "128"]
    argv += ["--peak-seconds", "0.05", "--precision", "fp32", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    text = out.read_text()
    rows = {
        tuple(line.split()[1:3]): line.split()
        for line in text.splitlines()
        if line.startswith("cifar_resnet20") and "openvino" in line
    }
    assert set(rows) == {("openvino", "fp32"), ("openvino", "int8")}
    for parts in rows.values():
        rate, vs_reference, vs_engine = (float(v) for v in parts[3:6])
        assert rate > 0
        assert vs_reference > 0
        assert vs_engine > 0
    assert "int8 (OpenVINO)" in text
