"""Options shared by the commands that run a smoothed classifier, as tables of flags
(dsmooth.cli.options) that each command takes whole or in part, and the few adapters from
their parsed arguments to the library (dsmooth.runs.job, dsmooth.pipeline.build)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch

from dsmooth.certify.methods import METHODS, Certifier
from dsmooth.certify.smooth import NOISE_MODES
from dsmooth.cli.commands import source_options
from dsmooth.cli.options import Later, add_options, option, table
from dsmooth.data.images import ImageSet
from dsmooth.errors import UserError
from dsmooth.logs import provenance
from dsmooth.pipeline import build as pipeline
from dsmooth.pipeline import engine
from dsmooth.pipeline.build import infer_num_classes, warn_sigma
from dsmooth.pipeline.compose import denoiser_at_sigma, sigma_aware
from dsmooth.runs.job import Built, CertifyJob, method_from_options
from dsmooth.sigma import check_sigma
from dsmooth.sources.options import WEIGHTS_OPTIONS

__all__ = ["infer_num_classes", "warn_sigma"]  # used by the commands from here


def _shipped() -> str:
    from dsmooth.models.pretrained import list_pretrained

    return ", ".join(list_pretrained()) or "none installed"


#: Every spelling a --classifier may take (dsmooth.sources), for the help texts.
MODEL_FORMS = (
    f"a shipped model, pretrained:NAME or just NAME ({_shipped()}); a dsmooth checkpoint "
    "folder; ARCH:PATH, a PyTorch state dict (.pt/.pth/.th) for a registered architecture "
    "(see --arch); TorchScript (.pt); module:function; .onnx; .keras/.h5; a TF SavedModel "
    "folder; or a model server URL, http(s)://HOST:PORT/... (docs/sources.md)"
)

#: Every spelling a --denoiser may take: white-box forms only (D runs inside f(D(.))).
DENOISER_FORMS = (
    "a shipped model (pretrained:NAME or NAME), a dsmooth checkpoint folder, ARCH:PATH "
    "(a state dict), diffusers:PATH, TorchScript (.pt), .keras, or module:function"
)

#: Every spelling --data may take (dsmooth.data.load.load_images, dsmooth.data.datasets).
DATA_FORMS = (
    "a .npz with uint8 'images' (N,H,W,C) and 'labels'; FILE.npz:PREFIX (arrays "
    "PREFIX_images, PREFIX_labels); several joined, a.npz,b.npz; a folder of *SPLIT*.npz "
    "files; an image folder, one subfolder per class, read lazily; the official "
    "cifar-10-batches-py folder; or cifar10 (downloaded once into $DSMOOTH_CACHE, default "
    "~/.cache/dsmooth); SPLIT is test unless --split says otherwise"
)


def batch_size(text: str) -> int | str:
    """argparse type of --batch: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def threads_value(text: str) -> int | str:
    """'auto' or a thread count of at least 1 (argparse type)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"threads must be at least 1, got {value}")
    return value


def _threads_help() -> str:
    return (
        "torch CPU threads; auto (default, or $DSMOOTH_THREADS) measures "
        f"{' and '.join(map(str, engine.thread_candidates()))} threads for a few seconds and "
        "keeps the fastest (on a loaded machine one thread can be several times faster "
        f"than all); runs under {engine.THREADS_MIN_SAMPLES} samples keep torch's "
        f"{engine.TORCH_THREADS}"
    )


#: --classifier, --denoiser and how to load them (add_model_options).
MODEL_OPTIONS = table(
    option("--classifier", required=True, help="base classifier: " + MODEL_FORMS),
    option(
        "--denoiser",
        default=None,
        help="optional denoiser D, certified as classifier(D(x + noise)): " + DENOISER_FORMS,
    ),
    option(
        "--num-classes",
        type=int,
        default=None,
        help="number of classes (default: from the classifier's output)",
    ),
    option(
        "--arch",
        default=None,
        help="architecture of a foreign PyTorch state dict given as --classifier (.pt/.pth/.th; "
        "or write the spec ARCH:PATH); see docs/models.md",
    ),
    option(
        "--mean",
        default=None,
        help="with --arch: the input mean built into the imported classifier "
        "(imagenet, cifar10, or R,G,B; default: the architecture's)",
    ),
    option("--std", default=None, help="with --arch: its input std (imagenet, cifar10, or R,G,B)"),
    option("--device", default="cpu", help="torch device, e.g. cpu or cuda"),
)

#: --data and which of its images (add_data_options).
DATA_OPTIONS = table(
    option("--data", required=True, help="images and labels: " + DATA_FORMS),
    option(
        "--size",
        type=int,
        default=None,
        help="image folders: resize the shorter side to SIZE*8/7 and keep the centre "
        "SIZE x SIZE crop (ImageNet: 224); default: images as they are",
    ),
    option("--skip", type=int, default=1, help="use every SKIP-th image (default 1)"),
    option("--max", type=int, default=-1, help="stop before this image index (default: all)"),
    option(
        "--class-names",
        default=None,
        help="the classifier's classes in label order, comma-separated, or 'cifar10': an "
        "image folder's subfolders are matched to them by name (needed when the folder "
        "holds only some of the classes; default: the sorted subfolder names, which must "
        "then be as many as the classifier's classes)",
    ),
)

#: --strict: a denoiser used at another sigma than it was trained for is an error.
STRICT = option(
    "--strict",
    action="store_true",
    help="refuse a denoiser whose checkpoint records a different sigma than --sigma "
    "(default: one warning on stderr)",
)

#: Certification and prediction runs: noise, samples, the log (add_sampling_options).
SMOOTHING_OPTIONS = table(
    option("--sigma", type=float, required=True, help="noise level, in [0,1] pixel units"),
    option("--n0", type=int, default=100, help="selection samples (default %(default)s)"),
    option(
        "--stop-if-misclassified",
        action="store_true",
        help="labelled benchmarks: stop an image after selection when the selected class "
        "is not its label (it counts for nothing at any radius); its row keeps the "
        "selected class, radius 0 and selection_only 1, and certified accuracy is "
        "unchanged",
    ),
    option("--n", type=int, default=100_000, help="estimation samples (default %(default)s)"),
    option("--alpha", type=float, default=0.001, help="failure probability (default 0.001)"),
    option(
        "--batch",
        type=batch_size,
        default=64,
        help="noise samples per forward pass, or 'auto' to measure the fastest (default 64)",
    ),
    option("--seed", type=int, default=0, help="noise seed (per image: seed, index)"),
    option(
        "--noise",
        choices=("auto", *NOISE_MODES),
        default="auto",
        help="gaussian: float noise added to x (Cohen et al.); lattice: the Gaussian rounded "
        "to the 1/255 grid and sampled exactly, which makes the certificate sound in "
        "floating point for 8-bit images (docs/certification.md); auto: lattice for 8-bit "
        "data (uint8 npz, image folders), else gaussian (default auto)",
    ),
    option("--out", required=True, help="result log (TSV); an existing log is resumed"),
    option("--no-progress", action="store_true", help="hide the progress bar"),
    STRICT,
)

#: --sigma (and --strict) for commands that run f(D(.)) outside certification (serve,
#: export).
DENOISER_SIGMA_OPTIONS = table(
    option(
        "--sigma",
        type=float,
        default=None,
        help="the noise level the denoiser will see ([0, 1] pixel units): required for a "
        "diffusion denoiser, which picks its timestep from it; checked against a dsmooth "
        "denoiser's training sigma otherwise",
    ),
    STRICT,
)

#: --sigma for the commands that train or test a denoiser at one noise level.
NOISE_LEVEL_OPTIONS = table(
    option("--sigma", type=float, required=True, help="noise level in [0,1] pixel units"),
)

#: How the base classifier runs (docs/engine.md); results do not depend on these in fp32.
ENGINE_OPTIONS = table(
    option(
        "--precision",
        choices=engine.PRECISIONS,
        default=Later(engine.default_precision),
        help="arithmetic inside the base classifier; auto = bf16 where the hardware has it "
        "(AMX/AVX512-BF16 CPU, CUDA), else fp32; int8 (OpenVINO, calibrated on noisy "
        "images of --data) only when asked; noise is added in float32 before it (default auto)",
    ),
    option(
        "--backend",
        choices=engine.BACKENDS,
        default=Later(engine.default_backend),
        help="what runs a PyTorch base classifier: torch (bf16/inductor), openvino, or auto: "
        "measure both for a few seconds on this host and keep the faster, remembered per "
        "model and host (default auto; runs under 20000 samples use torch)",
    ),
    option(
        "--calibration-images",
        type=int,
        default=300,
        help="int8: the first N images of --data, plus noise at --sigma from its own seeded "
        "stream, calibrate the quantisation (default 300)",
    ),
    option(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=Later(engine.default_compile),
        help="torch.compile the base classifier (freezing), once per process and batch shape; "
        "falls back to eager with a warning if compilation fails (default: on for runs of "
        f"{engine.COMPILE_MIN_SAMPLES} noise samples or more, where it repays its 15-35 s)",
    ),
    option(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format for convolutions (default on)",
    ),
    option(
        "--threads",
        type=threads_value,
        default=Later(engine.default_threads),
        metavar="N|auto",
        help=Later(_threads_help),
    ),
)


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_options(p.add_argument_group("models"), MODEL_OPTIONS)
    source_options.add(p)


def weights_options(args) -> dict:
    """Options for a foreign-weights classifier (--arch/--mean/--std), only those given."""
    return {k: getattr(args, k) for k in WEIGHTS_OPTIONS if getattr(args, k, None) is not None}


def add_data_options(p: argparse.ArgumentParser) -> None:
    add_options(p.add_argument_group("data"), DATA_OPTIONS)


def align_labels(args, data, num_classes: int) -> None:
    """The data's labels in the classifier's label order (dsmooth.data.images.match_classes)."""
    pipeline.align_labels(data, num_classes, getattr(args, "class_names", None))


def add_sampling_options(p: argparse.ArgumentParser, certify: bool) -> None:
    """The smoothing flags (without n0 and --stop-if-misclassified for predict), then the
    engine's."""
    certify_only = ("n0", "stop_if_misclassified")
    names = [k for k in SMOOTHING_OPTIONS if certify or k not in certify_only]
    add_options(p.add_argument_group("smoothing"), SMOOTHING_OPTIONS, names)
    add_engine_options(p)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """How the base classifier runs (docs/engine.md): ENGINE_OPTIONS in their own group."""
    add_options(p.add_argument_group("engine (docs/engine.md)"), ENGINE_OPTIONS)


