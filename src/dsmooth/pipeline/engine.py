"""How a base classifier runs fast: precision, memory format, compilation, batch size.

`accelerate(model, EngineOptions(...))` wraps a white-box base classifier (an
`nn.Module` taking float32 [0, 1] NCHW batches) in an `EngineModule` that

- casts to bf16 *inside* the classifier (autocast) when the hardware computes bf16
  natively; the noisy input still arrives in float32 (see docs/engine.md for why the
  certificate stays valid),
- runs convolutions in channels_last memory format,
- compiles with `torch.compile` (inductor, freezing: weights become constants, BatchNorm
  folds into convolutions) once per batch shape, padding short batches up to a shape it
  already compiled, and falls back to eager with one warning if compilation fails,
- runs under `torch.inference_mode`.

With `backend="openvino"` (or `auto`, when OpenVINO measures faster on this host) the
module runs through `dsmooth.pipeline.openvino_backend` instead, in fp32, bf16 or int8.

Anything else (black-box callables) passes through unchanged. Noise generation and
counting stay in `Smooth`; the engine only changes how f is evaluated.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, replace

import torch
from torch import nn

from dsmooth.errors import UserError
from dsmooth.pipeline.host import native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = ("auto", "torch", "openvino")

#: Below this many noise samples in a run, compiling (14-35 s once) costs more than it
#: saves, and `auto` backend does not spend seconds measuring: eager torch it is.
COMPILE_MIN_SAMPLES = 20_000

#: Batch sizes `--batch auto` chooses from (small batches often win on CPUs: cache).
BATCH_CANDIDATES = (16, 32, 64, 128, 256)

#: Below this many noise samples, `threads="auto"` keeps torch's count: measuring (about
#: two seconds) would cost more than a better count could save.
THREADS_MIN_SAMPLES = 1_000

#: torch's own intra-op thread count when dsmooth was imported, before anyone set it.
TORCH_THREADS = torch.get_num_threads()


def default_precision() -> str:
    """The --precision default: $DSMOOTH_PRECISION if set, else auto."""
    return os.environ.get("DSMOOTH_PRECISION", "auto")


def default_compile() -> bool | None:
    """The --compile default: off when $DSMOOTH_COMPILE is 0/false/no/off, on when it is
    1/true/yes/on, else None: decided by the size of the run (`for_work`).

    The test suite sets DSMOOTH_COMPILE=0 so CLI tests do not pay a compilation each.
    """
    value = os.environ.get("DSMOOTH_COMPILE", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def default_threads() -> int | str:
    """The --threads default: $DSMOOTH_THREADS if set (a count or auto), else auto."""
    value = os.environ.get("DSMOOTH_THREADS", "auto").strip().lower()
    return int(value) if value.isdigit() and int(value) > 0 else "auto"


def default_backend() -> str:
    """The --backend default: $DSMOOTH_BACKEND if set, else auto."""
    return os.environ.get("DSMOOTH_BACKEND", "auto")


@dataclass(frozen=True)
class EngineOptions:
    """How to run the base classifier; the defaults are the fast path."""

    precision: str = "auto"  # fp32 | bf16 | int8 | auto (bf16 where the hardware has it)
    compile: bool | None = True  # torch.compile, freezing, eager on failure; None: for_work's
    _: KW_ONLY
    channels_last: bool = True
    device: str = "cpu"
    threads: int | str | None = None  # torch intra-op threads; None: torch's; "auto": measured
    backend: str = "auto"  # torch | openvino | auto (measured; needs the image shape)


def for_work(options: EngineOptions, samples: int) -> EngineOptions:
    """`options` settled for a run of about `samples` noise samples: compile=None becomes
    on only when the run is long enough to repay it, and a short run skips the backend
    measurement (eager torch: nothing to convert, compile or measure)."""
    large = samples >= COMPILE_MIN_SAMPLES
    compile_ = large if options.compile is None else options.compile
    backend = options.backend
    if backend == "auto" and not large and options.precision != "int8":  # int8 is OpenVINO's
        backend = "torch"
    threads = options.threads
    if threads == "auto" and samples < THREADS_MIN_SAMPLES:
        threads = None
    return replace(options, compile=compile_, backend=backend, threads=threads)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """'fp32', 'bf16' or 'int8' for a requested precision (auto: bf16 only where native;
    never int8, which is a different classifier and only runs when asked for)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device (cpu, cuda or cuda:N), or a UserError when it is not one of those
    or does not exist here. Certify, evaluate, serve and training all check with this."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N.") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"dsmooth runs on cpu or cuda (cuda:N), not on {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"the device {device!r} was requested but this machine has no CUDA GPU.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(
            f"the device {device!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
        )
    return dev


