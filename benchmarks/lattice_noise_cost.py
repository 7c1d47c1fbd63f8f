"""What lattice noise costs next to float Gaussian noise, measured side by side.

    python benchmarks/lattice_noise_cost.py --out benchmarks/results/lattice_noise_cost_<host>.txt

Two measurements, alternating the two modes in every repeat so that a loaded machine
slows both alike:
  (a) drawing alone: microseconds per noise sample for a CIFAR-10 image (3x32x32) and an
      ImageNet one (3x224x224), Gaussian (`dsmooth.certify.noise`) vs lattice
      (`dsmooth.certify.lattice`);
  (b) whole `Smooth.sample_counts` through a base classifier (default: the shipped
      DnCNN + ResNet-20, fp32 eager), where drawing is a small part of the work.
The ratio lattice / gaussian of (b) is what a certification run pays for soundness.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from dsmooth import Smooth, compose, load_model
from dsmooth.certify.lattice import inverse, lattice_block
from dsmooth.certify.noise import BLOCK, gaussian_block, philox_key
from dsmooth.pipeline.engine import set_threads
from dsmooth.pipeline.host import cpu_model


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default="pretrained:cifar10-resnet20-akamaster")
    p.add_argument("--denoiser", default="pretrained:cifar10-dncnn-stab-0.25-resnet20")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=2048, help="per sample_counts call")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


def per_sample_us(draw, blocks: int) -> float:
    start = time.perf_counter()
    for b in range(blocks):
        draw(b)
    return (time.perf_counter() - start) / (blocks * BLOCK) * 1e6


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        set_threads(args.threads)
    key = philox_key(0, 1, 1)
    start = time.perf_counter()
    inverse(args.sigma)
    lines = [
        f"host: {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads",
        f"sigma {args.sigma}; lattice thresholds built in {time.perf_counter() - start:.2f} s",
        "",
        "(a) drawing alone, us per noise sample (best of repeats)",
    ]
    for shape, blocks in (((3, 32, 32), 8), ((3, 224, 224), 1)):
        full = (BLOCK, *shape)
        best = {"gaussian": float("inf"), "lattice": float("inf")}
        for _ in range(args.repeats):
            best["gaussian"] = min(
                best["gaussian"],
                per_sample_us(lambda b, s=full: gaussian_block(key, b, s, args.sigma), blocks),
            )
            best["lattice"] = min(
                best["lattice"],
                per_sample_us(lambda b, s=full: lattice_block(key, b, s, args.sigma), blocks),
            )
        lines.append(
            f"  {'x'.join(map(str, shape)):>9}: gaussian {best['gaussian']:8.1f}  "
            f"lattice {best['lattice']:8.1f}  ratio {best['lattice'] / best['gaussian']:.2f}"
        )
    classifier = load_model(args.classifier, role="classifier")
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    base = compose(classifier, denoiser).eval()
    x = torch.full((3, 32, 32), 100, dtype=torch.uint8).float().div_(255.0)
    smooths = {m: Smooth(base, 10, args.sigma, noise=m) for m in ("gaussian", "lattice")}
    rate = {m: 0.0 for m in smooths}
    with torch.inference_mode():
        for s in smooths.values():
            s.sample_counts(x, args.batch, args.batch, index=0)  # warm-up
        for r in range(args.repeats):
            for mode, s in smooths.items():
                start = time.perf_counter()
                s.sample_counts(x, args.samples, args.batch, index=r + 1)
                rate[mode] = max(rate[mode], args.samples / (time.perf_counter() - start))
    model = f"{args.denoiser} + {args.classifier}" if args.denoiser else args.classifier
    lines += [
        "",
        f"(b) Smooth.sample_counts through {model}, fp32 eager, batch {args.batch}, "
        f"{args.samples} samples (best of {args.repeats})",
        f"  gaussian {rate['gaussian']:8.1f} samples/s",
        f"  lattice  {rate['lattice']:8.1f} samples/s",
        f"  lattice costs {100 * (rate['gaussian'] / rate['lattice'] - 1):+.1f}% time",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(" ".join(["python", *sys.argv]) + "\n\n" + report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
