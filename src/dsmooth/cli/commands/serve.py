"""`dsmooth serve`: a model behind the Open Inference Protocol v2 and TF Serving REST, or
with --smoothed the smoothed classifier itself: a certificate per image (docs/service.md)."""

from __future__ import annotations

from dsmooth.cli.commands import common, source_options
from dsmooth.cli.options import add_options
from dsmooth.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model (e.g. classifier behind denoiser) over HTTP: Open Inference "
        "Protocol v2 and TensorFlow Serving REST",
        description="Serve classifier(denoiser(x)) (or either alone) at "
        "/v2/models/NAME/infer and /v1/models/NAME:predict. Inputs are float [0,1] NCHW "
        "images; the answer is the model's scores. Needs the [serve] extra "
        "(docs/sources.md).",
    )
    g = p.add_argument_group("model")
    add_options(
        g,
        common.MODEL_OPTIONS,
        ("classifier", "denoiser", "device"),
        helps={
            "classifier": "any classifier dsmooth can load",
            "denoiser": "optional denoiser in front of it",
        },
    )
    add_options(g, common.DENOISER_SIGMA_OPTIONS)
    source_options.add(p)
    s = p.add_argument_group("server")
    s.add_argument("--name", default="dsmooth", help="model name in the URLs (default dsmooth)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    s.add_argument(
        "--input-shape",
        default=None,
        help="C,H,W of the images, announced in metadata and checked (e.g. 3,32,32)",
    )
    s.add_argument("--max-batch", type=int, default=1024, help="images per request at most")
    add_smoothed_options(p)
    common.add_engine_options(p)
    p.set_defaults(func=run)


#: Flags of --smoothed and their defaults (None on the parser, to tell when one is given).
SMOOTHED_DEFAULTS = {
    "alpha": 0.001,
    "method": "sequential",
    "n0": 100,
    "n": 10_000,
    "n_max": None,
    "radius": None,
    "tol": None,
    "seed": 0,
    "batch": 256,
    "noise": "gaussian",
    "num_classes": None,
    "n_cap": None,
    "max_images_per_request": 64,
    "max_samples_per_request": 10_000_000,
    "queue": 256,
    "request_timeout": 60.0,
    "auth_token_file": None,
    "noise_secret_file": None,
    "public_noise": False,
    "grace": 10.0,
}


def add_smoothed_options(p) -> None:
    g = p.add_argument_group(
        "the smoothed classifier (--smoothed; docs/service.md): certificates, not scores"
    )
    g.add_argument(
        "--smoothed",
        action="store_true",
        help="serve the smoothed classifier: per image, class or abstain, certified l2 radius, "
        "pA lower bound, samples used, and the guarantee's parameters (needs --sigma and "
        "--input-shape)",
    )
    g.add_argument("--alpha", type=float, default=None, help="failure probability (0.001)")
    g.add_argument("--n0", type=int, default=None, help="selection samples (100)")
    g.add_argument("--n", type=int, default=None, help="cp: estimation samples (10000)")
    g.add_argument("--seed", type=int, default=None, help="default noise seed of requests (0)")
    g.add_argument(
        "--batch", type=int, default=None, help="noise samples per forward pass, shared (256)"
    )
    g.add_argument(
        "--noise",
        choices=("gaussian", "lattice"),
        default=None,
        help="gaussian (default) or lattice (8-bit images only; docs/certification.md)",
    )
    g.add_argument("--num-classes", type=int, default=None, help="default: the model's outputs")
    g.add_argument(
        "--n-cap",
        type=int,
        default=None,
        help="the largest n0, n or n_max a request may ask for (default: the server's own)",
    )
    g.add_argument("--max-images-per-request", type=int, default=None, help="(64)")
    g.add_argument(
        "--max-samples-per-request", type=int, default=None, help="images x samples (10000000)"
    )
    g.add_argument(
        "--queue", type=int, default=None, help="images in flight at most; beyond: 429 (256)"
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="seconds until a request gets what is certified so far (60)",
    )
    g.add_argument(
        "--auth-token-file",
        default=None,
        help="file holding the bearer token clients must send (or $DSMOOTH_SERVE_TOKEN); "
        "without one the server listens on loopback only",
    )
    g.add_argument(
        "--grace", type=float, default=None, help="seconds in-flight requests get at shutdown (10)"
    )
    g.add_argument(
        "--noise-secret-file",
        default=None,
        help="file holding a secret that keys every request's noise, so that no client can "
        "choose an image against known noise, and answers repeat across restarts (default: "
        "a random secret per process)",
    )
    g.add_argument(
        "--public-noise",
        action="store_const",
        const=True,
        default=None,
        help="noise a public function of (seed, index), as offline certify draws it: for "
        "tests and reproducible demos only, since a client who knows the model can then "
        "pick an image the noise over-certifies",
    )
    add_sequential_flags(p)