def set_threads(threads: int | str | None) -> None:
    """Set torch's intra-op thread count (process-wide); None and "auto" (measured later,
    by `choose_threads`) leave it as it is."""
    if threads is None or threads == "auto":
        return
    if int(threads) < 1:
        raise UserError(f"threads must be at least 1, got {threads}.")
    torch.set_num_threads(int(threads))


def ieee_fp32(device: torch.device) -> None:
    """Make fp32 mean IEEE fp32 on a CUDA GPU. PyTorch runs cuDNN convolutions in TF32 there
    by default (a 10-bit mantissa): another f than the one a log records as fp32, and one
    whose labels can differ from the CPU's. A process-wide setting, as PyTorch keeps it."""
    if device.type == "cuda":
        # the flags every torch since 2.2 reads (the newer fp32_precision API, mixed with
        # them, makes later readers of these flags, inductor among them, raise)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def untraceable_part(model: nn.Module) -> str | None:
    """Why torch.compile should not trace `model`, or None: a part of it says so with a
    `compilable = False` attribute (Keras layers: dynamo recompiles them without end, one
    warning each time, and gains nothing) and gives its reason as `compile_note`."""
    for part in model.modules():
        if getattr(part, "compilable", True) is False:
            note = getattr(part, "compile_note", "")
            return note or f"{type(part).__name__} cannot be traced"
    return None


