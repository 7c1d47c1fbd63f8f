"""`dsmooth serve`: a model behind the Open Inference Protocol v2 and TF Serving REST."""

from __future__ import annotations

from dsmooth.commands import common, source_options
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
    g.add_argument("--classifier", required=True, help="any classifier dsmooth can load")
    g.add_argument("--denoiser", default=None, help="optional denoiser in front of it")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_denoiser_sigma_option(g)
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
    p.set_defaults(func=run)


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

    from dsmooth.base import compose
    from dsmooth.engine import resolve_device
    from dsmooth.serve import serve
    from dsmooth.sources import load_model

    shape = parse_shape(args.input_shape)
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}.")
    device = resolve_device(args.device)
    classifier = load_model(
        args.classifier, role="classifier", device=device, **source_options.collect(args)
    )
    denoiser = load_model(args.denoiser, role="denoiser", device=device) if args.denoiser else None
    model = compose(classifier, common.prepare_denoiser(denoiser, args.sigma))
    serve(model, args.name, args.host, args.port, shape, args.max_batch, _announce)
    return 0


def _announce(message: str) -> None:
    print(message, flush=True)
