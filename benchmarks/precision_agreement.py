"""Other arithmetic inside the base classifier vs torch fp32: label agreement under
noise and certified accuracy on the same images with the same noise.

    python benchmarks/precision_agreement.py --classifier pretrained:cifar10-resnet110-50ep \
        --data src/dsmooth/assets/cifar10_test_every20.npz \
        --variants openvino:fp32 openvino:int8 torch:bf16 \
        --out benchmarks/results/precision_agreement_resnet110_<host>.txt

Every noisy batch that CERTIFY draws goes through torch fp32 and through each variant
(BACKEND:PRECISION): `Smooth.certify` runs on the fp32 outputs, and each variant's labels
of the very same float32 samples give its certificate (same selection/estimation split,
same Clopper-Pearson bound). So every difference comes from the arithmetic inside the
classifier, and the agreement is measured on all n0 + n samples of every image. int8 is
calibrated as `dsmooth certify` does it: the first --calibration-images images of --data
at --sigma. Add `--denoiser SPEC` for denoised smoothing. A variant passes when its
certified accuracy stays within 1 point of fp32 at every radius (the bar `auto` uses).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from dsmooth import Smooth, compose, load_model
from dsmooth.certify import stats
from dsmooth.certify.smooth import ABSTAIN
from dsmooth.data.datasets import load_dataset
from dsmooth.pipeline.engine import EngineOptions, accelerate, backend_of, native_bf16, set_threads
from dsmooth.pipeline.openvino_backend import Calibration

RADII = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", required=True, help="classifier spec (dsmooth.load_model)")
    p.add_argument("--denoiser", default=None, help="optional denoiser spec")
    p.add_argument("--mean", default=None, help="input mean of a foreign classifier")
    p.add_argument("--std", default=None, help="input std of a foreign classifier")
    p.add_argument(
        "--data", required=True, help="dataset spec (dsmooth.data.datasets.load_dataset)"
    )
    p.add_argument("--images", type=int, default=100, help="first N images (default 100)")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000, help="estimation samples (default 1000)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the torch engines")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["torch:bf16", "openvino:fp32", "openvino:bf16", "openvino:int8"],
        metavar="BACKEND:PRECISION",
        help="compared with torch fp32 (default: all four; bf16 needs native bf16 on OpenVINO)",
    )
    p.add_argument("--calibration-images", type=int, default=300, help="int8 (default 300)")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


class AllVariants:
    """A base classifier returning torch fp32 scores that also records, for the same
    batch, the labels of fp32 and of every variant."""

    def __init__(self, fp32, variants: dict):
        self.fp32, self.variants = fp32, variants
        self.labels: dict[str, list[torch.Tensor]] = {}
        self.seconds = {name: 0.0 for name in ["fp32", *variants]}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.fp32(batch)
        self.seconds["fp32"] += time.perf_counter() - start
        self.labels.setdefault("fp32", []).append(out.argmax(1))
        for name, fn in self.variants.items():
            start = time.perf_counter()
            self.labels.setdefault(name, []).append(fn(batch).argmax(1))
            self.seconds[name] += time.perf_counter() - start
        return out

    def take(self) -> dict[str, np.ndarray]:
        out = {k: torch.cat(v).numpy() for k, v in self.labels.items()}
        self.labels = {}
        return out


def certify_from_labels(labels, n0, *, n, alpha, sigma, num_classes) -> tuple[int, float]:
    """CERTIFY's decision from the labels of its n0 selection then n estimation samples."""
    selection = np.bincount(labels[:n0], minlength=num_classes)
    estimation = np.bincount(labels[n0 : n0 + n], minlength=num_classes)
    c_hat = int(selection.argmax())
    p_lower = stats.lower_confidence_bound(int(estimation[c_hat]), n, alpha)
    return (ABSTAIN, 0.0) if p_lower < 0.5 else (c_hat, stats.radius(sigma, p_lower))


def build(args, variant: str, data):
    backend, precision = variant.split(":")
    options = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
    classifier = load_model(args.classifier, role="classifier", **options)
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    base = compose(classifier, denoiser)
    calibration = None
    if precision == "int8":
        count = min(args.calibration_images, len(data.labels))
        images = torch.stack([data.image(i) for i in range(count)])
        calibration = Calibration(images, args.sigma, 0)
    engine = EngineOptions(precision=precision, compile=args.compile, backend=backend)
    shape = tuple(data.image(0).shape)
    fn = accelerate(base, engine, image_shape=shape, calibration=calibration)
    if backend_of(fn) != backend:
        raise SystemExit(f"{variant}: the {backend} backend is not available here")
    return fn


