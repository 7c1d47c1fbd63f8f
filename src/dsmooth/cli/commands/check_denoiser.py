"""`dsmooth test-denoiser`: PSNR of D(x + d) and accuracy of f(D(x + d)) under noise on
a data split, next to the no-denoiser baseline f(x + d) and clean accuracy f(x).

(Named check_denoiser, not test_denoiser, so that nothing takes it for a test module;
the measurement is `dsmooth.training.evaluate.denoiser_report`.)"""

from __future__ import annotations

import json

from dsmooth.cli.commands import source_options
from dsmooth.cli.commands.common import (
    DATA_OPTIONS,
    DENOISER_FORMS,
    MODEL_FORMS,
    NOISE_LEVEL_OPTIONS,
    SMOOTHING_OPTIONS,
)
from dsmooth.cli.options import add_options
from dsmooth.pipeline.engine import default_precision
from dsmooth.sigma import check_sigma

#: --precision choices: certify's but int8, which is a quantised OpenVINO classifier.
PRECISIONS = ("auto", "fp32", "bf16")


def register(sub) -> None:
    p = sub.add_parser(
        "test-denoiser",
        help="PSNR and noisy accuracy of classifier(denoiser(x + noise)) on a split",
        description="One N(0, sigma^2) draw per image, seeded by (seed, image index), as "
        "`dsmooth evaluate`. Reports PSNR (D's output clipped to [0,1], mean over images) "
        "and the accuracy of f(D(x+d)), f(x+d) and f(x).",
    )
    p.add_argument(
        "--denoiser",
        required=True,
        help="denoiser D, any that certify takes: " + DENOISER_FORMS,
    )
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier f (optional; without it, PSNR only): " + MODEL_FORMS,
    )
    add_options(p, NOISE_LEVEL_OPTIONS)
    add_options(p, DATA_OPTIONS, ("data",))
    p.add_argument("--split", choices=["train", "test"], default="test", help="default test")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--batch", type=int, default=250, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default_precision(),
        help="arithmetic inside D and f, as in certify: auto = bf16 autocast where the "
        "hardware has it (AMX/AVX512-BF16 CPU), else fp32; noise is added in float32 "
        "before it (default auto)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_options(p, SMOOTHING_OPTIONS, ("no_progress", "strict"))
    source_options.add(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from dsmooth.cli.commands.common import prepare_denoiser
    from dsmooth.errors import UserError
    from dsmooth.pipeline.engine import resolve_precision, set_threads
    from dsmooth.sources import load_model
    from dsmooth.training.data import load_training_set
    from dsmooth.training.evaluate import denoiser_report

    check_sigma(args.sigma)
    if args.batch < 1:
        raise UserError(f"batch must be at least 1, got {args.batch}.")
    if args.precision not in PRECISIONS:  # e.g. DSMOOTH_PRECISION=int8
        raise UserError(
            f"test-denoiser runs D and f in {', '.join(PRECISIONS)}, not {args.precision!r}."
        )
    set_threads(args.threads)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    images, labels = load_training_set([args.data], args.max_images, split=args.split)
    denoiser = load_model(args.denoiser, role="denoiser")  # what certify's --denoiser takes
    denoiser = prepare_denoiser(denoiser, args.sigma, args.strict)  # sigma check, timestep
    if not isinstance(denoiser, torch.nn.Module):
        raise UserError(f"{args.denoiser} is not a PyTorch denoiser dsmooth can run.")
    classifier = None
    if args.classifier:
        classifier = load_model(args.classifier, role="classifier", **source_options.collect(args))
    result = denoiser_report(
        denoiser, images, labels=labels, sigma=args.sigma, classifier=classifier, batch=args.batch,
        precision=precision, seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    for k, v in result.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