def prepare_denoiser(denoiser, sigma: float | None, strict: bool = False):
    """The denoiser set up for --sigma (`compose.denoiser_at_sigma`): positive if given,
    required by a sigma-aware denoiser, compared with a checkpoint's training sigma."""
    if sigma is not None:
        check_sigma(sigma)
    if denoiser is None:
        return None
    if sigma is None:
        if sigma_aware(denoiser):
            raise UserError(
                "this denoiser picks its denoising step from the noise level: give --sigma "
                "(the sigma the served or exported model will see)."
            )
        return denoiser
    return denoiser_at_sigma(denoiser, sigma, strict=strict, warn=warn_sigma)


def engine_options(args):
    """EngineOptions from parsed arguments (defaults for commands without engine flags)."""
    defaults = engine.EngineOptions()
    return engine.EngineOptions(
        precision=getattr(args, "precision", defaults.precision),
        compile=getattr(args, "compile", defaults.compile),
        channels_last=getattr(args, "channels_last", defaults.channels_last),
        device=getattr(args, "device", defaults.device),
        threads=getattr(args, "threads", defaults.threads),
        backend=getattr(args, "backend", defaults.backend),
    )


def add_sequential_options(
    p: argparse.ArgumentParser,
    *,
    default: str | None = "cp",
    shown_default: str | None = None,
    methods: Sequence[str] | None = None,
) -> None:
    """--method (from the METHODS registry, or the `methods` a command supports) and the
    sequential flags. `default` None with a `shown_default` lets a command tell whether
    --method was given (serve applies its own defaults)."""
    g = p.add_argument_group("sequential certification (docs/sequential.md)")
    names = tuple(methods or METHODS)
    summary = "; ".join(f"{name}: {METHODS[name].summary}" for name in names)
    g.add_argument(
        "--method",
        choices=names,
        default=default,
        help=f"{summary} (default {shown_default or default}; docs/certification.md)",
    )
    g.add_argument(
        "--radius",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="sequential decision mode: stop once each target radius R is certified or out "
        "of reach (default: maximal-radius mode)",
    )
    g.add_argument(
        "--n-max",
        type=int,
        default=None,
        help="sequential: estimation sample budget (default: --n)",
    )
    g.add_argument(
        "--tol",
        type=float,
        default=None,
        help="sequential maximal-radius mode: stop when the radius cannot grow by more than "
        "this (default 0.1 * sigma)",
    )


