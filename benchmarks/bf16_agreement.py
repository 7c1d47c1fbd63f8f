"""bf16 vs fp32 inside the base classifier: label agreement under noise and certified
accuracy on the same images with the same noise.

    S=/work/shared; R20=$S/models/third-party/cifar-resnet-akamaster/resnet20-12fca82f.th
    python benchmarks/bf16_agreement.py --mean imagenet --std imagenet \\
        --classifier cifar_resnet20:$R20 \\
        --data $S/data/cifar10/cifar10_lossless_subsets.npz:test_first100 \\
        --out benchmarks/results/bf16_agreement_resnet20.txt

Every noisy batch that CERTIFY draws goes through both precisions: `Smooth.certify` runs
on the fp32 outputs, and the bf16 labels of the very same float32 samples give the bf16
certificate (same selection/estimation split, same Clopper-Pearson bound). So every
difference comes from the arithmetic inside the classifier, and the label agreement is
measured on all n0 + n samples per image. Add `--denoiser SPEC` for denoised smoothing.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from dsmooth import Smooth, compose, load_model, stats
from dsmooth.datasets import load_dataset
from dsmooth.engine import EngineOptions, accelerate, native_bf16, set_threads
from dsmooth.smoothing import ABSTAIN

RADII = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", required=True, help="classifier spec (dsmooth.load_model)")
    p.add_argument("--denoiser", default=None, help="optional denoiser spec")
    p.add_argument("--mean", default=None, help="input mean of a foreign classifier")
    p.add_argument("--std", default=None, help="input std of a foreign classifier")
    p.add_argument("--data", required=True, help="dataset spec (dsmooth.datasets.load_dataset)")
    p.add_argument("--images", type=int, default=100, help="first N images (default 100)")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000, help="estimation samples (default 1000)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile both engines")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


class BothPrecisions:
    """A base classifier returning fp32 scores that also records fp32 and bf16 labels."""

    def __init__(self, fp32, bf16):
        self.fp32, self.bf16 = fp32, bf16
        self.labels32: list[torch.Tensor] = []
        self.labels16: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.fp32(batch)
        self.labels32.append(out.argmax(1))
        self.labels16.append(self.bf16(batch).argmax(1))
        return out

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = torch.cat(self.labels32).numpy(), torch.cat(self.labels16).numpy()
        self.labels32, self.labels16 = [], []
        return a, b


def certify_from_labels(labels, n0, n, alpha, sigma, num_classes) -> tuple[int, float]:
    """CERTIFY's decision from the labels of its n0 selection then n estimation samples."""
    selection = np.bincount(labels[:n0], minlength=num_classes)
    estimation = np.bincount(labels[n0 : n0 + n], minlength=num_classes)
    c_hat = int(selection.argmax())
    p_lower = stats.lower_confidence_bound(int(estimation[c_hat]), n, alpha)
    return (ABSTAIN, 0.0) if p_lower < 0.5 else (c_hat, stats.radius(sigma, p_lower))


def build(args, precision: str):
    options = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
    classifier = load_model(args.classifier, role="classifier", **options)
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    base = compose(classifier, denoiser)
    return accelerate(base, EngineOptions(precision=precision, compile=args.compile))


def certified_accuracy(rows, radius: float) -> float:
    return float(np.mean([p == y and r >= radius for y, p, r in rows]))


def main(argv=None) -> int:
    args = parse(argv)
    set_threads(args.threads)
    data = load_dataset(args.data)
    count = min(args.images, len(data.labels))
    both = BothPrecisions(build(args, "fp32"), build(args, "bf16"))
    num_classes = int(both.fp32(data.image(0)[None]).shape[1])
    smooth = Smooth(both, num_classes, args.sigma, seed=0)
    agree = total = 0
    per_image, rows32, rows16 = [], [], []
    start = time.perf_counter()
    for i in tqdm(range(count), desc="images", file=sys.stderr):
        x, y = data.image(i), int(data.labels[i])
        both.labels32, both.labels16 = [], []
        pred32, radius32 = smooth.certify(x, args.n0, args.n, args.alpha, args.batch, index=i)
        labels32, labels16 = both.take()
        decide = (args.n0, args.n, args.alpha, args.sigma, num_classes)
        # the same rule on the recorded fp32 labels must reproduce Smooth.certify
        assert certify_from_labels(labels32, *decide) == (pred32, radius32)
        pred16, radius16 = certify_from_labels(labels16, *decide)
        same = int((labels32 == labels16).sum())
        agree, total = agree + same, total + len(labels32)
        per_image.append(same / len(labels32))
        rows32.append((y, pred32, radius32))
        rows16.append((y, pred16, radius16))
    differ = sum(a[1] != b[1] for a, b in zip(rows32, rows16, strict=True))
    radius_diff = [abs(a[2] - b[2]) for a, b in zip(rows32, rows16, strict=True)]
    normalisation = f" (mean {args.mean}, std {args.std})" if args.mean else ""
    lines = [
        "bf16 vs fp32 inside the base classifier (the same float32 noisy samples for both)",
        f"classifier: {args.classifier}{normalisation}",
        f"denoiser: {args.denoiser or 'none'}",
        f"data: {args.data}, first {count} images; sigma {args.sigma}, n0 {args.n0}, "
        f"n {args.n}, alpha {args.alpha}",
        f"machine: {torch.backends.cpu.get_cpu_capability()}, native bf16: "
        f"{'yes' if native_bf16('cpu') else 'no (bf16 emulated: slow, same arithmetic)'}",
        "",
        f"label agreement under noise: {agree}/{total} = {100 * agree / total:.2f}% "
        f"(all n0 + n samples of every image; lowest image {100 * min(per_image):.1f}%)",
        f"smoothed predictions that differ: {differ}/{count}; |radius difference| mean "
        f"{np.mean(radius_diff):.4f}, max {np.max(radius_diff):.4f}",
        "",
        f"{'radius':>8}{'fp32 cert. acc %':>18}{'bf16 cert. acc %':>18}{'bf16 - fp32 (pts)':>19}",
    ]
    for r in RADII:
        a32, a16 = certified_accuracy(rows32, r), certified_accuracy(rows16, r)
        lines.append(f"{r:>8.3f}{100 * a32:>18.1f}{100 * a16:>18.1f}{100 * (a16 - a32):>19.1f}")
    lines += ["", f"run time {time.perf_counter() - start:.0f} s"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
