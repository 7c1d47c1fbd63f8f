"""CertifyJob: everything a certification run needs, as one frozen, picklable value.

The CLI turns its arguments into a job, the local loop and the Ray workers take it, and
`build()` returns what a run needs (the Smooth, the data, the batch size, the log's
columns and provenance record) without changing the job: so a Ray worker rebuilds
exactly the driver's run from the job it was sent, and nothing has to re-parse a
command line to learn defaults. The defaults are `dsmooth certify`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dsmooth.certify.methods import Certifier, make_method
from dsmooth.certify.smooth import Smooth, check_count
from dsmooth.certify.stats import check_alpha
from dsmooth.data.images import ImageSet
from dsmooth.errors import UserError
from dsmooth.pipeline import engine
from dsmooth.sigma import check_sigma
from dsmooth.sources import options as source_options


def default_engine() -> engine.EngineOptions:
    """The engine options `dsmooth certify` defaults to (its $DSMOOTH_* variables read)."""
    return engine.EngineOptions(
        precision=engine.default_precision(),
        compile=engine.default_compile(),
        channels_last=True,
        threads=engine.default_threads(),
        backend=engine.default_backend(),
    )


class Built(NamedTuple):
    """What `CertifyJob.build` returns: everything a run needs, nothing left to mutate."""

    smooth: Smooth
    data: ImageSet
    batch: int
    columns: tuple[str, ...]
    record: dict


@dataclass(frozen=True)
class CertifyJob:
    """One certify (or, with `method` None, predict) run over a dataset.

    `classifier`, `denoiser` and `data` are specs as `dsmooth certify` takes them;
    `model_options` are the classifier's `load_model` options (foreign weights, input
    contract, remote client). `method` is a `dsmooth.certify.methods.Certifier`; `n` and
    `alpha` are PREDICT's, and `n` is also the estimation budget a sequential log
    records (default: the method's).
    """

    classifier: str
    data: str
    _: KW_ONLY
    sigma: float
    method: Certifier | None = None
    out: str | None = None
    denoiser: str | None = None
    num_classes: int | None = None
    model_options: tuple[tuple[str, Any], ...] = ()
    device: str = "cpu"
    size: int | None = None
    class_names: str | None = None
    skip: int = 1
    max: int = -1
    n: int | None = None
    alpha: float | None = None
    batch: int | str = 64
    seed: int = 0
    noise: str = "auto"
    strict: bool = False
    stop_if_misclassified: bool = False
    engine: engine.EngineOptions = field(default_factory=default_engine)
    calibration_images: int = 300

    def __post_init__(self):
        if isinstance(self.model_options, Mapping):
            object.__setattr__(self, "model_options", tuple(sorted(self.model_options.items())))
        if self.out is not None:
            object.__setattr__(self, "out", str(self.out))
        object.__setattr__(self, "data", str(self.data))

    @classmethod
    def from_options(cls, options: Mapping, *, predict: bool = False) -> CertifyJob:
        """The job that `dsmooth certify` (or `predict`) with these options would run,
        by the flags' names (n0, n, alpha, batch, max, method, radius, precision,
        request_size...); the method object is made here, its flags checked first."""
        return job_from_options(options, predict=predict)

    @property
    def command(self) -> str:
        """'certify', or 'predict' for a job without a method."""
        return "predict" if self.method is None else "certify"

    @property
    def n0(self) -> int | None:
        return None if self.method is None else self.method.n0

    @property
    def certifier(self) -> Certifier:
        """The certification method, or a UserError for a job without one (predict)."""
        if self.method is None:
            raise UserError("the job has no certification method; give it one to certify.")
        return self.method

    @property
    def log_path(self) -> str:
        """The output log, or a UserError for a job without one."""
        if self.out is None:
            raise UserError("a certification job needs an output log (out).")
        return self.out

    @property
    def n_estimate(self) -> int:
        """The estimation samples the log records as `n`."""
        n = self.n
        if n is None:
            n = getattr(self.method, "n", None) or getattr(self.method, "n_max", None)
        if n is None:
            raise UserError("give the job n, the estimation samples its log records.")
        return int(n)

    @property
    def level(self) -> float:
        """The failure probability alpha."""
        alpha = self.alpha if self.alpha is not None else getattr(self.method, "alpha", None)
        if alpha is None:
            raise UserError("give the job alpha, the failure probability its log records.")
        return float(alpha)

    def with_paths_resolved(self) -> CertifyJob:
        """The job with the data and model files as absolute paths (for workers that may
        run in another folder)."""
        changes: dict[str, Any] = {}
        for key in ("data", "classifier", "denoiser"):
            value = getattr(self, key)
            if value and Path(value).exists():
                changes[key] = str(Path(value).resolve())
        return replace(self, **changes)

    def _check_matches_method(self) -> None:
        """The record takes n0, n and alpha from the job: a method certifying with other
        values would leave a record (and a radius cap, a report) that misstates its rows."""
        if self.method is None:
            return
        for name in ("n0", "n", "alpha"):
            mine, its = getattr(self, name), getattr(self.method, name, None)
            if mine is not None and its is not None and mine != its:
                raise UserError(
                    f"the job's {name} ({mine}) differs from its method's ({its}); give it "
                    "once, in the method."
                )

    def check(self) -> None:
        """The cheap checks, before any model is loaded: sample counts, alpha, sigma, the
        selection of images, the model options' names, and the log (its folder writable,
        an existing one readable)."""
        check_sigma(self.sigma)
        check_alpha(self.level)
        self._check_matches_method()
        if self.n0 is not None and self.n0 < 1:
            check_count("n0", self.n0)
        check_count("n", self.n_estimate)
        if self.batch != "auto":
            check_count("batch", int(self.batch))
        if self.skip < 1:
            raise UserError(f"skip must be at least 1, got {self.skip}.")
        given = dict(self.model_options)
        source_options.SourceOptions.from_mapping(given)
        reserved = sorted(set(given) & set(source_options.CALLER_FIELDS))
        if reserved:
            raise UserError(
                f"model options {reserved} are the job's own to set (its device, the "
                "classifier's role), not options of the classifier; drop them."
            )
        check_out_folder(self.log_path)
        check_existing_log(self.log_path)

    def planned_samples(self, images: int) -> int:
        """About how many noise samples the run still draws (at most): the images of its
        range not in its log yet x (n0 + n or n_max). A resumed run with little left
        then neither compiles nor measures backends for work it will not do."""
        stop = images if self.max < 0 else min(self.max, images)
        count = len(set(range(0, stop, max(1, self.skip))) - self.logged())
        n = max(self.n_estimate, getattr(self.method, "n_max", None) or 0)
        return count * ((self.n0 or 0) + n)

    def logged(self) -> set[int]:
        """The image indices already in the job's log (none without one)."""
        from dsmooth.logs.result_log import read_rows

        if self.out is None or not Path(self.out).is_file():
            return set()
        try:
            return {int(i) for i in read_rows(self.out).columns["idx"]}
        except (UserError, KeyError):  # not a log: the run refuses it with its reason
            return set()

    def load_data(self) -> ImageSet:
        from dsmooth.pipeline.build import load_data

        return load_data(self.data, self.size)

    def load_base(self, device, channels: int | None = None):
        """f(D(.)) of this job, composed at its sigma (dsmooth.pipeline.build.load_base)."""
        from dsmooth.pipeline.build import load_base

        return load_base(
            self.classifier, self.denoiser, device=device, sigma=self.sigma,
            strict=self.strict, channels=channels, options=dict(self.model_options),
        )  # fmt: skip

    def build(self, data: ImageSet | None = None) -> Built:
        """Load the data (unless given) and the models, infer and check the number of
        classes, set up the engine and return what the run needs."""
        from dsmooth.logs.result_log import PREDICT_COLUMNS
        from dsmooth.pipeline import build as pipeline
        from dsmooth.runs.columns import certify_columns, log_columns

        data = self.load_data() if data is None else data
        device = engine.resolve_device(self.device)
        shape = tuple(data.image(0).shape)
        base = self.load_base(device, channels=int(shape[0]))
        num_classes = self.num_classes or pipeline.infer_num_classes(base, data, device)
        if self.num_classes is not None:
            pipeline.probe_output_size(base, data, device, num_classes)
        pipeline.align_labels(data, num_classes, self.class_names)
        pipeline.check_labels(data, num_classes)
        options = replace(self.engine, device=self.device)
        options = engine.for_work(options, self.planned_samples(len(data)))
        precision = engine.resolve_precision(options.precision, device)
        smooth, batch = pipeline.smooth_for(
            base, num_classes, sigma=self.sigma, image_shape=shape, options=options, seed=self.seed,
            noise=pipeline.resolve_noise(self.noise, data, self.data), batch=self.batch,
            first=self.n0 or self.n_estimate,
            calibration=pipeline.calibration_for(
                data, precision, self.sigma, self.seed, self.calibration_images
            ),
        )  # fmt: skip
        if self.method is None:
            columns = log_columns(PREDICT_COLUMNS, smooth.base_classifier, data, self.out)
        else:
            columns = certify_columns(
                self.method, smooth.base_classifier, data, self.out,
                stop_if_misclassified=self.stop_if_misclassified,
            )  # fmt: skip
        return Built(smooth, data, batch, columns, run_record(self, smooth, data, batch))