def certified_accuracy(rows, radius: float) -> float:
    return float(np.mean([p == y and r >= radius for y, p, r in rows]))


def main(argv=None) -> int:
    args = parse(argv)
    set_threads(args.threads)
    data = load_dataset(args.data)
    count = min(args.images, len(data.labels))
    variants = {v: build(args, v, data) for v in args.variants}
    both = AllVariants(build(args, "torch:fp32", data), variants)
    num_classes = int(both.fp32(data.image(0)[None]).shape[1])
    smooth = Smooth(both, num_classes, args.sigma, seed=0)
    names = ["fp32", *variants]
    agree = dict.fromkeys(variants, 0)
    lowest = dict.fromkeys(variants, 1.0)
    rows: dict[str, list] = {k: [] for k in names}
    total = 0
    decide = dict(n0=args.n0, n=args.n, alpha=args.alpha, sigma=args.sigma, num_classes=num_classes)
    start = time.perf_counter()
    for i in tqdm(range(count), desc="images", file=sys.stderr):
        x, y = data.image(i), int(data.labels[i])
        both.labels = {}
        pred32, radius32 = smooth.certify(x, args.n0, args.n, args.alpha, args.batch, index=i)
        labels = both.take()
        # the same rule on the recorded fp32 labels must reproduce Smooth.certify
        assert certify_from_labels(labels["fp32"], **decide) == (pred32, radius32)
        rows["fp32"].append((y, pred32, radius32))
        total += len(labels["fp32"])
        for v in variants:
            same = int((labels["fp32"] == labels[v]).sum())
            agree[v] += same
            lowest[v] = min(lowest[v], same / len(labels["fp32"]))
            rows[v].append((y, *certify_from_labels(labels[v], **decide)))
    normalisation = f" (mean {args.mean}, std {args.std})" if args.mean else ""
    lines = [
        "other arithmetic vs torch fp32 inside the base classifier (the same float32 noisy "
        "samples for all)",
        f"classifier: {args.classifier}{normalisation}",
        f"denoiser: {args.denoiser or 'none'}",
        f"data: {args.data}, first {count} images; sigma {args.sigma}, n0 {args.n0}, "
        f"n {args.n}, alpha {args.alpha}; int8 calibrated on the first "
        f"{args.calibration_images} images at sigma {args.sigma}",
        f"machine: {torch.backends.cpu.get_cpu_capability()}, native bf16: "
        f"{'yes' if native_bf16('cpu') else 'no (torch bf16 emulated: slow, same arithmetic)'}",
        "",
        f"{'variant':<16}{'label agreement %':>19}{'lowest image %':>16}{'predictions differ':>20}"
        f"{'seconds':>9}",
    ]
    for v in variants:
        differ = sum(a[1] != b[1] for a, b in zip(rows["fp32"], rows[v], strict=True))
        lines.append(
            f"{v:<16}{100 * agree[v] / total:>19.2f}{100 * lowest[v]:>16.1f}"
            f"{f'{differ}/{count}':>20}{both.seconds[v]:>9.0f}"
        )
    lines.append(f"{'torch:fp32':<16}{'':>19}{'':>16}{'':>20}{both.seconds['fp32']:>9.0f}")
    lines += [
        "",
        "certified accuracy % (variant - fp32 in points; PASS = within 1 point at every radius)",
    ]
    lines.append(f"{'radius':>8}{'fp32':>8}" + "".join(f"{v:>22}" for v in variants))
    worst = dict.fromkeys(variants, 0.0)
    for r in RADII:
        a32 = certified_accuracy(rows["fp32"], r)
        cells = []
        for v in variants:
            a = certified_accuracy(rows[v], r)
            worst[v] = max(worst[v], abs(a - a32))
            cells.append(f"{100 * a:>13.1f} ({100 * (a - a32):+5.1f})")
        lines.append(f"{r:>8.3f}{100 * a32:>8.1f}" + "".join(f"{c:>22}" for c in cells))
    lines.append("")
    for v in variants:
        verdict = "PASS" if worst[v] <= 0.01 + 1e-9 else "FAIL"
        lines.append(
            f"{v}: largest certified-accuracy difference {100 * worst[v]:.1f} points: {verdict}"
        )
    lines += ["", f"run time {time.perf_counter() - start:.0f} s"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
