"""The OpenVINO backend: a white-box PyTorch base classifier converted once to OpenVINO
and run by its CPU runtime in fp32, bf16 or int8.

int8 is NNCF post-training quantisation, calibrated on noisy images x + N(0, sigma^2) at
the run's sigma, since those (not clean images) are what f sees during certification.
The calibration noise comes from its own seeded stream, never from the certification's.

Conversion (tracing f(D(.))) costs tens of seconds and calibration more, so both are
cached under the dsmooth cache folder, keyed by everything that decides the graph: the
weights and code of the modules, the input shape, int8's sigma and calibration set, and
the OpenVINO and NNCF versions. fp32 and bf16 share one graph (precision is a hint to the
runtime). An entry whose record does not match its key, or whose files do not match their
recorded checksums, is rebuilt, never reused.

A certificate holds for the base classifier that ran: an int8 or bf16 graph is a
different f from the fp32 one (docs/engine.md).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmooth._io import write_json
from dsmooth.errors import UserError

PRECISIONS = ("fp32", "bf16", "int8")
#: Calibration images for int8 when the caller does not say (NNCF's default is 300).
CALIBRATION_IMAGES = 300
_GRAPH_FORMAT = 2  # bump when what a cache entry holds changes


def unavailable() -> str | None:
    """None when OpenVINO can be used here, else why not (one phrase)."""
    try:
        import openvino  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        return f"openvino cannot be imported ({type(e).__name__}: {e})"
    return None


def cache_root() -> Path:
    """$DSMOOTH_CACHE, else $XDG_CACHE_HOME/dsmooth, else ~/.cache/dsmooth."""
    if os.environ.get("DSMOOTH_CACHE"):
        return Path(os.environ["DSMOOTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsmooth"


def module_fingerprint(model: nn.Module) -> str | None:
    """A checksum of a module's weights, of the settings of every submodule (its name,
    `extra_repr` and plain attributes: strides, paddings, a composition's sigma) and of
    the code of every module class in it, or None when some code cannot be read (then
    nothing is cached: a changed forward with the same weights must never reuse an old
    graph). Equal weights with another stride or sigma give another key."""
    from dsmooth.logs.provenance import tensor_sha256

    h = hashlib.sha256(b"fingerprint v2|" + tensor_sha256(model).encode())
    seen: set[type] = set()
    for name, m in model.named_modules():
        cls = type(m)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{m.extra_repr()}|".encode())
        h.update(_plain_attributes(m).encode())
        if isinstance(m, torch.jit.ScriptModule):
            try:
                h.update(str(m.code).encode())
            except Exception:
                return None
            continue
        if cls in seen or cls.__module__.startswith("torch.nn."):
            continue  # torch's own layers: their version is in the key
        seen.add(cls)
        try:
            h.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            return None
    return h.hexdigest()


_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(m: nn.Module) -> str:
    """A module's own settings held as plain Python values (what `forward` may read
    besides weights), in a stable order; tensors, submodules and hooks are left out."""
    items = []
    for key, value in sorted(vars(m).items()):
        if key.startswith("_"):
            continue
        plain = isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        )
        if plain:
            items.append(f"{key}={value!r}")
    return ";".join(items) + "|"


@dataclass(frozen=True)
class Calibration:
    """Clean images (N, C, H, W) in [0, 1]; int8 calibrates on them plus N(0, sigma^2)."""

    images: torch.Tensor
    sigma: float
    seed: int = 0

    def noisy(self) -> np.ndarray:
        # the calibration stream: Philox keyed apart from every certification draw
        rng = np.random.Generator(np.random.Philox(key=[self.seed, 0xCA11B4A7E]))
        x = self.images.detach().to("cpu", torch.float32).numpy()
        return (x + self.sigma * rng.standard_normal(x.shape)).astype(np.float32)

    def record(self) -> dict:
        x = self.images.detach().to("cpu", torch.float32).contiguous().numpy()
        return {
            "images": int(x.shape[0]),
            "sigma": float(self.sigma),
            "seed": int(self.seed),
            "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
        }


def _versions() -> dict:
    import openvino as ov

    out = {"openvino": ov.__version__, "torch": torch.__version__, "format": _GRAPH_FORMAT}
    try:
        import nncf

        out["nncf"] = nncf.__version__
    except Exception:
        out["nncf"] = None
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class GraphCache:
    """OpenVINO graphs (model.xml + model.bin) under cache_root()/openvino/KEY/, each with
    a record.json of its full key and file checksums, written to a temporary folder and
    renamed into place (a crash leaves no half entry)."""

    def __init__(self, root: Path | None = None):
        self.root = (root or cache_root()) / "openvino"

    def key(self, record: dict) -> str:
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]

    def load(self, record: dict):
        """The cached graph for `record`, or None (missing, or not what it claims)."""
        import openvino as ov

        entry = self.root / self.key(record)
        try:
            saved = json.loads((entry / "record.json").read_text())
        except (OSError, ValueError):
            return None
        if saved.get("key") != record:
            return None
        files = saved.get("files", {})
        for name in ("model.xml", "model.bin"):
            path = entry / name
            if not path.is_file() or files.get(name) != _file_sha256(path):
                return None
        return ov.Core().read_model(str(entry / "model.xml"))

    def store(self, record: dict, graph) -> None:
        import openvino as ov

        self.root.mkdir(parents=True, exist_ok=True)
        entry = self.root / self.key(record)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            ov.save_model(graph, str(tmp / "model.xml"), compress_to_fp16=False)
            files = {n: _file_sha256(tmp / n) for n in ("model.xml", "model.bin")}
            (tmp / "record.json").write_text(
                json.dumps({"key": record, "files": files}, indent=1, sort_keys=True)
            )
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _host() -> str:
    """The CPU model and the flags that decide which backend is faster."""
    from dsmooth.pipeline.host import cpu_flags, cpu_model

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    return f"{cpu_model()} [{' '.join(f for f in wanted if f in flags)}] x{os.cpu_count()}"


def choice_key(fingerprint: str, image_shape, precision: str, options) -> str:
    """What a remembered `auto` choice depends on: model, input, host, threads, options."""
    parts = {
        "model": fingerprint,
        "input": [int(s) for s in image_shape],
        "precision": precision,
        "host": _host(),
        "threads": int(options.threads or torch.get_num_threads()),
        "compile": bool(options.compile),
        "channels_last": bool(options.channels_last),
        **_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _choices_file() -> Path:
    return cache_root() / "openvino" / "backend_choices.json"


def recall(key: str) -> dict | None:
    """The choice `auto` made earlier for `key`, or None."""
    try:
        found = json.loads(_choices_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(found, dict) and found.get("backend") in ("torch", "openvino")
    return found if ok and isinstance(found.get("rates"), dict) else None


def remember(key: str, choice: dict) -> None:
    path = _choices_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known[key] = choice
    write_json(path, known, indent=1, sort_keys=True)


def _has_native_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine:
    """A base classifier run by OpenVINO: float32 NCHW torch batches in, float32 torch
    outputs out, any batch size (the graph has a dynamic batch dimension).

    `model` stays available (provenance reads its weights); `cache` says whether the
    graph was "reused", "built" (and stored) or built without caching ("off").
    """

    backend = "openvino"
    compile_enabled = False

    def __init__(
        self,
        model: nn.Module,
        image_shape: tuple[int, ...],
        *,
        precision: str = "fp32",
        threads: int | None = None,
        calibration: Calibration | None = None,
        cache: GraphCache | None = None,
        use_cache: bool = True,
        report: Callable[[str], None] | None = None,
        fingerprint: str | None = None,
    ):
        """`fingerprint`: module_fingerprint(model) when the caller already computed it
        (hashing a large model's weights and code takes seconds)."""
        import openvino as ov

        if precision not in PRECISIONS:
            raise UserError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}.")
        if precision == "int8" and calibration is None:
            raise UserError("int8 needs calibration images (the run's data at its sigma).")
        self.model = model.eval()
        self.device = torch.device("cpu")
        self.precision = precision
        self.image_shape = tuple(int(s) for s in image_shape)
        self.calibration = calibration.record() if precision == "int8" else None
        self.report = report
        core = ov.Core()
        if precision == "bf16" and not _has_native_bf16(core):
            raise UserError(
                "OpenVINO reports no native bf16 on this CPU; use --precision fp32 (or int8)."
            )
        cache = cache or GraphCache()
        if use_cache and fingerprint is None:
            fingerprint = module_fingerprint(self.model)
        fingerprint = fingerprint if use_cache else None
        graph_key = {
            "model": fingerprint,
            "input": [-1, *self.image_shape],
            "int8": self.calibration,
            **_versions(),
        }
        graph = cache.load(graph_key) if fingerprint else None
        self.cache = "reused" if graph is not None else ("built" if fingerprint else "off")
        if graph is None:
            graph = self._convert()
            if precision == "int8":
                graph = self._quantize(graph, calibration)
            if fingerprint:
                cache.store(graph_key, graph)
        hint = "bf16" if precision == "bf16" else "f32"
        self.threads = int(threads or torch.get_num_threads())
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = core.compile_model(graph, "CPU", config)

    def _convert(self):
        import openvino as ov

        example = torch.rand((2, *self.image_shape), generator=torch.Generator().manual_seed(0))
        if self.report is not None:
            self.report("dsmooth: converting the base classifier to OpenVINO (cached after) ...")
        with torch.no_grad():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", torch.jit.TracerWarning)
                try:
                    shape = [(-1, *self.image_shape)]
                    graph = ov.convert_model(self.model, example_input=example, input=shape)
                    traced_error = None
                except Exception as e:
                    graph, traced_error = None, e
            warned = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
            if graph is not None and not warned:
                return graph
            # A trace that warned took a Python value from a tensor (a branch, a shape) and
            # may compute another function on other inputs; and the TorchScript frontend
            # lacks some aten aliases (Keras' BatchNormalization emits aten::subtract).
            # torch.export refuses data-dependent branches and lowers aliases to core ops.
            try:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                program = torch.export.export(
                    self.model.eval(), (example,), dynamic_shapes=({0: batch},)
                )
                return ov.convert_model(program)
            except Exception as export_error:
                if traced_error is not None:
                    raise traced_error from None
                first = str(warned[0].message).split(".")[0]
                raise RuntimeError(
                    f"the traced graph may not hold for other inputs ({first}) and "
                    f"torch.export failed ({type(export_error).__name__})"
                ) from None

    def _quantize(self, graph, calibration: Calibration):
        try:
            import nncf
        except Exception as e:
            raise UserError(f"int8 needs the nncf package ({type(e).__name__}: {e}).") from None
        noisy = calibration.noisy()
        if self.report is not None:
            self.report(
                f"dsmooth: calibrating int8 on {len(noisy)} noisy images at sigma "
                f"{calibration.sigma:g} (cached after) ..."
            )
        dataset = nncf.Dataset([noisy[i : i + 1] for i in range(len(noisy))])
        # NNCF's defaults (symmetric activations, fast bias correction) agreed with fp32 on
        # 83% of noisy draws through the Stab DnCNN + ResNet-20; the mixed preset
        # (asymmetric activations) with full bias correction on 93%
        # (benchmarks/results/precision_agreement_stab_resnet20_avx2.txt)
        return nncf.quantize(
            graph,
            dataset,
            subset_size=len(noisy),
            preset=nncf.QuantizationPreset.MIXED,
            fast_bias_correction=False,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.image_shape:
            raise UserError(
                f"the OpenVINO graph was built for images {self.image_shape}, got "
                f"{tuple(x.shape[1:])}."
            )
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self._compiled(arr)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def __repr__(self) -> str:
        return (
            f"OpenVINOEngine(precision={self.precision}, threads={self.threads}, "
            f"cache={self.cache})"
        )
