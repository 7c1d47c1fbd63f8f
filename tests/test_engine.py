"""The sampling engine: same fp32 counts whatever the batch size or engine options;
compile failures fall back to eager with one warning; bf16 only inside the classifier."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import certify_args, torch_threads
from torch import nn

from dsmooth import Smooth
from dsmooth.cli import main
from dsmooth.errors import UserError
from dsmooth.pipeline import engine, host
from dsmooth.pipeline.engine import EngineOptions, accelerate

SHAPE = (3, 8, 8)
EAGER = EngineOptions(precision="fp32", compile=False, channels_last=False)


class TinyConvNet(nn.Module):
    """Two conv+BN+ReLU blocks, pooling, a linear layer: 4 classes on 3x8x8 images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.fc = nn.Linear(8 * 4 * 4, 4)
        for m in self.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():  # spread the logits so noise moves the label around
            self.eval()
            centre = self.features(torch.full((1, *SHAPE), 0.5))
            self.fc.bias.copy_(-self.fc(centre)[0] + self.fc.bias)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models gain nothing from two, and on a busy machine each
    parallel region can wait a whole time slice for its second thread. Restored after
    (the CLI's --threads changes it too)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))


def counts_with(options: EngineOptions | None, image, batch_size: int, num: int = 300):
    model = TinyConvNet()
    base = model if options is None else accelerate(model, options)
    return Smooth(base, 4, 0.5, seed=3).sample_counts(image, num, batch_size, index=5)


def test_fp32_counts_independent_of_batch_size_and_options(image):
    reference = counts_with(None, image, 300)
    assert (reference > 0).sum() >= 2  # more than one class: label flips would show
    for options, batch in [
        (EAGER, 1),
        (EAGER, 7),
        (EAGER, 64),
        (EngineOptions(precision="fp32", compile=False, channels_last=True), 13),
        (EngineOptions(precision="fp32", compile=False, channels_last=True), 300),
    ]:
        np.testing.assert_array_equal(counts_with(options, image, batch), reference)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_fp32_counts_equal_eager_and_short_batches_reuse_the_graph(image):
    """One real compilation (a tiny model): batch 32 over 80 samples = 32, 32, 16; the
    short batch is padded into the compiled shape instead of compiling a second one."""
    options = EngineOptions(precision="fp32", compile=True, channels_last=True)
    base = accelerate(TinyConvNet(), options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn: fail
        counts = Smooth(base, 4, 0.5, seed=3).sample_counts(image, 80, 32, index=5)
    assert base.compile_error is None
    assert base._compiled is not None
    assert list(base.compile_seconds) == [(32, *SHAPE)]
    np.testing.assert_array_equal(counts, counts_with(EAGER, image, 80, num=80))


def _eager_reference(image):
    return counts_with(EAGER, image, 50, num=100)


def test_compile_raising_falls_back_to_eager_with_one_warning(image, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", broken)
    base = accelerate(TinyConvNet(), EngineOptions(precision="fp32", compile=True))
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as record:
        counts = Smooth(base, 4, 0.5, seed=3).sample_counts(image, 100, 50, index=5)
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    assert not base.compile_enabled
    assert "no C compiler" in base.compile_error
    np.testing.assert_array_equal(counts, _eager_reference(image))


def test_compiled_function_failing_at_first_call_falls_back(image, monkeypatch):
    """Inductor compiles lazily: the failure surfaces when the compiled model is called."""

    def lazy(_model, **_options):
        def call(_x):
            raise OSError("cc1plus: not found")

        return call

    monkeypatch.setattr(torch, "compile", lazy)
    base = accelerate(TinyConvNet(), EngineOptions(precision="fp32", compile=True))
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        counts = Smooth(base, 4, 0.5, seed=3).sample_counts(image, 100, 50, index=5)
    np.testing.assert_array_equal(counts, _eager_reference(image))


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_missing_cxx_compiler_falls_back(image, monkeypatch, tmp_path):
    """A real inductor failure: no working C++ compiler (and no cached kernels)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    base = accelerate(TinyConvNet(), EngineOptions(precision="fp32", compile=True))
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        counts = Smooth(base, 4, 0.5, seed=3).sample_counts(image, 100, 50, index=5)
    assert not base.compile_enabled
    np.testing.assert_array_equal(counts, _eager_reference(image))


def test_a_bad_input_raises_the_models_own_error(monkeypatch):
    def lazy(model, **_options):
        return model

    monkeypatch.setattr(torch, "compile", lazy)
    base = accelerate(TinyConvNet(), EngineOptions(precision="fp32", compile=True))
    with pytest.raises(RuntimeError, match="channels"):
        base(torch.rand(2, 5, 8, 8))  # 5 channels: the conv itself refuses


def test_auto_precision_is_bf16_only_with_native_support(monkeypatch):
    monkeypatch.setattr(host, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert engine.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(host, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert engine.resolve_precision("auto", "cpu") == "bf16"
    assert engine.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(UserError, match="precision"):
        engine.resolve_precision("fp16", "cpu")


class DtypeRecorder(TinyConvNet):
    def forward(self, x):
        self.seen = x.dtype
        return super().forward(x)


def test_bf16_casts_inside_the_classifier_and_returns_float32(image):
    model = DtypeRecorder()
    base = accelerate(model, EngineOptions(precision="bf16", compile=False))
    x = image[None] + 0.5 * torch.randn((64, *SHAPE), generator=torch.Generator().manual_seed(0))
    out = base(x)
    assert model.seen == torch.float32  # the noisy input reaches the model in float32
    assert out.dtype == torch.float32
    with torch.inference_mode():
        fp32 = TinyConvNet()(x)
    assert not torch.equal(out, fp32)  # bf16 arithmetic did happen
    agreement = (out.argmax(1) == fp32.argmax(1)).float().mean().item()
    assert agreement >= 0.9


def test_fp32_on_cuda_turns_off_tf32_convolutions():
    """PyTorch's default runs cuDNN convolutions in TF32: not the fp32 f a log names."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        engine.ieee_fp32(torch.device("cpu"))
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)  # CPU: left as is
        engine.ieee_fp32(torch.device("cuda"))
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert cudnn.conv.fp32_precision != "tf32"  # the newer API agrees
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_black_box_callables_pass_through():
    def labels(x):
        return torch.zeros(len(x), dtype=torch.long)

    assert accelerate(labels, EngineOptions()) is labels
    wrapped = accelerate(TinyConvNet(), EAGER)
    assert accelerate(wrapped, EngineOptions()) is wrapped


def test_choose_batch_size_measures_without_compiling(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda *_args, **_kwargs: calls.append(1))
    base = accelerate(TinyConvNet(), EngineOptions(precision="fp32", compile=True))
    messages = []
    size = engine.choose_batch_size(
        base, SHAPE, candidates=(4, 16), seconds_per_candidate=0.05, report=messages.append
    )
    assert size in (4, 16)
    assert not calls
    assert base.compile_enabled
    assert "4:" in messages[0]
    assert "16:" in messages[0]


def test_bad_engine_options_are_user_errors():
    with pytest.raises(UserError, match="threads"):
        accelerate(TinyConvNet(), EngineOptions(threads=0))
    with pytest.raises(UserError, match="device"):
        accelerate(TinyConvNet(), EngineOptions(device="nonsense"))


# --- the CLI: engine flags, --batch auto, compile fallback ---------------------------------


def _certify(data, classifier, out, *extra):
    argv = certify_args(
        data, classifier, out, "--alpha", "0.01", "--max", "3", *extra, n0="10", n="60", batch=None
    )
    return main(argv)


def _rows(path):
    return [line.split("\t")[:5] for line in path.read_text().splitlines()]  # without time


def test_cli_results_do_not_depend_on_engine_flags(
    tiny_data_file, conv_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        torch, "compile", lambda *_args, **_kwargs: (_ for _ in ()).throw(OSError("no cc"))
    )
    runs = {
        "plain": ["--batch", "7", "--no-compile", "--no-channels-last", "--precision", "fp32"],
        "auto": ["--batch", "auto", "--no-compile", "--threads", "1", "--precision", "fp32"],
        "fallback": ["--batch", "64", "--compile", "--precision", "fp32"],
    }
    logs = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.tsv"
        if name == "fallback":
            with pytest.warns(RuntimeWarning, match="torch.compile failed"):
                assert _certify(tiny_data_file, conv_checkpoint, out, *flags) == 0
        else:
            assert _certify(tiny_data_file, conv_checkpoint, out, *flags) == 0
        logs[name] = _rows(out)
    assert len(logs["plain"]) == 4  # header + 3 images
    assert logs["auto"] == logs["plain"]
    assert logs["fallback"] == logs["plain"]
    assert "--batch auto measured" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch", "big"], "expected an integer or 'auto'"),
        (["--batch", "0"], "batch must be at least 1"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--precision", "fp16"], "invalid choice"),
    ],
)
def test_cli_bad_engine_flags_exit_2(
    flags, message, tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    out = tmp_path / "log.tsv"
    try:
        code = _certify(tiny_data_file, tiny_classifier_file, out, *flags)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# --- dsmooth bench ----------------------------------------------------------------------


def test_reference_loop_counts_like_the_reference():
    """The benchmark's reference loop (locuslab's _sample_noise) counts every sample."""
    from dsmooth.pipeline.bench import reference_sample_noise

    torch.manual_seed(0)
    counts = reference_sample_noise(
        lambda b: torch.eye(10)[b[:, 0, 0, 0].long() % 10], torch.zeros(SHAPE), 25, 10, 0.0
    )
    assert counts.tolist() == [25] + [0] * 9


def test_flop_counts_match_the_published_figures():
    from dsmooth.models import create

    def gflop(name):
        return engine.count_flops(create(name).eval(), (3, 32, 32)) / 1e9

    assert gflop("dncnn") == pytest.approx(1.14, abs=0.005)  # DnCNN-17, 64 channels
    assert gflop("cifar_resnet110") == pytest.approx(0.506, abs=0.005)


def test_bench_command_reports_both_loops(tmp_path, capsys):
    out = tmp_path / "bench.txt"
    argv = ["bench", "--pipelines", "cifar_resnet20", "--samples", "16", "--rounds", "1"]
    argv += ["--reference-batch", "8", "--batch", "8", "--no-compile", "--peak-size", "128"]
    argv += ["--peak-seconds", "0.05", "--no-openvino"]  # test_openvino_backend.py has it
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    row = next(line for line in text.splitlines() if line.startswith("cifar_resnet20"))
    gflop, ref, eng, ratio = (float(v) for v in row.split()[1:5])
    assert 0.07 < gflop < 0.09  # ResNet-20 on 32x32: 40.6M multiply-adds
    assert ref > 0
    assert eng > 0
    assert abs(ratio - eng / ref) < 0.01 + 0.01 * ratio
    assert "matmul peak at start: fp32" in text
    assert "load average" in text
    assert float(row.split()[-3]) > 0  # the fp32 peak measured in the same rounds


def test_bench_bad_pipeline_is_a_user_error(capsys):
    assert main(["bench", "--pipelines", "dncnn+", "--no-compile"]) == 2
    assert "[DENOISER+]CLASSIFIER" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "openvino", "verdict"),
    [
        ({"amx_bf16"}, {"bf16": 1300.0, "int8": 5000.0}, "MET"),  # 1300/s, 13x the reference
        ({"amx_bf16"}, {"bf16": 1100.0, "int8": 5000.0}, "NOT MET"),  # int8 is never default
        (set(), {"fp32": 160.0}, "MET"),  # 1.6x the torch engine
        (set(), {"fp32": 140.0, "int8": 900.0}, "NOT MET"),
    ],
)
def test_bench_target_judges_the_default_engine_by_host_type(monkeypatch, flags, openvino, verdict):
    from dsmooth.pipeline import bench

    monkeypatch.setattr(bench, "cpu_flags", lambda: frozenset(flags))
    result = bench.PipelineResult(
        "dncnn+cifar_resnet110", 1.645, reference_rate=100.0, engine_rate=100.0, batch=64,
        compile_seconds=1.0, precision="bf16", compiled=True, fp32_peak=200.0,
        openvino=openvino,
    )  # fmt: skip
    line = bench._target_line(result, best_peak=800.0)
    assert line.split(": ")[2].startswith(verdict)
    assert (
        f"default engine {max(100.0, *(v for k, v in openvino.items() if k != 'int8')):.1f}" in line
    )
