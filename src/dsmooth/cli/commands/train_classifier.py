"""`dsmooth train-classifier`: train a classifier (optionally with Gaussian noise
augmentation, the Cohen et al. baseline) into a dsmooth checkpoint folder."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from dsmooth.cli.commands.common import MODEL_OPTIONS
from dsmooth.cli.options import add_options, option, table

#: Flags of the SGD optimiser both training commands offer.
OPTIMISER_OPTIONS = table(
    option("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)"),
)


def add_run_options(p) -> None:
    """Options shared by the training commands: budget, checkpoints, resume, speed."""
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        required=True,
        help="output folder: the checkpoint (model.safetensors + config.json), "
        "train_state.safetensors (for --resume), metrics.csv and metrics.json",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out exactly (epoch, step, schedule, optimizer "
        "state); starts fresh if --out holds no run yet",
    )
    g.add_argument(
        "--save-every-minutes",
        type=float,
        default=10.0,
        help="also save a resumable state mid-epoch this often (default 10)",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps in this invocation, resumable (default: no limit)",
    )
    g.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this many minutes in this invocation, resumable (default: no limit)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for init, order, augmentation, noise")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast or fp32; auto = bf16 only where the hardware computes it "
        "natively: CPUs with AMX/AVX512-BF16 and CUDA GPUs that support bf16 (elsewhere bf16 "
        "is emulated and much slower)",
    )
    add_options(
        g,
        MODEL_OPTIONS,
        ("device",),
        helps={
            "device": "torch device to train on (default %(default)s): cpu, cuda or cuda:N; "
            "the model, the classifiers and the training noise live there, and a run may "
            "resume on another device (the CUDA path is not yet tested on a GPU)"
        },
    )
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep the default NCHW memory layout instead of channels_last",
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_arch_kwargs(p) -> None:
    p.add_argument(
        "--arch-kwargs",
        type=_json_object,
        default={},
        help="architecture constructor options as JSON, e.g. '{\"depth\": 10}' (default none)",
    )


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_data_options(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="training set(s), joined in order, each in any form certify's --data takes, "
        "with the train split (e.g. cifar10, or train_part1.npz train_part2.npz)",
    )
    g.add_argument(
        "--val-data",
        default=None,
        help="validation set evaluated after each epoch, in the same forms (the test split)",
    )
    g.add_argument(
        "--max-train-images", type=int, default=None, help="use only the first N training images"
    )
    g.add_argument(
        "--max-val-images", type=int, default=None, help="use only the first N validation images"
    )
    g.add_argument("--batch", type=int, default=128, help="batch size (default 128)")


def add_schedule_options(p, lr: float, schedule: str, epochs: int) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default {epochs})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    g.add_argument(
        "--schedule",
        choices=["cosine", "step", "onecycle", "constant"],
        default=schedule,
        help=f"learning-rate schedule, per step (default {schedule})",
    )
    g.add_argument(
        "--milestones",
        type=_fractions,
        default=[0.5, 0.75],
        help="step schedule: fractions of the run where the LR is multiplied by --gamma "
        "(default 0.5,0.75; Cohen et al.: 0.3333,0.6667)",
    )
    g.add_argument("--gamma", type=float, default=0.1, help="step schedule factor (default 0.1)")
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        help="linear learning-rate warm-up length in epochs (default 0)",
    )


def add_augment_options(g) -> None:
    g.add_argument(
        "--crop-pad", type=int, default=4, help="random-crop padding in pixels (0: no crop)"
    )
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal flips")


def recipe_from_args(cls, args):
    """A training recipe dataclass filled from the parsed options of the same names
    (fields without an option, e.g. val_batch, keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    given["data"] = list(args.data)
    given["progress"] = not args.no_progress
    return cls(**given)


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"milestones must be fractions in (0, 1), got {text!r}")
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train a classifier (optionally with Gaussian noise augmentation)",
        description="SGD with momentum and a per-step learning-rate schedule on float [0,1] "
        "images (random crop + flip, optional N(0, sigma^2) noise). Writes a dsmooth "
        "checkpoint to --out every epoch, a resumable state every epoch and every "
        "--save-every-minutes, and metrics.csv/json. Ctrl-C or SIGTERM saves and stops; "
        "rerun with --resume to continue exactly.",
    )
    p.add_argument(
        "--arch", required=True, help="classifier architecture, e.g. cifar_resnet110 (registry)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="default: max label + 1")
    add_arch_kwargs(p)
    p.add_argument(
        "--init",
        default=None,
        help="classifier checkpoint to continue from (a warm restart with a new schedule, "
        "e.g. a short low-LR cosine cycle); same --arch and classes",
    )
    add_data_options(p)
    add_schedule_options(p, lr=0.1, schedule="cosine", epochs=90)
    g = p.add_argument_group("classifier")
    add_options(g, OPTIMISER_OPTIONS)
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=5e-4,
        help="L2 weight decay (default 5e-4; Cohen et al.'s ResNet-110 used 1e-4)",
    )
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default 0)")
    g.add_argument(
        "--noise-sigma",
        type=float,
        default=0.0,
        help="Gaussian noise augmentation sigma in [0,1] pixel units (default 0: none)",
    )
    add_augment_options(g)
    add_run_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsmooth.training.classifier import ClassifierRecipe, train_classifier

    recipe = recipe_from_args(ClassifierRecipe, args)
    return report(train_classifier(recipe, resume=args.resume), args.out)


def report(status: str, out: str) -> int:
    if status == "done":
        print(f"dsmooth: training finished; checkpoint in {out}.", file=sys.stderr)
        return 0
    if status == "stopped":
        print(
            f"dsmooth: budget reached; state saved in {out}; rerun with --resume.", file=sys.stderr
        )
        return 0
    print(f"dsmooth: interrupted; state saved in {out}; rerun with --resume.", file=sys.stderr)
    return 130
