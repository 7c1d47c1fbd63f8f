"""Training throughput of DnCNN with each objective, fp32 vs bf16, side by side.

Runs the product's own training step (`DenoiserObjective`, autocast, channels_last, Adam)
on real CIFAR-10 images when ../shared is present (random images otherwise) and prints
images/s per configuration, so reproduction runs can be budgeted. Stab and Clf run
through a classifier (default cifar_resnet110, random weights: speed does not depend on
them). A second table trains a smaller DnCNN with MSE for a few steps in fp32 and bf16
from the same seed and compares the losses, to check that bf16 does not hurt
convergence (bf16 autocast is only chosen by default on CPUs with native bf16).

    .venv/bin/python benchmarks/train_throughput.py --threads 1 \
        > benchmarks/results/train_throughput.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from dsmooth.models import create
from dsmooth.training.augment import to_float_nchw
from dsmooth.training.objectives import DenoiserObjective
from dsmooth.training.precision import autocast, bf16_is_fast

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_test.npz"


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if CIFAR.is_file():
        from dsmooth.training.data import load_training_set

        return load_training_set([str(CIFAR)], n, split="test")
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g), torch.zeros(
        n, dtype=torch.long
    )


def make_step(denoiser, objective, precision, channels_last, sigma=0.25):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    denoiser = denoiser.to(memory_format=fmt).train()
    for f in objective.classifiers:
        f.to(memory_format=fmt)
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    device = torch.device("cpu")
    objective.autocast = lambda: autocast(precision, device)

    def step(batch, labels, k):
        x = to_float_nchw(batch)
        noisy = (x + torch.randn(x.shape, generator=g) * sigma).contiguous(memory_format=fmt)
        with autocast(precision, device):
            out = denoiser(noisy)
        loss, _ = objective(out, x, labels, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def throughput(args, data, labels, objective_name, precision, channels_last) -> float:
    torch.manual_seed(0)
    denoiser = create("dncnn")
    classifiers = [create(args.classifier)] if objective_name != "mse" else []
    objective = DenoiserObjective(objective_name, classifiers)
    step = make_step(denoiser, objective, precision, channels_last)
    b = args.batch
    for k in range(args.warmup):
        step(data[:b], labels[:b], k)
    start, done = time.perf_counter(), 0
    for k in range(args.steps):
        i = (k * b) % (len(data) - b + 1)
        step(data[i : i + b], labels[i : i + b], k)
        done += b
    return done / (time.perf_counter() - start)


def convergence(args, data, labels, precision) -> tuple[float, float]:
    """(first-step loss, mean loss of the last 10 steps) of a small DnCNN with MSE."""
    torch.manual_seed(0)
    denoiser = create("dncnn", depth=8, n_channels=32)
    step = make_step(denoiser, DenoiserObjective("mse"), precision, True)
    losses = []
    b = args.batch
    for k in range(args.convergence_steps):
        i = (k * b) % (len(data) - b + 1)
        losses.append(step(data[i : i + b], labels[i : i + b], k))
    return losses[0], sum(losses[-10:]) / len(losses[-10:])


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--classifier", default="cifar_resnet110")
    p.add_argument("--objectives", default="mse,stab,clf")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--convergence-steps", type=int, default=60)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, labels = images(max(args.batch * (args.steps + 1), 512))
    print(f"# torch {torch.__version__}, CPU: {cpu_name()}, threads {torch.get_num_threads()}")
    print(
        f"# native bf16 (AMX/AVX512-BF16): {bf16_is_fast()}; load average at start: "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print(
        f"# DnCNN-17 (64 ch), Adam, batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup} warm-up; stab/clf through {args.classifier}"
    )
    print(
        f"{'objective':<10}{'layout':<15}"
        + "".join(f"{p + ' img/s':>14}" for p in args.precisions.split(","))
    )
    for name in args.objectives.split(","):
        for channels_last in (True, False):
            cells = []
            for precision in args.precisions.split(","):
                if not channels_last and precision != "fp32":
                    cells.append(f"{'-':>14}")
                    continue
                rate = throughput(args, data, labels, name, precision, channels_last)
                cells.append(f"{rate:>14.2f}")
            layout = "channels_last" if channels_last else "NCHW"
            print(f"{name:<10}{layout:<15}" + "".join(cells), flush=True)
    if args.convergence_steps:
        print(
            f"\n# convergence: DnCNN depth 8 / 32 ch, MSE, sigma 0.25, "
            f"{args.convergence_steps} steps, same seed and batches"
        )
        print(f"{'precision':<10}{'first loss':>12}{'last-10 mean':>14}")
        for precision in args.precisions.split(","):
            first, last = convergence(args, data, labels, precision)
            print(f"{precision:<10}{first:>12.5f}{last:>14.5f}", flush=True)
    print(f"# load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
