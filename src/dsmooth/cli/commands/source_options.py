"""CLI flags for bring-your-own classifiers: the input contract and the remote client.

`add(parser)` adds them to a command that loads a classifier; `collect(args)` turns
the ones the user gave into `load_model` options (docs/sources.md).
"""

from __future__ import annotations

import argparse

from dsmooth.sources.options import MODEL_OPTIONS, WEIGHTS_OPTIONS

#: The argparse dests of the flags `add` declares, which are the `load_model` option
#: names (dsmooth.sources.options.SourceOptions): every model option but the foreign
#: weights' --arch/--mean/--std, which the models group declares (common.weights_options).
_OPTIONS = tuple(name for name in MODEL_OPTIONS if name not in WEIGHTS_OPTIONS)


def add(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "classifier input contract (ONNX, Keras, SavedModel, entry points, remote; docs/sources.md)"
    )
    g.add_argument(
        "--input-range",
        type=float,
        choices=(1.0, 255.0),
        default=None,
        help="pixel range the classifier expects: 1 ([0,1], default) or 255",
    )
    g.add_argument(
        "--input-layout",
        choices=("auto", "NCHW", "NHWC"),
        default=None,
        help="tensor layout (default auto: from the model's declared input shape, else NCHW)",
    )
    g.add_argument("--channel-order", choices=("RGB", "BGR"), default=None, help="default RGB")
    g.add_argument("--input-size", default=None, help="resize images to HxW first, e.g. 224x224")
    g.add_argument(
        "--input-mean",
        default=None,
        help="subtract this per-channel mean (in --input-range units) before calling a model "
        "that does not normalise itself, e.g. 0.485,0.456,0.406",
    )
    g.add_argument("--input-std", default=None, help="then divide by this per-channel std")
    g.add_argument(
        "--input-dtype",
        choices=("float32", "uint8"),
        default=None,
        help="uint8: round and clip to 0..255 (black-box models only; default float32)",
    )
    g.add_argument("--input-name", default=None, help="name of the model input (remote v2)")
    g.add_argument(
        "--output-name", default=None, help="which output holds scores or labels, if several"
    )
    g.add_argument(
        "--weights",
        default=None,
        help="weights for a module:function entry point (.safetensors or a .pt state dict)",
    )
    g.add_argument("--signature", default=None, help="SavedModel signature (serving_default)")

    r = p.add_argument_group("remote classifier: query access over HTTP (docs/sources.md)")
    r.add_argument(
        "--protocol",
        choices=("v2", "tfserving"),
        default=None,
        help="v2 (Open Inference Protocol) or tfserving; default: from the URL path",
    )
    r.add_argument("--request-size", type=int, default=None, help="images per request (64)")
    r.add_argument("--concurrency", type=int, default=None, help="requests in flight (4)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per request (60)")
    r.add_argument(
        "--retries",
        type=int,
        default=None,
        help="retries on connection errors, timeouts, 429 and 5xx (5), exponential backoff",
    )
    r.add_argument(
        "--retry-backoff",
        dest="backoff",
        type=float,
        default=None,
        help="first retry delay in seconds, doubled each time (0.5)",
    )
    r.add_argument(
        "--max-queries",
        type=int,
        default=None,
        help="stop (cleanly, resumable) after sending this many images; the log's queries "
        "column counts them per image",
    )
    r.add_argument("--token-env", default=None, help="environment variable holding an API token")
    r.add_argument("--token-file", default=None, help="file holding an API token")
    r.add_argument(
        "--auth-header",
        default=None,
        help="header for the token (default Authorization: Bearer TOKEN), e.g. x-api-key",
    )


def collect(args) -> dict:
    """The flags the user gave, as load_model options (absent ones are left out)."""
    return {k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None}
