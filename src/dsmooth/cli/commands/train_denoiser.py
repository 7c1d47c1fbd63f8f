"""`dsmooth train-denoiser`: train a denoiser for a classifier at noise level sigma with
the MSE, Stab or Clf objective (Salman et al. 2020), white-box or through surrogates."""

from __future__ import annotations

from dsmooth.cli.commands import source_options
from dsmooth.cli.commands.common import NOISE_LEVEL_OPTIONS
from dsmooth.cli.commands.train_classifier import (
    OPTIMISER_OPTIONS,
    add_arch_kwargs,
    add_augment_options,
    add_data_options,
    add_run_options,
    add_schedule_options,
    recipe_from_args,
    report,
)
from dsmooth.cli.options import add_options


def _specs(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(sub) -> None:
    p = sub.add_parser(
        "train-denoiser",
        help="train a denoiser (MSE, Stab or Clf objective) for a classifier and sigma",
        description="Trains D on x + N(0, sigma^2) in [0,1] pixel space. mse: ||D(x+d) - x||^2; "
        "stab: CE(f(D(x+d)), argmax f(x)); clf: CE(f(D(x+d)), y); f is frozen (eval mode, no "
        "parameter gradients). --init fine-tunes an existing denoiser (Stab+MSE). "
        "--surrogates trains through surrogate classifiers only: the target --classifier is "
        "never called (unless --val-target). Writes a dsmooth checkpoint to --out every "
        "epoch, a resumable state every epoch and every --save-every-minutes, and "
        "metrics.csv/json (validation PSNR and accuracy of f(D(x+d)) under noise).",
    )
    g = p.add_argument_group("denoiser")
    g.add_argument(
        "--objective", choices=["mse", "stab", "clf"], required=True, help="training objective"
    )
    add_options(g, NOISE_LEVEL_OPTIONS)
    g.add_argument(
        "--arch",
        default=None,
        help="denoiser architecture: dncnn (default), dncnn_wide, memnet; with --init: the "
        "checkpoint's",
    )
    add_arch_kwargs(g)
    g.add_argument(
        "--classifier",
        default=None,
        help="the classifier f to protect (any --classifier spec: dsmooth checkpoint, "
        "ARCH:weights.pth, TorchScript, ...); needed by stab/clf, used for validation",
    )
    g.add_argument(
        "--surrogates",
        type=_specs,
        default=[],
        help="comma-separated surrogate classifiers: train through these instead of "
        "--classifier (query-access setting)",
    )
    g.add_argument(
        "--surrogate-mode",
        choices=["round-robin", "average"],
        default="round-robin",
        help="round-robin: batch k uses surrogate k mod K (the official code; one "
        "classifier pass per step); average: mean loss over all surrogates every batch "
        "(K times the cost)",
    )
    g.add_argument(
        "--val-target",
        action="store_true",
        help="with --surrogates: also validate on the target --classifier (it is still "
        "never used for training)",
    )
    g.add_argument(
        "--init", default=None, help="denoiser checkpoint to fine-tune (e.g. an MSE one)"
    )
    g.add_argument(
        "--soft-targets",
        action="store_true",
        help="stab: softmax f(x) as targets instead of argmax f(x)",
    )
    g.add_argument(
        "--mse-weight",
        type=float,
        default=0.0,
        help="stab/clf: add this times the MSE loss, meant to keep a fine-tuned MSE "
        "denoiser from collapsing (its benefit is not measured yet; default 0)",
    )
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="default adam")
    add_options(g, OPTIMISER_OPTIONS)
    g.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="L2 weight decay (default 1e-4, the official code's)",
    )
    add_augment_options(g)
    add_data_options(p)
    add_schedule_options(p, lr=1e-3, schedule="cosine", epochs=90)
    add_run_options(p)
    source_options.add(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsmooth.training.denoiser import DenoiserRecipe, train_denoiser

    recipe = recipe_from_args(DenoiserRecipe, args)
    recipe.classifier_options = source_options.collect(args) or None
    return report(train_denoiser(recipe, resume=args.resume), args.out)
