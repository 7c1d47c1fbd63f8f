"""`dsmooth test-denoiser`: PSNR of D(x + d) and accuracy of f(D(x + d)) under noise on
a data split, next to the no-denoiser baseline f(x + d) and clean accuracy f(x)."""

from __future__ import annotations

import json

from dsmooth.commands import source_options
from dsmooth.commands.common import DATA_FORMS, DENOISER_FORMS, MODEL_FORMS, add_strict_option
from dsmooth.engine import default_precision
from dsmooth.noise import check_sigma

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
    p.add_argument("--sigma", type=float, required=True, help="noise level in [0,1] pixel units")
    p.add_argument("--data", required=True, help="images and labels: " + DATA_FORMS)
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
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_strict_option(p)
    source_options.add(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from dsmooth.commands.common import prepare_denoiser
    from dsmooth.engine import resolve_precision, set_threads
    from dsmooth.errors import UserError
    from dsmooth.sources import load_model
    from dsmooth.training.data import load_training_set
    from dsmooth.training.evaluate import evaluate_denoiser

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
    classifiers = {}
    if args.classifier:
        f = load_model(args.classifier, role="classifier", **source_options.collect(args))
        classifiers["noisy"] = torch_outputs(f)
    common = dict(
        batch=args.batch, precision=precision, seed=args.seed, progress=not args.no_progress
    )
    result = {"n": len(images), "sigma": args.sigma, "precision": precision}
    result.update(
        evaluate_denoiser(denoiser, images, labels, args.sigma, classifiers, prefix="", **common)
    )
    if classifiers:
        baseline = evaluate_denoiser(
            None, images, labels, args.sigma, classifiers, prefix="", **common
        )
        result["psnr_noisy_input"] = baseline["psnr"]
        result["no_denoiser_noisy_acc"] = baseline["noisy_acc"]
        result["clean_acc"] = _clean_accuracy(
            classifiers["noisy"], images, labels, args.batch, precision
        )
    for k, v in result.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def _clean_accuracy(f, images, labels, batch: int, precision: str = "fp32") -> float:
    import torch

    from dsmooth.training.augment import to_float_nchw
    from dsmooth.training.precision import autocast

    correct = 0
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        for i in range(0, len(images), batch):
            out = f(to_float_nchw(images[i : i + batch]))
            pred = out.argmax(1) if out.ndim == 2 else out
            correct += int((pred.cpu() == labels[i : i + batch]).sum())
    return correct / max(len(images), 1)


def torch_outputs(f):
    """`f` with its outputs as torch tensors (a black-box source such as ONNX answers in
    numpy); an nn.Module as it is."""
    import numpy as np
    import torch

    if isinstance(f, torch.nn.Module):
        return f

    def run(x):
        out = f(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))

    return run
