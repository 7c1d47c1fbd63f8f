"""The `dsmooth bench` measurements: noise samples/s of the certify loop, reference loop
vs our engine.

In one run and side by side (interleaved rounds, so a busy shared machine slows both
alike), for each pipeline `[denoiser+]classifier` of registry architectures with random
weights on 32x32 images:

(a) the reference implementation's loop (locuslab/smoothing `Smooth._sample_noise`,
    `.cuda()` replaced by the CPU): fp32 eager, batch 400, `torch.randn_like` noise,
    argmax, counts with a Python loop over samples;
(b) `Smooth.sample_counts` through the torch engine (`dsmooth.pipeline.engine`) with the chosen
    options;
(c) the same through the OpenVINO backend at the same precision (fp32, or bf16 where
    OpenVINO has it natively), and (d) OpenVINO int8 (NNCF, calibrated on 64 random
    images plus noise), when OpenVINO is installed (`--no-openvino` skips them).

It prints samples/s, the ratios to (a) and to (b), FLOPs per sample (convolutions and linear layers,
counted with hooks), achieved GFLOP/s, and that as a fraction of the matmul peaks measured
in the same run (the fp32 peak again in each pipeline's rounds, under the same load).
The engine side builds its Smooth with the one recipe certification uses
(`dsmooth.pipeline.build.smooth_for`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from math import ceil

import numpy as np
import torch

from dsmooth.pipeline.engine import EngineOptions
from dsmooth.pipeline.host import cpu_flags

DEFAULT_PIPELINES = ["dncnn+cifar_resnet110", "dncnn+cifar_resnet20", "cifar_resnet110"]
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
#: Engine v2's targets for DnCNN-17 + ResNet-110's default engine: on an AMX host a rate
#: and a ratio to the reference; elsewhere a ratio to the torch engine.
TARGET_RATE, TARGET_RATIO, TARGET_OVER_TORCH = 1200.0, 12.0, 1.5


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What one `dsmooth bench` run measures, and how (its flags)."""

    sigma: float = 0.25
    samples: int = 800  # noise samples per side per round
    rounds: int = 2
    reference_batch: int = 400
    batch: int | str = "auto"
    peak_size: int = 4096
    peak_seconds: float = 1.0
    openvino: bool = True
    device: str = "cpu"
    engine: EngineOptions = field(default_factory=EngineOptions)  # (b), the torch engine


def _count_arr(arr: np.ndarray, length: int) -> np.ndarray:
    counts = np.zeros(length, dtype=int)
    for idx in arr:
        counts[idx] += 1
    return counts


def reference_sample_noise(
    base_classifier: Callable, x: torch.Tensor, num: int, batch_size: int, sigma: float
) -> np.ndarray:
    """locuslab/smoothing code/core.py `Smooth._sample_noise`, on the CPU."""
    with torch.no_grad():
        counts = np.zeros(NUM_CLASSES, dtype=int)
        for _ in range(ceil(num / batch_size)):
            this_batch_size = min(batch_size, num)
            num -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = base_classifier(batch + noise).argmax(1)
            counts += _count_arr(predictions.cpu().numpy(), NUM_CLASSES)
        return counts


#: A denoiser name that is not a registry architecture: the UNet of google/ddpm-cifar10-32
#: with random weights, one-shot at t* for --sigma (docs/diffusion.md).
DDPM = "ddpm_cifar10"


def build_pipeline(spec: str, sigma: float = 0.25) -> torch.nn.Module:
    """`dncnn+cifar_resnet110` -> Composed(classifier, denoiser) with random weights,
    composed at `sigma` (the DDPM's timestep follows it)."""
    from dsmooth.errors import UserError
    from dsmooth.models import create
    from dsmooth.pipeline.compose import compose

    parts = spec.split("+")
    if len(parts) > 2 or not all(parts):
        raise UserError(f"a pipeline is [DENOISER+]CLASSIFIER, got {spec!r}.")
    torch.manual_seed(0)
    classifier = create(parts[-1])
    denoiser = None
    if len(parts) == 2 and parts[0] == DDPM:
        from dsmooth.models.diffusion import random_ddpm_cifar10

        denoiser = random_ddpm_cifar10()
    elif len(parts) == 2:
        denoiser = create(parts[0])
    return compose(classifier, denoiser, sigma).eval().requires_grad_(False)