def add_sequential_flags(p) -> None:
    """--method (every registered method: one the service cannot run is refused with a
    sentence that says so), --radius, --n-max and --tol as `certify` has them
    (commands.common), with the server's default method, sequential, and None on the
    parser to tell when given."""
    common.add_sequential_options(p, default=None, shown_default="sequential")


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--input-shape must be C,H,W such as 3,32,32, got {text!r}.")
    return dims


def run(args) -> int:
    if args.smoothed:
        return run_smoothed(args)
    given = [k for k in SMOOTHED_DEFAULTS if getattr(args, k) is not None]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} needs --smoothed.")
    from dsmooth.deploy.serve import serve
    from dsmooth.pipeline.compose import compose
    from dsmooth.pipeline.engine import resolve_device
    from dsmooth.sources import load_model

    shape = parse_shape(args.input_shape)
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}.")
    device = resolve_device(args.device)
    classifier = load_model(
        args.classifier, role="classifier", device=device, **source_options.collect(args)
    )
    denoiser = load_model(args.denoiser, role="denoiser", device=device) if args.denoiser else None
    model = compose(classifier, common.prepare_denoiser(denoiser, args.sigma, args.strict))
    serve(
        model,
        args.name,
        host=args.host,
        port=args.port,
        input_shape=shape,
        max_batch=args.max_batch,
        announce=_announce,
    )
    return 0


def smoothed_settings(args):
    """The server's certification settings and limits from the flags, or a UserError."""
    from dsmooth.deploy.service.app import Limits
    from dsmooth.deploy.service.policy import CertifySettings, Policy

    for key, value in SMOOTHED_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_certification_flags(args)
    common.certify_method(args)  # checks --radius/--n-max/--tol against --method
    check_service_flags(args)
    settings = CertifySettings(
        method=args.method,
        sigma=float(args.sigma),
        alpha=float(args.alpha),
        n0=int(args.n0),
        n=int(args.n),
        n_max=int(args.n if args.n_max is None else args.n_max),  # as certify's default
        radius=tuple(args.radius) if args.radius else None,
        tol=args.tol,
        seed=int(args.seed),
        noise=args.noise,
    )
    own = settings.largest_count
    n_cap = own if args.n_cap is None else args.n_cap
    if n_cap < own:
        raise UserError(f"--n-cap ({n_cap}) is below the server's own sample count ({own}).")
    limits = Limits(
        max_images=int(args.max_images_per_request),  # the body limit follows (wire.body_limit)
        max_samples=int(args.max_samples_per_request),
        timeout=float(args.request_timeout),
    )
    return Policy(settings, n_cap), limits


def check_certification_flags(args) -> None:
    """--sigma, --alpha, --input-shape and the counts of --smoothed, or a UserError."""
    from dsmooth.certify.smooth import check_count
    from dsmooth.certify.stats import check_alpha
    from dsmooth.sigma import check_sigma

    if args.sigma is None:
        raise UserError("--smoothed needs --sigma, the noise level of the certificates.")
    check_sigma(args.sigma)
    check_alpha(args.alpha)
    if parse_shape(args.input_shape) is None:
        raise UserError("--smoothed needs --input-shape C,H,W (e.g. 3,32,32).")
    for flag in ("n0", "n", "batch", "queue", "max_images_per_request", "max_samples_per_request"):
        check_count("--" + flag.replace("_", "-"), getattr(args, flag))