def certify_method(args) -> Certifier:
    """The --method object (dsmooth.certify.methods) from certify's flags, which are checked first
    so that an error names the flag (dsmooth.runs.job.method_from_options)."""
    return method_from_options(vars(args), n=args.n, alpha=args.alpha)


def job_from_args(args, predict: bool = False) -> CertifyJob:
    """The CertifyJob a certify (or predict) command line describes, checked."""
    job = CertifyJob.from_options(vars(args), predict=predict)
    job.check()
    return job


def build_job(job: CertifyJob) -> Built:
    """Build the job, check a resumed log's provenance and say how the engine runs."""
    built = job.build()
    provenance.check_resume(job.out, built.record)
    report_engine(built.record)
    return built


def load_base(args, device: torch.device, channels: int | None = None):
    """f(D(.)) from --classifier (with its foreign-weights and contract flags) and the
    optional --denoiser, composed at --sigma when the command has it, with --strict
    (dsmooth.pipeline.build.load_base)."""
    return pipeline.load_base(
        args.classifier, args.denoiser, device=device, sigma=getattr(args, "sigma", None),
        strict=getattr(args, "strict", False), channels=channels,
        options={**weights_options(args), **source_options.collect(args)},
    )  # fmt: skip


def load_data(args) -> ImageSet:
    return pipeline.load_data(args.data, getattr(args, "size", None))