def run_record(job: CertifyJob, smooth: Smooth, data: ImageSet, batch: int) -> dict:
    """The provenance record of a job's log (dsmooth.logs.provenance): what decides its rows,
    from the models and engine actually built, not from the defaults."""
    from dsmooth.pipeline.engine import backend_of, is_engine

    base: Any = smooth.base_classifier  # duck-typed: an engine, an ONNX model, a callable
    eng = base if is_engine(base) else None
    if eng is not None:
        precision = eng.precision
    elif getattr(base, "precision", "fp32") == "fp32":  # black-box, or ONNX in fp32
        precision = "fp32 (not a torch module)"
    else:  # an ONNX model OpenVINO runs in bf16: another f than fp32's
        precision = f"{base.precision} ({base.runtime})"
    record = provenance_record(
        job,
        eng.model if eng is not None else base,
        num_classes=smooth.num_classes,
        precision=precision,
        device=eng.device if eng is not None else smooth.device,
        data=data,
        compiled=bool(eng.compile_enabled) if eng is not None else False,
        batch=batch,
        backend=backend_of(base),
        calibration=getattr(eng, "calibration", None),
        graph_cache=getattr(eng, "cache", None),
        noise_mode=smooth.noise,
    )
    # once per process, not per row: the rows' time column excludes it (docs/engine.md)
    seconds = sum(getattr(eng, "compile_seconds", {}).values())
    record["engine"]["compile_seconds"] = round(float(seconds), 1)
    if getattr(base, "runtime", None):  # what ran a model the engine does not convert
        record["engine"]["runtime"] = base.runtime
    return record


