"""`dsmooth demo`: the main job on the embedded default, in minutes, on a CPU.

Denoised smoothing of a classifier we did not train: the shipped third-party CIFAR-10
ResNet-20 (akamaster, BSD-2) without a denoiser and with the two shipped DnCNN denoisers
trained for it at sigma = 0.25 (MSE objective; Stab fine-tuned from it), certified on
CIFAR-10 test images bundled with the package (one in every 20, the paper's protocol;
JPEG-decoded). Small n keeps it to a few minutes on two cores; the printed command
reproduces a row at the paper's n.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

SAMPLE = "cifar10_test_every20.npz"
CLASSIFIER = "cifar10-resnet20-akamaster"
DENOISERS = {  # row name -> shipped denoiser; the last is the headline one
    "MSE DnCNN": "cifar10-dncnn-mse-0.25-resnet20",
    "Stab DnCNN": "cifar10-dncnn-stab-0.25-resnet20",
}


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="certify bundled CIFAR-10 images with shipped models, end to end (minutes, CPU)",
        description="Certify bundled CIFAR-10 test images with the shipped ResNet-20, without "
        "a denoiser and with the shipped MSE and Stab DnCNN denoisers, then print the "
        "certified-accuracy table and write the curves PNG.",
    )
    p.add_argument("--out-dir", default="runs/demo", help="logs and plot (default runs/demo)")
    p.add_argument("--images", type=int, default=20, help="bundled images to certify (default 20)")
    p.add_argument("--n0", type=int, default=50, help="selection samples (default 50)")
    p.add_argument("--n", type=int, default=500, help="estimation samples (default 500)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--denoisers",
        nargs="+",
        choices=["mse", "stab"],
        default=["mse", "stab"],
        help="denoiser rows besides 'no denoiser' (default: mse stab)",
    )
    p.set_defaults(func=run)


def sample_path() -> Path:
    return Path(str(resources.files("dsmooth") / "assets" / SAMPLE))


def run(args) -> int:
    from dsmooth import cli
    from dsmooth.base import compose
    from dsmooth.data import load_images
    from dsmooth.engine import EngineOptions, accelerate
    from dsmooth.errors import UserError
    from dsmooth.jobs import certify_dataset
    from dsmooth.models.pretrained import pretrained
    from dsmooth.smoothing import Smooth

    if not 1 <= args.images <= 500:
        raise UserError(f"--images must be between 1 and 500, got {args.images}.")
    sigma = 0.25
    data = load_images(sample_path())
    data = data.__class__(data.images[: args.images], data.labels[: args.images])
    classifier = pretrained(CLASSIFIER)
    rows = {"no denoiser": classifier}
    for name, spec in DENOISERS.items():
        if name.split()[0].lower() in args.denoisers:
            rows[name] = compose(classifier, pretrained(spec))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # No compilation: its one-off cost exceeds the whole demo on a small CPU.
    options = EngineOptions(compile=False, threads=args.threads)
    print(
        f"dsmooth demo: {args.images} bundled CIFAR-10 test images, sigma={sigma}, "
        f"n0={args.n0}, n={args.n}, alpha={args.alpha}, lattice noise"
    )
    print(f"classifier {CLASSIFIER} (third-party, unchanged); denoisers trained for it:")
    for name, spec in DENOISERS.items():
        print(f"  {name}: {spec}")
    logs = {}
    for name, base in rows.items():
        log = out_dir / f"certify_{name.replace(' ', '_').lower()}.tsv"
        log.unlink(missing_ok=True)  # the demo always starts afresh
        start = time.perf_counter()
        # the bundled images are 8-bit: lattice noise, as certify's --noise auto draws
        smooth = Smooth(accelerate(base, options), 10, sigma, seed=0, noise="lattice")
        certify_dataset(smooth, data, log, args.n0, args.n, args.alpha, batch_size=110)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {log}")
        logs[name] = log
    plot = out_dir / "curves.png"
    argv = [
        "analyze",
        "--radii",
        "0",
        "0.25",
        "0.5",
        "0.75",
        "--plot",
        str(plot),
        "--title",
        "dsmooth demo: CIFAR-10 ResNet-20, sigma = 0.25",
    ]
    for name, log in logs.items():
        argv += ["--label", f"{name}={log}"]
    code = cli.main(argv)
    print(f"curves: {plot}")
    print(
        f"the same at the paper's protocol (500 images, n=10000, hours on a CPU):\n"
        f"  dsmooth certify --data {sample_path()} --classifier {CLASSIFIER} "
        f"--denoiser {list(DENOISERS.values())[-1]} --sigma 0.25 --n0 100 --n 10000 --out log.tsv"
    )
    return code