def report_summary(out, written: int) -> None:
    """One line on stderr when a certify/predict run ends, progress bar or not: the log,
    its images, and how many are right."""
    from dsmooth.analysis.tables import read_log

    log = read_log(out, warn=lambda _: None)  # quiet: `dsmooth analyze` reports problems
    if not len(log):
        what = "nothing to report"
    elif log.radius is None:
        what = (
            f"{100 * log.clean_accuracy:.1f}% predicted correctly, "
            f"{100 * log.abstain_rate:.1f}% abstained"
        )
    else:
        what = f"{100 * log.certified_accuracy(0.0):.1f}% certified correct"
        if not math.isnan(log.acr):
            what += f", average certified radius {log.acr:.3f}"
    print(f"dsmooth: {out}: {len(log)} images ({written} new); {what}", file=sys.stderr)


def report_engine(record: dict) -> None:
    """One line on stderr: how the base classifier really runs (docs/engine.md)."""
    e = record["engine"]
    print(
        f"dsmooth: engine: {e.get('runtime') or record.get('backend', 'torch')} "
        f"{record['precision']} "
        f"(asked {e.get('asked_backend')} {e['asked_precision']}), "
        f"device {record['device']}, compile {'on' if e['compile'] else 'off'}, "
        f"channels_last {'on' if e['channels_last'] else 'off'}, batch {e['batch']}, "
        f"{e['threads']} threads, noise v{record['noise_version']} "
        f"{record.get('noise', 'gaussian')}",
        file=sys.stderr,
    )