def provenance_record(
    job: CertifyJob,
    base,
    *,
    num_classes: int,
    precision: str,
    device,
    data: ImageSet,
    compiled: bool,
    batch: int | str,
    backend: str = "torch",
    calibration: dict | None = None,
    graph_cache: str | None = None,
    noise_mode: str = "gaussian",
) -> dict:
    """The record from its parts (the Ray driver has no engine of its own)."""
    from dsmooth.certify import noise
    from dsmooth.logs import provenance

    if job.denoiser:
        models = {
            "classifier": provenance.describe_model(job.classifier, base.classifier),
            "denoiser": provenance.describe_model(job.denoiser, base.denoiser),
        }
    else:
        models = {"classifier": provenance.describe_model(job.classifier, base)}
    if job.method is None:
        method_entries = {"method": "predict", "radius": None, "n_max": None, "tol": None}
    else:  # method, radius, n_max, tol
        method_entries = job.method.record()
    determining = {
        "sigma": float(job.sigma),
        "alpha": job.level,
        "n0": job.n0,
        "n": job.n_estimate,
        **method_entries,
        "seed": job.seed,
        "noise_version": noise.NOISE_VERSION,
        "noise": noise_mode,
        "num_classes": num_classes,
        "precision": precision,
        "backend": backend,
        "calibration": calibration,
        "device_type": torch.device(device).type,
        "cuda_fp32": "ieee" if (torch.device(device).type, precision) == ("cuda", "fp32") else None,
        "models": models,
        "data": {"spec": str(job.data), "images": len(data)},
        "class_names": job.class_names,
        "stop_if_misclassified": bool(job.stop_if_misclassified),
    }
    informing: dict[str, Any] = {
        "device": str(device),
        "engine": {
            "asked_precision": job.engine.precision,
            "asked_backend": job.engine.backend,
            "graph_cache": graph_cache,
            "compile": compiled,
            "channels_last": bool(job.engine.channels_last),
            "batch": batch,
            "threads": torch.get_num_threads(),
        },
    }
    denoiser = getattr(base, "denoiser", None) if job.denoiser else None
    timestep = getattr(denoiser, "timestep", None)
    if timestep is not None:  # a diffusion denoiser's t*
        informing["denoiser_timestep"] = int(timestep)
        informing["denoiser_steps"] = int(getattr(denoiser, "steps", 1))
    return provenance.record(job.command, determining, informing)