def check_service_flags(args) -> None:
    """The request timeout, shutdown grace, queue and precision of --smoothed, or a
    UserError."""
    if not (args.request_timeout > 0):
        raise UserError(f"--request-timeout must be positive, got {args.request_timeout}.")
    if not (args.grace >= 0):
        raise UserError(f"--grace must be >= 0, got {args.grace}.")
    if args.max_images_per_request > args.queue:
        raise UserError(
            f"--max-images-per-request ({args.max_images_per_request}) exceeds --queue "
            f"({args.queue}): such a request could never be admitted."
        )
    if getattr(args, "precision", None) == "int8":
        raise UserError(
            "--smoothed does not run int8 (it needs calibration data); use fp32 or bf16."
        )


def noise_secret(args) -> bytes | None:
    """The secret that keys the noise: from --noise-secret-file, random for this process,
    or None with --public-noise (service.samples.keyed_seed says why)."""
    import secrets
    import sys
    from pathlib import Path

    if args.public_noise:
        if args.noise_secret_file:
            raise UserError("--public-noise and --noise-secret-file exclude each other.")
        print("dsmooth: warning: --public-noise: clients can predict the noise.", file=sys.stderr)
        return None
    if args.noise_secret_file is None:
        return secrets.token_bytes(32)
    path = Path(args.noise_secret_file)
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        raise UserError(f"cannot read the noise secret {path} ({e.strerror or e}).") from None
    if len(secret) < 16:
        raise UserError(f"the noise secret in {path} is shorter than 16 bytes; use a longer one.")
    return secret


def run_smoothed(args) -> int:
    """Load f(D(.)), wrap it in the certification service and serve it."""
    import sys

    from dsmooth.deploy.service.app import build_service_app
    from dsmooth.deploy.service.scheduler import CertificationService
    from dsmooth.deploy.service.server import check_binding, read_token, serve_app
    from dsmooth.pipeline.build import engine_for
    from dsmooth.pipeline.engine import resolve_device

    policy, limits = smoothed_settings(args)
    shape = parse_shape(args.input_shape)
    token = read_token(args.auth_token_file)
    check_binding(args.host, token)  # before minutes of model loading
    secret = noise_secret(args)
    device = resolve_device(args.device)
    base = common.load_base(args, device, channels=shape[0])
    num_classes = args.num_classes or probe_classes(base, shape, device)
    if num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {num_classes}.")
    base = engine_for(  # a server runs long: settled as for a run of 10**9 samples
        base, common.engine_options(args), samples=10**9, image_shape=shape, warm_up=(args.batch,)
    )
    service = CertificationService(
        base,
        num_classes,
        batch_size=args.batch,
        queue=args.queue,
        device=device,
        noise_secret=secret,
    )
    app = build_service_app(
        service,
        policy,
        name=args.name,
        limits=limits,
        token=token,
        input_shape=shape,
        grace=float(args.grace),
    )
    print(
        f"dsmooth: request bodies up to {limits.body_bytes(shape) / 2**20:.1f} MiB "
        f"({limits.max_images} images of {'x'.join(map(str, shape))} as JSON); give a "
        "reverse proxy at least that body limit",
        file=sys.stderr,
    )
    serve_app(
        app,
        args.host,
        port=args.port,
        token=token,
        shutdown_timeout=limits.timeout + args.grace,
        announce=_announce,
        path=f"/v2/models/{args.name}/infer and /v1/certify",
        on_shutdown=lambda: service.close(float(args.grace)),
    )
    return 0


def probe_classes(base, shape, device) -> int:
    """The model's score width, from one grey image; a UserError for label outputs."""
    import torch

    with torch.inference_mode():
        out = base(torch.full((1, *shape), 0.5, device=device))
    dims = tuple(getattr(out, "shape", ()))
    if len(dims) != 2:
        raise UserError("the model returns labels, not scores: give --num-classes.")
    return int(dims[1])


def _announce(message: str) -> None:
    print(message, flush=True)
