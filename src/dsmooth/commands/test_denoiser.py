"""`dsmooth test-denoiser`: PSNR of D(x + d) and accuracy of f(D(x + d)) under noise on
a data split, next to the no-denoiser baseline f(x + d) and clean accuracy f(x)."""

from __future__ import annotations

import json

from dsmooth.commands import source_options
from dsmooth.commands.common import add_strict_option
from dsmooth.noise import check_sigma


def register(sub) -> None:
    p = sub.add_parser(
        "test-denoiser",
        help="PSNR and noisy accuracy of classifier(denoiser(x + noise)) on a split",
        description="One N(0, sigma^2) draw per image, seeded by (seed, image index), as "
        "`dsmooth evaluate`. Reports PSNR (D's output clipped to [0,1], mean over images) "
        "and the accuracy of f(D(x+d)), f(x+d) and f(x).",
    )
    p.add_argument("--denoiser", required=True, help="denoiser checkpoint or spec")
    p.add_argument("--classifier", default=None, help="classifier spec (optional: PSNR only)")
    p.add_argument("--sigma", type=float, required=True, help="noise level in [0,1] pixel units")
    p.add_argument("--data", required=True, help="dataset (.npz, folder, cifar10)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="default test")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--batch", type=int, default=250, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="fp32 (default) or bf16 autocast (auto: bf16 where the CPU has it)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_strict_option(p)
    source_options.add(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from dsmooth.commands.common import check_denoiser_sigma
    from dsmooth.errors import UserError
    from dsmooth.models.loading import load
    from dsmooth.sources import load_model
    from dsmooth.training.data import load_training_set
    from dsmooth.training.evaluate import evaluate_denoiser
    from dsmooth.training.precision import resolve_precision

    check_sigma(args.sigma)
    if args.batch < 1:
        raise UserError(f"batch must be at least 1, got {args.batch}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    images, labels = load_training_set([args.data], args.max_images, split=args.split)
    denoiser = load(args.denoiser)
    if callable(getattr(denoiser, "for_sigma", None)):  # a diffusion model picks its timestep
        denoiser.for_sigma(args.sigma)
    check_denoiser_sigma(denoiser, args.sigma, args.strict)
    classifiers = {}
    if args.classifier:
        classifiers["noisy"] = load_model(
            args.classifier, role="classifier", **source_options.collect(args)
        )
    common = dict(
        batch=args.batch, precision=precision, seed=args.seed, progress=not args.no_progress
    )
    result = {"n": len(images), "sigma": args.sigma}
    result.update(
        evaluate_denoiser(denoiser, images, labels, args.sigma, classifiers, prefix="", **common)
    )
    if classifiers:
        baseline = evaluate_denoiser(
            None, images, labels, args.sigma, classifiers, prefix="", **common
        )
        result["psnr_noisy_input"] = baseline["psnr"]
        result["no_denoiser_noisy_acc"] = baseline["noisy_acc"]
        result["clean_acc"] = _clean_accuracy(classifiers["noisy"], images, labels, args.batch)
    for k, v in result.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def _clean_accuracy(f, images, labels, batch: int) -> float:
    import torch

    from dsmooth.training.augment import to_float_nchw

    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = f(to_float_nchw(images[i : i + batch]))
            pred = out.argmax(1) if out.ndim == 2 else out
            correct += int((pred.cpu() == labels[i : i + batch]).sum())
    return correct / max(len(images), 1)