def check_existing_log(out) -> None:
    """Refuse a malformed log before any model is loaded, rather than once it is about to
    be resumed (ResultLog checks it again then, against the run's exact columns)."""
    from dsmooth.logs.result_log import read_rows

    path = Path(out)
    if not (path.is_file() and path.stat().st_size > 0):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    if not {"idx", "label", "predict"} <= set(header):
        raise UserError(
            f"{path} exists but is not a result log (header: {' '.join(header)}); "
            "choose another --out."
        )
    read_rows(path)


def check_out_folder(out) -> None:
    """A UserError, before anything is loaded or printed, when the log cannot be created."""
    folder = Path(out).parent
    if not folder.is_dir():
        raise UserError(f"the output folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise UserError(f"the output folder {folder} is not writable.")


#: `load_model` options a certify job passes on (the classifier's foreign weights, input
#: contract and remote client; docs/sources.md), by their `dsmooth certify` names: the
#: `SourceOptions` fields but role, device and contract.
MODEL_OPTIONS = source_options.MODEL_OPTIONS

#: Engine options by their `dsmooth certify` names (EngineOptions fields).
ENGINE_OPTIONS = ("precision", "compile", "channels_last", "threads", "backend")

#: Options that decide the method (dsmooth.certify.methods.make_method).
METHOD_OPTIONS = ("method", "n0", "radius", "n_max", "tol")

#: `dsmooth certify` options about how a run is driven, not what it computes.
RUN_OPTIONS = ("no_progress", "ray", "workers", "sorted", "func", "command")

#: Options that must be given.
REQUIRED = ("classifier", "data", "sigma", "out")


def job_from_options(options: Mapping, *, predict: bool = False) -> CertifyJob:
    """CertifyJob.from_options: `dsmooth certify`'s defaults, overridden by `options`."""
    job_fields = {f.name for f in fields(CertifyJob)} - {"_", "method", "model_options", "engine"}
    known = job_fields | set(MODEL_OPTIONS) | set(ENGINE_OPTIONS) | set(METHOD_OPTIONS)
    unknown = sorted(set(options) - known - set(RUN_OPTIONS))
    if unknown:
        raise UserError(f"unknown certify options {unknown}; use dsmooth certify's option names.")
    missing = [name for name in REQUIRED if options.get(name) is None]
    if missing:
        raise UserError(f"certify options {missing} are required.")
    given = {k: options[k] for k in job_fields if options.get(k) is not None}
    given.setdefault("n", 100_000)
    given.setdefault("alpha", 0.001)
    defaults = default_engine()
    engine_given = {k: options[k] for k in ENGINE_OPTIONS if k in options}
    return CertifyJob(
        **given,
        method=None
        if predict
        else method_from_options(options, n=given["n"], alpha=given["alpha"]),
        model_options=tuple(
            sorted((k, options[k]) for k in MODEL_OPTIONS if options.get(k) is not None)
        ),
        engine=replace(defaults, **engine_given),
    )


def method_from_options(options: Mapping, *, n: int, alpha: float) -> Certifier:
    """The method object from `dsmooth certify`'s flags (--method, --n0, --radius,
    --n-max, --tol), which are checked here first so that an error names the flag."""
    n_max, radius, tol = (options.get(k) for k in ("n_max", "radius", "tol"))
    if n_max is not None:
        check_count("n-max", n_max)
    if radius is not None and any(not (r >= 0) or math.isinf(r) for r in radius):
        raise UserError(f"--radius values must be finite and >= 0, got {radius}.")
    if tol is not None and not (tol > 0):
        raise UserError(f"--tol must be positive, got {tol}.")
    return make_method(
        options.get("method") or "cp", n0=options.get("n0", 100), n=n, alpha=alpha,
        radius=radius, n_max=n_max, tol=tol,
    )  # fmt: skip