def matmul_peak(dtype: torch.dtype, size: int, min_seconds: float = 1.0) -> tuple[float, int]:
    """(GFLOP/s, size) of a size x size matmul in `dtype`; emulated bf16 is measured at
    1/4 of the size (it runs ~50x slower than fp32 and would take minutes at 4096)."""
    from dsmooth.pipeline.host import native_bf16

    if dtype == torch.bfloat16 and not native_bf16("cpu"):
        size = max(64, size // 4)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        a @ b
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9, size


@dataclass
class PipelineResult:
    spec: str
    gflop: float  # per sample
    _: KW_ONLY
    reference_rate: float
    engine_rate: float
    batch: int
    compile_seconds: float
    precision: str
    compiled: bool
    fp32_peak: float  # GFLOP/s, measured in the same interleaved rounds
    openvino: dict[str, float] = field(default_factory=dict)  # precision -> samples/s

    @property
    def ratio(self) -> float:
        return self.engine_rate / self.reference_rate


def bench_pipeline(
    spec: str, settings: BenchSettings, report: Callable[[str], None]
) -> PipelineResult:
    """Measure one pipeline: (a) against (b), and (c)/(d) with OpenVINO, interleaved."""
    from dsmooth.pipeline import engine
    from dsmooth.pipeline.build import smooth_for

    reference = build_pipeline(spec, settings.sigma)
    flops = engine.count_flops(reference, IMAGE_SHAPE)
    # no thread measurement per pipeline: `run` set the threads once for all of them
    options = settings.engine
    if options.threads == "auto":
        options = replace(options, threads=None)
    smooth, batch = smooth_for(
        copy.deepcopy(reference), NUM_CLASSES, sigma=settings.sigma, image_shape=IMAGE_SHAPE,
        options=options, batch=settings.batch, warm_up=False, report=report,
    )  # fmt: skip
    fast = smooth.base_classifier
    x = torch.rand(IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    smooth.sample_counts(x, batch, batch, index=0)  # warm-up: compiles (once per process)
    warm = time.perf_counter() - start
    compile_seconds = sum(getattr(fast, "compile_seconds", {}).values())
    compiled = bool(getattr(fast, "compile_enabled", False))
    samples = settings.samples
    reference_sample_noise(
        reference, x, min(settings.reference_batch, samples), 400, settings.sigma
    )
    others = openvino_paths(reference, settings, fast, report) if settings.openvino else {}
    for s in others.values():
        s.sample_counts(x, batch, batch, index=0)  # warm-up
    t_ref = t_eng = 0.0
    t_other = dict.fromkeys(others, 0.0)
    peaks = []
    for r in range(settings.rounds):
        peaks.append(matmul_peak(torch.float32, settings.peak_size, settings.peak_seconds)[0])
        start = time.perf_counter()
        reference_sample_noise(reference, x, samples, settings.reference_batch, settings.sigma)
        t_ref += time.perf_counter() - start
        start = time.perf_counter()
        smooth.sample_counts(x, samples, batch, index=r + 1)
        t_eng += time.perf_counter() - start
        for name, s in others.items():
            start = time.perf_counter()
            s.sample_counts(x, samples, batch, index=r + 1)
            t_other[name] += time.perf_counter() - start
    total = samples * settings.rounds
    result = PipelineResult(
        spec,
        flops / 1e9,
        reference_rate=total / t_ref,
        engine_rate=total / t_eng,
        batch=batch,
        compile_seconds=compile_seconds if compiled else warm,
        precision=getattr(fast, "precision", "fp32"),
        compiled=compiled,
        fp32_peak=float(np.mean(peaks)),
        openvino={name: total / t for name, t in t_other.items()},
    )
    extra = "".join(f", openvino {k} {v:.1f}/s" for k, v in result.openvino.items())
    report(
        f"{spec}: reference {result.reference_rate:.1f}/s, engine {result.engine_rate:.1f}/s "
        f"(x{result.ratio:.2f}){extra}"
    )
    return result


def openvino_paths(reference, settings: BenchSettings, fast, report) -> dict:
    """Smooth objects over the OpenVINO backend: the torch engine's precision where
    OpenVINO has it (else fp32), and int8; empty when OpenVINO is not installed."""
    from dsmooth.pipeline import engine, openvino_backend
    from dsmooth.pipeline.build import smooth_for

    if openvino_backend.unavailable() is not None or torch.device(settings.device).type != "cpu":
        return {}
    out = {}
    precision = getattr(fast, "precision", "fp32")
    g = torch.Generator().manual_seed(1)
    calibration = openvino_backend.Calibration(
        torch.rand((64, *IMAGE_SHAPE), generator=g), settings.sigma
    )
    threads = settings.engine.threads
    for p in dict.fromkeys([precision, "int8"]):
        options = engine.EngineOptions(precision=p, backend="openvino", threads=threads)
        try:
            smooth, _ = smooth_for(
                copy.deepcopy(reference), NUM_CLASSES, sigma=settings.sigma,
                image_shape=IMAGE_SHAPE, options=options,
                calibration=calibration if p == "int8" else None, warm_up=False, report=report,
            )  # fmt: skip
        except Exception as e:  # e.g. no native bf16 in OpenVINO: measure fp32 instead
            report(f"dsmooth bench: openvino {p} skipped ({e})")
            continue
        if engine.backend_of(smooth.base_classifier) == "openvino":
            out[p] = smooth
    return out


def openvino_int8_peak(size: int = 1024, min_seconds: float = 1.0) -> float | None:
    """GOP/s of a size x size int8 matmul run by OpenVINO (an NNCF-quantised linear layer
    on a batch of `size` rows), or None without OpenVINO and NNCF."""
    import warnings

    from dsmooth.pipeline import openvino_backend

    if openvino_backend.unavailable() is not None:
        return None
    try:
        import nncf
        import openvino as ov
    except Exception:
        return None
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(size, size, bias=False).eval()
    x = torch.randn(size, size, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ov.convert_model(layer, example_input=x)
        graph = nncf.quantize(graph, nncf.Dataset([x[:16].numpy()]), subset_size=1)
    compiled = ov.Core().compile_model(
        graph,
        "CPU",
        {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"},
    )
    arr = x.numpy()
    compiled(arr)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        compiled(arr)
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def format_report(results: list[PipelineResult], peaks: dict, context: dict) -> str:
    from dsmooth.pipeline.host import native_bf16

    fp32_peak, fp32_size = peaks["fp32"]
    bf16_peak, bf16_size = peaks["bf16"]
    lines = [
        "dsmooth bench: noise samples/s of the certify loop (noise + base classifier + "
        "counting), 32x32 images, random weights",
        f"machine: {context['cpu']}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {'yes' if native_bf16('cpu') else 'no'}",
        f"load average (1/5/15 min) at start: {context['load_start']}; at end: "
        f"{load_average()} (on {os.cpu_count()} CPUs)",
        "NOTE: if the load exceeds the CPU count, the machine is shared and absolute numbers "
        "are depressed; (a) and (b) run in interleaved rounds, so the ratio b/a is the "
        "side-by-side comparison.",
        f"matmul peak at start: fp32 {fp32_peak:.1f} GFLOP/s ({fp32_size}^2), bf16 "
        f"{bf16_peak:.1f} GFLOP/s ({bf16_size}^2), int8 (OpenVINO) "
        + (f"{peaks['int8']:.1f} GOP/s (1024^2)" if peaks.get("int8") else "not measured")
        + "; '% fp32 pk' uses the fp32 peak measured again in each pipeline's interleaved "
        "rounds (same load as (a) and (b))",
        f"(a) reference: fp32 eager NCHW, batch {context['reference_batch']}, randn_like, "
        "Python counting loop",
        f"(b) torch engine: {context['engine']}",
        "(c) OpenVINO at (b)'s precision where OpenVINO has it natively, else fp32; (d) "
        "OpenVINO int8 (NNCF, 64 random calibration images); same batch, same noise",
        f"samples per side: {context['samples']} x {context['rounds']} rounds",
        "",
        f"{'pipeline':<24}{'GFLOP/smp':>10}{'(a) smp/s':>11}{'(b) smp/s':>11}{'b/a':>7}"
        f"{'batch':>7}{'warm-up s':>10}{'(b) GFLOP/s':>12}{'fp32 pk':>9}{'% fp32 pk':>10}"
        f"{'% bf16 pk':>10}",
    ]
    for r in results:
        achieved = r.gflop * r.engine_rate
        lines.append(
            f"{r.spec:<24}{r.gflop:>10.3f}{r.reference_rate:>11.1f}{r.engine_rate:>11.1f}"
            f"{r.ratio:>7.2f}{r.batch:>7}{r.compile_seconds:>10.1f}{achieved:>12.1f}"
            f"{r.fp32_peak:>9.1f}{100 * achieved / r.fp32_peak:>10.1f}"
            f"{100 * achieved / bf16_peak:>10.1f}"
        )
        if r.spec == "dncnn+cifar_resnet110":
            lines.append(_target_line(r, max(r.fp32_peak, bf16_peak)))
    ov_rows = [r for r in results if r.openvino]
    ov_lines: list[str] = []
    if ov_rows:
        ov_lines = ["", f"{'pipeline':<24}{'backend':<18}{'smp/s':>9}{'x (a)':>8}{'x (b)':>8}"
                  f"{'% fp32 pk':>10}{'% bf16 pk':>10}{'% int8 pk':>10}"]  # fmt: skip
    for r in ov_rows:
        for p, rate in r.openvino.items():
            achieved = r.gflop * rate
            int8 = f"{100 * achieved / peaks['int8']:>10.1f}" if peaks.get("int8") else f"{'':>10}"
            ov_lines.append(
                f"{r.spec:<24}{'openvino ' + p:<18}{rate:>9.1f}{rate / r.reference_rate:>8.2f}"
                f"{rate / r.engine_rate:>8.2f}{100 * achieved / r.fp32_peak:>10.1f}"
                f"{100 * achieved / bf16_peak:>10.1f}{int8}"
            )
    lines += ov_lines
    return "\n".join(lines)


def _target_line(r, best_peak: float) -> str:
    """Engine v2's target for the default engine: what `--backend auto` keeps, the faster
    of (b) and (c) (int8 is never a default), judged as the host type asks."""
    native = [rate for p, rate in r.openvino.items() if p != "int8"]
    default = max([r.engine_rate, *native])
    if "amx_bf16" in cpu_flags():
        ratio = default / r.reference_rate
        met = default >= TARGET_RATE and ratio >= TARGET_RATIO
        want = f">= {TARGET_RATE:.0f} samples/s and >= {TARGET_RATIO:.0f}x the reference (AMX)"
    else:
        ratio = default / r.engine_rate
        met = ratio >= TARGET_OVER_TORCH
        want = f">= {TARGET_OVER_TORCH}x the torch engine (no AMX)"
    return (
        f"  target (engine v2): default engine {default:.1f} samples/s, {want}: "
        f"{'MET' if met else 'NOT MET'}; at 100% of the best measured matmul peak this "
        f"machine could do at most {best_peak / r.gflop:.0f} samples/s"
    )