class EngineModule(nn.Module):
    """A base classifier evaluated fast; maps float32 NCHW batches to float32 outputs.

    Compiled graphs have static shapes: a batch shorter than one already compiled is
    zero-padded up to it (the extra rows are dropped), so the final short batch of a
    sampling run reuses the compiled graph instead of paying for a recompilation.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        options: EngineOptions = EngineOptions(),
        report: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        if self.precision == "int8":
            raise UserError("--precision int8 runs on OpenVINO; use --backend openvino or auto.")
        self.report = report
        set_threads(options.threads)
        if self.precision == "fp32":
            ieee_fp32(self.device)
        model = model.eval().to(self.device)
        self.channels_last = bool(options.channels_last)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        scripted = isinstance(model, torch.jit.ScriptModule)
        # TorchScript is already compiled by its own JIT; dynamo cannot trace it.
        self.compile_enabled = bool(options.compile) and not scripted
        untraceable = untraceable_part(model)
        if self.compile_enabled and untraceable is not None:
            self.compile_enabled = False
            _say(report, f"dsmooth: not compiling the base classifier: {untraceable}")
        self._compiled: Callable | None = None
        self._shapes: set[tuple[int, ...]] = set()
        #: seconds spent on the first call of each compiled batch shape
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.compile_error: str | None = None

    def extra_repr(self) -> str:
        return (
            f"precision={self.precision}, channels_last={self.channels_last}, "
            f"compile={self.compile_enabled}, device={self.device}"
        )

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _compiled_fn(self) -> Callable:
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=False, options={"freezing": True})
        return self._compiled

    def _disable_compile(self, error: BaseException) -> None:
        self.compile_enabled = False
        self._compiled = None
        first_line = (str(error).strip().splitlines() or [""])[0]
        self.compile_error = f"{type(error).__name__}: {first_line}"
        warnings.warn(
            f"dsmooth: torch.compile failed ({type(error).__name__}); running the base "
            "classifier eagerly instead (same results, slower). Pass --no-compile to skip "
            "compilation.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rest = tuple(x.shape[1:])
        fits = [s[0] for s in self._shapes if s[1:] == rest and s[0] >= n]
        if fits:
            size = min(fits)
            if size > n:
                pad = x.new_zeros((size - n, *rest))
                if self.channels_last and x.ndim == 4:
                    pad = pad.contiguous(memory_format=torch.channels_last)
                x = torch.cat([x, pad])
            return self._compiled_fn()(x)[:n]
        start = time.perf_counter()
        out = self._compiled_fn()(x)
        seconds = time.perf_counter() - start
        self._shapes.add(tuple(x.shape))
        self.compile_seconds[tuple(x.shape)] = seconds
        if self.report is not None:
            self.report(
                f"dsmooth: compiled the base classifier for batch shape {tuple(x.shape)} "
                f"in {seconds:.1f} s (once per process)"
            )
        return out

    def warm_up(self, image_shape: Sequence[int], batch_sizes: Sequence[int]) -> float:
        """Compile each batch size now (a zero batch; no-op when not compiling), so that
        the one-off cost is not charged to the first image a run times; returns seconds."""
        start = time.perf_counter()
        if self.compile_enabled:
            for b in sorted(set(batch_sizes)):
                self(torch.zeros((b, *image_shape)))
        return time.perf_counter() - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            if self.compile_enabled:
                try:
                    out = self._run_compiled(x)
                except Exception as e:  # any compiler failure: eager still works
                    out = self.model(x)  # a bad input raises the model's own error here
                    self._disable_compile(e)
            else:
                out = self.model(x)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.float()
        return out


def accelerate(
    model: Callable,
    options: EngineOptions = EngineOptions(),
    report: Callable[[str], None] | None = None,
    image_shape: Sequence[int] | None = None,
    calibration=None,
) -> Callable:
    """`model` made fast: an EngineModule (torch) or an OpenVINOEngine, or unchanged if
    it is not an nn.Module.

    OpenVINO needs `image_shape` (C, H, W) to convert the graph, and int8 needs
    `calibration` (an `openvino_backend.Calibration`). A missing or failing OpenVINO
    falls back to torch with one warning; `auto` measures both and keeps the faster.
    """
    if options.backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}.")
    if not isinstance(model, nn.Module):
        set_threads(options.threads)
        if callable(getattr(model, "on_openvino", None)):  # an ONNX file
            return _onnx_runtime(model, options, report, image_shape)
        return model
    if isinstance(model, EngineModule) or getattr(model, "backend", None) == "openvino":
        return model
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    if options.threads == "auto":
        options = replace(
            options, threads=_auto_threads(model, options, device, image_shape, report)
        )
    backend = _backend_for(options.backend, precision, device, image_shape)
    if backend == "openvino":
        return _openvino_or_torch(
            model, options, precision=precision, report=report, image_shape=image_shape,
            calibration=calibration,
        )  # fmt: skip
    if backend == "auto":
        return _measured_choice(model, options, precision, report, image_shape)
    return EngineModule(model, options, report)


def _backend_for(
    backend: str, precision: str, device: torch.device, image_shape: Sequence[int] | None
) -> str:
    """The backend that runs at `precision` on `device`: int8 is OpenVINO's; OpenVINO runs
    on the CPU and needs the image shape, so auto falls back to torch without them, and an
    explicit openvino is an error."""
    if precision == "int8" and backend == "torch":
        raise UserError("--precision int8 runs on OpenVINO; use --backend openvino or auto.")
    if precision == "int8":
        backend = "openvino"
    if backend != "torch" and device.type != "cpu":
        if backend == "openvino":
            raise UserError("the OpenVINO backend runs on the CPU; use --backend torch on GPUs.")
        backend = "torch"
    if backend != "torch" and image_shape is None:
        if backend == "openvino":
            raise ValueError("the OpenVINO backend needs image_shape to convert the model")
        backend = "torch"
    return backend


def _openvino(model, options, *, precision, report, image_shape, calibration, fingerprint=None):
    from dsmooth.pipeline.openvino_backend import OpenVINOEngine

    set_threads(options.threads)
    return OpenVINOEngine(
        model,
        tuple(image_shape),
        precision=precision,
        threads=options.threads,
        calibration=calibration,
        report=report,
        fingerprint=fingerprint,
    )


def _torch_fallback(model, options, reason: str, report):
    warnings.warn(
        f"dsmooth: {reason}; running the base classifier on torch instead.",
        RuntimeWarning,
        stacklevel=3,
    )
    precision = options.precision if options.precision != "int8" else "auto"
    return EngineModule(model, replace(options, precision=precision), report)


def _openvino_or_torch(model, options, *, precision, report, image_shape, calibration):
    from dsmooth.pipeline.openvino_backend import unavailable

    reason = unavailable()
    if reason is not None:
        return _torch_fallback(model, options, reason, report)
    try:
        return _openvino(
            model, options, precision=precision, report=report, image_shape=image_shape,
            calibration=calibration,
        )  # fmt: skip
    except UserError:
        raise
    except Exception as e:  # a graph OpenVINO cannot convert or compile
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return _torch_fallback(model, options, f"OpenVINO failed ({type(e).__name__}: {first})",
                               report)  # fmt: skip


def _measured_choice(model, options, precision, report, image_shape):
    """Torch and OpenVINO at `precision`, each measured for a few seconds on this host as
    it would run (compiled torch included); the faster one, said in one line. The choice
    is remembered per model, input, host and options (backend_choices.json in the cache)."""
    from dsmooth.pipeline.openvino_backend import (
        choice_key,
        module_fingerprint,
        recall,
        remember,
        unavailable,
    )

    torch_engine = EngineModule(model, options, report)
    reason = unavailable()
    if reason is not None:
        _say(report, f"dsmooth: backend auto: torch ({reason.split(' (')[0]})")
        return torch_engine
    fingerprint = module_fingerprint(model)
    key = choice_key(fingerprint, image_shape, precision, options) if fingerprint else None
    earlier = recall(key) if key else None
    if earlier is not None and earlier["backend"] == "torch":
        _say(report, f"dsmooth: backend auto: torch ({_rates(earlier)}, measured earlier here)")
        return torch_engine
    try:
        ov_engine = _openvino(
            model, options, precision=precision, report=report, image_shape=image_shape,
            calibration=None, fingerprint=fingerprint,
        )  # fmt: skip
    except Exception as e:
        _say(report, f"dsmooth: backend auto: torch (OpenVINO failed: {type(e).__name__})")
        return torch_engine
    if earlier is not None:
        _say(report, f"dsmooth: backend auto: openvino ({_rates(earlier)}, measured earlier here)")
        return ov_engine
    x = torch.rand((64, *image_shape), generator=torch.Generator().manual_seed(0))
    rates = {
        "torch": measure_throughput(torch_engine, x, 2.0),
        "openvino": measure_throughput(ov_engine, x, 2.0),
    }
    winner = max(rates, key=rates.get)
    choice = {"backend": winner, "precision": precision, "rates": rates}
    if key:
        remember(key, choice)
    _say(report, f"dsmooth: backend auto: {winner} ({_rates(choice)}, just measured)")
    return ov_engine if winner == "openvino" else torch_engine


def _onnx_runtime(model, options, report, image_shape):
    """An ONNX classifier on onnxruntime (backend torch: the file's own runtime) or on
    OpenVINO, which reads ONNX directly and adds bf16; `auto` measures both in fp32 and
    keeps the faster, and takes OpenVINO for bf16, which onnxruntime's CPU lacks."""
    from dsmooth.pipeline.openvino_backend import unavailable

    precision = resolve_precision(options.precision, "cpu")
    if precision == "int8":
        raise UserError("--precision int8 quantises a PyTorch graph; ONNX models run fp32 or bf16.")
    backend = options.backend
    if backend == "torch":
        if options.precision == "bf16":
            raise UserError(
                "onnxruntime runs ONNX models in fp32; use --backend openvino for bf16."
            )
        return model
    reason = unavailable()
    if reason is not None:
        if backend == "openvino":
            warnings.warn(f"dsmooth: {reason}; running the ONNX model on onnxruntime instead.",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
        return model
    threads = options.threads if isinstance(options.threads, int) else None
    if backend == "openvino" or precision == "bf16":
        if backend == "auto":
            _say(report, "dsmooth: backend auto: openvino (bf16, which onnxruntime lacks)")
        return model.on_openvino(precision, threads)
    if image_shape is None:
        return model
    compiled = model.on_openvino("fp32", threads)
    x = torch.rand((64, *image_shape), generator=torch.Generator().manual_seed(0))
    rates = {
        "torch": measure_throughput(model, x, 2.0),
        "openvino": measure_throughput(compiled, x, 2.0),
    }
    winner = "openvino" if rates["openvino"] > rates["torch"] else "onnxruntime"
    said = f"openvino {rates['openvino']:.0f}/s vs onnxruntime {rates['torch']:.0f}/s"
    _say(report, f"dsmooth: backend auto: {winner} (fp32: {said}, just measured)")
    return compiled if winner == "openvino" else model


def _rates(choice: dict) -> str:
    r = choice["rates"]
    return f"{choice['precision']}: openvino {r['openvino']:.0f}/s vs torch {r['torch']:.0f}/s"


def _say(report, message: str) -> None:
    if report is not None:
        report(message)


def is_engine(model) -> bool:
    """True for what `accelerate` returns around an nn.Module (torch or OpenVINO)."""
    return isinstance(model, EngineModule) or getattr(model, "backend", None) == "openvino"


def backend_of(model) -> str:
    """'torch' or 'openvino' for an engine; 'none' for a callable the engine leaves alone."""
    if isinstance(model, EngineModule):
        return "torch"
    return getattr(model, "backend", "none")


def measure_throughput(
    fn: Callable[[torch.Tensor], object],
    batch: torch.Tensor,
    min_seconds: float = 1.0,
    min_calls: int = 2,
    warm_up: bool = True,
) -> float:
    """Samples per second of `fn` on `batch`, after one warm-up call unless told not to."""
    with torch.inference_mode():
        if warm_up:
            fn(batch)
        calls, start = 0, time.perf_counter()
        while calls < min_calls or time.perf_counter() - start < min_seconds:
            fn(batch)
            calls += 1
            if batch.is_cuda:
                torch.cuda.synchronize(batch.device)
        return calls * batch.shape[0] / (time.perf_counter() - start)


def choose_batch_size(
    model: Callable,
    image_shape: Sequence[int],
    candidates: Sequence[int] = BATCH_CANDIDATES,
    seconds_per_candidate: float = 0.5,
    report: Callable[[str], None] | None = None,
) -> int:
    """The candidate batch size with the highest measured samples/s for `model`.

    An EngineModule is measured eagerly in its own precision and memory format, so the
    measurement does not pay one compilation per candidate; the winner is compiled on
    first use. Candidates stop growing once throughput drops twice in a row.
    """
    if not candidates:
        raise ValueError("no batch-size candidates")
    device = getattr(model, "device", torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    results: dict[int, float] = {}
    with _eagerly(model):
        worse = 0
        for b in sorted(candidates):
            x = torch.rand((b, *image_shape), generator=gen).to(device)
            results[b] = measure_throughput(model, x, seconds_per_candidate)
            best = max(results.values())
            worse = worse + 1 if results[b] < best else 0
            if worse >= 2:
                break
    choice = max(results, key=results.get)
    if report is not None:
        table = ", ".join(f"{b}: {r:.0f}/s" for b, r in results.items())
        report(f"dsmooth: --batch auto measured {table}; using batch {choice}")
    return choice


@contextlib.contextmanager
def _eagerly(model):
    """An EngineModule measured without compiling (one compilation per candidate would
    cost more than the measurement); anything else as it is."""
    was = getattr(model, "compile_enabled", None)
    if was is not None:
        model.compile_enabled = False
    try:
        yield
    finally:
        if was is not None:
            model.compile_enabled = was


def thread_candidates() -> tuple[int, ...]:
    """Thread counts `threads="auto"` measures: one, half of torch's default, all of it."""
    return tuple(sorted({1, max(1, TORCH_THREADS // 2), TORCH_THREADS}))


def choose_threads(
    model: Callable,
    image_shape: Sequence[int],
    *,
    candidates: Sequence[int] | None = None,
    batch: int = 8,
    rounds: int = 3,
    seconds: float = 0.15,
    report: Callable[[str], None] | None = None,
) -> int:
    """The intra-op thread count with the highest measured samples/s for `model`, which is
    then set process-wide.

    On a loaded machine one thread can beat all of them severalfold (every operator waits
    for its slowest thread, and a busy core makes that one slow). The candidates take
    turns round after round, so a load that comes and goes slows each alike, and the
    median round decides; after two rounds a clear winner (its worst round 20% above every
    other's best) ends the measurement. An EngineModule is measured eagerly, as
    `choose_batch_size` does.
    """
    candidates = sorted(set(candidates or thread_candidates()))
    if len(candidates) == 1:
        set_threads(candidates[0])
        return candidates[0]
    device = getattr(model, "device", torch.device("cpu"))
    x = torch.rand((batch, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    rates: dict[int, list[float]] = {t: [] for t in candidates}
    with _eagerly(model), torch.inference_mode():
        for t in candidates:  # warm-up: the first call at a thread count is slower
            torch.set_num_threads(t)
            model(x)
        for k in range(rounds):
            for t in candidates:
                torch.set_num_threads(t)
                rates[t].append(measure_throughput(model, x, seconds, 1, warm_up=False))
            if k >= 1 and _clear_winner(rates):
                break
    median = {t: sorted(r)[len(r) // 2] for t, r in rates.items()}
    choice = max(median, key=median.get)
    torch.set_num_threads(choice)
    if report is not None:
        table = ", ".join(f"{t}: {r:.0f}/s" for t, r in median.items())
        report(f"dsmooth: --threads auto measured {table}; using {choice}")
    return choice


def _clear_winner(rates: dict[int, list[float]]) -> bool:
    best = max(rates, key=lambda t: min(rates[t]))
    return all(min(rates[best]) > 1.2 * max(r) for t, r in rates.items() if t != best)


def _auto_threads(model, options, device, image_shape, report) -> int | None:
    """`choose_threads` on the model as the engine will run it (eager), or None (torch's
    count) where there is nothing to measure: a GPU, no image shape, a single core."""
    if device.type != "cpu" or image_shape is None or len(thread_candidates()) == 1:
        return None
    precision = "auto" if options.precision == "int8" else options.precision  # int8: OpenVINO's
    probe = EngineModule(model, replace(options, precision=precision, compile=False, threads=None))
    return choose_threads(probe, image_shape, report=report)


def stderr_report(message: str) -> None:
    """Print an engine message without breaking a tqdm progress bar."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except Exception:  # pragma: no cover - tqdm is a dependency; be safe anyway
        print(message, file=sys.stderr)


def count_flops(model: Callable, image_shape: Sequence[int]) -> float:
    """FLOPs per sample (2 x multiply-adds) of the convolutions and linear layers.

    Counted with forward hooks on one sample: the layers that dominate CNN inference;
    pointwise ops, pooling and normalisation are left out (as in the usual figures).
    """
    inner = getattr(model, "model", model) if is_engine(model) else model
    total = 0.0

    def hook(module, _inputs, output):  # torch passes (module, args, output) positionally
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2.0 * output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            total += 2.0 * output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in inner.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        device = getattr(model, "device", torch.device("cpu"))
        with torch.inference_mode():
            inner(torch.rand((1, *image_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return total
