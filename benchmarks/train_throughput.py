"""Training throughput of DnCNN with each objective, fp32 vs bf16, side by side.

Runs the product's own training step (`DenoiserObjective`, autocast, channels_last, Adam)
on real CIFAR-10 images when ../shared is present (random images otherwise) and prints
images/s per configuration, so reproduction runs can be budgeted. Stab and Clf run
through a classifier (default cifar_resnet110, random weights: speed does not depend on
them); `classifier` is the train-classifier workload (SGD on the classifier alone).
Configurations are measured in interleaved rounds and the median is reported, because
the machine is shared. A second table trains a smaller DnCNN with MSE from the same
seed in fp32 and bf16 and compares the losses (does bf16 hurt convergence?).

    .venv/bin/python benchmarks/train_throughput.py --threads 1 \
        > benchmarks/results/train_throughput.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dsmooth.data.transforms import to_float_nchw
from dsmooth.models import create
from dsmooth.pipeline.host import cpu_model, native_bf16
from dsmooth.training.objectives import DenoiserObjective
from dsmooth.training.precision import autocast

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_test.npz"
CPU = torch.device("cpu")


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if CIFAR.is_file():
        from dsmooth.training.data import load_training_set

        return load_training_set([str(CIFAR)], n, split="test")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    return x, torch.zeros(n, dtype=torch.long)


def denoiser_step(denoiser, objective, precision, channels_last, sigma=0.25):
    """One Adam step of train-denoiser's computation on a uint8 batch."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    denoiser = denoiser.to(memory_format=fmt).train()
    for f in objective.classifiers:
        f.to(memory_format=fmt)
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    objective.autocast = lambda: autocast(precision, CPU)

    def step(batch, labels, k):
        x = to_float_nchw(batch)
        noisy = (x + torch.randn(x.shape, generator=g) * sigma).contiguous(memory_format=fmt)
        with autocast(precision, CPU):
            out = denoiser(noisy)
        loss, _ = objective(out, x, labels, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def classifier_step(model, precision, channels_last):
    """One SGD step of train-classifier's computation."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(batch, labels, _k):
        x = to_float_nchw(batch).contiguous(memory_format=fmt)
        with autocast(precision, CPU):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def build(args, name: str, precision: str, channels_last: bool):
    torch.manual_seed(0)
    if name == "classifier":
        return classifier_step(create(args.classifier), precision, channels_last)
    classifiers = [create(args.classifier)] if name != "mse" else []
    objective = DenoiserObjective(name, classifiers)
    return denoiser_step(create("dncnn"), objective, precision, channels_last)


def measure(args, data, labels) -> list[tuple]:
    """Median wall-clock and per-CPU-second rates over interleaved rounds."""
    b = args.batch
    configs = []
    for name in args.objectives.split(","):
        for layout in ("channels_last", "NCHW"):
            for precision in args.precisions.split(","):
                if layout == "NCHW" and precision != "fp32":
                    continue
                step = build(args, name, precision, layout == "channels_last")
                for k in range(args.warmup):
                    step(data[:b], labels[:b], k)
                configs.append(((name, layout, precision), step, [], []))
    for r in range(args.repeats):
        for _, step, wall, cpu in configs:
            w0, c0 = time.perf_counter(), time.process_time()
            for k in range(args.steps):
                i = ((r * args.steps + k) * b) % (len(data) - b + 1)
                step(data[i : i + b], labels[i : i + b], k)
            wall.append(args.steps * b / (time.perf_counter() - w0))
            cpu.append(args.steps * b / max(time.process_time() - c0, 1e-9))
    return [(*key, statistics.median(w), statistics.median(c)) for key, _, w, c in configs]


def convergence(args, data, labels, precision) -> tuple[float, float]:
    """(first-step loss, mean loss of the last 10 steps) of a small DnCNN with MSE."""
    torch.manual_seed(0)
    step = denoiser_step(
        create("dncnn", depth=8, n_channels=32), DenoiserObjective("mse"), precision, True
    )
    b, losses = args.batch, []
    for k in range(args.convergence_steps):
        i = (k * b) % (len(data) - b + 1)
        losses.append(step(data[i : i + b], labels[i : i + b], k))
    return losses[0], statistics.mean(losses[-10:])


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--classifier", default="cifar_resnet110")
    p.add_argument(
        "--objectives", default="mse,stab,clf,classifier", help="classifier: train f itself"
    )
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--convergence-steps", type=int, default=60)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, labels = images(max(args.batch * (args.steps * args.repeats + 1), 512))
    print(f"# torch {torch.__version__}, CPU: {cpu_model()}, threads {torch.get_num_threads()}")
    print(f"# native bf16 (AMX/AVX512-BF16): {native_bf16('cpu')}; load average at start: {load()}")
    print(
        f"# DnCNN-17 (64 ch) + Adam, batch {args.batch}; stab/clf through {args.classifier}; "
        f"'classifier' = SGD training of {args.classifier} alone"
    )
    print(
        f"# median of {args.repeats} interleaved rounds of {args.steps} steps; img/s = wall "
        "clock on this shared machine, img/cpu-s = per second of this process's CPU time"
    )
    print(f"{'workload':<11}{'layout':<15}{'precision':<10}{'img/s':>9}{'img/cpu-s':>11}")
    for name, layout, precision, wall, cpu in measure(args, data, labels):
        print(f"{name:<11}{layout:<15}{precision:<10}{wall:>9.2f}{cpu:>11.2f}", flush=True)
    if args.convergence_steps:
        print(
            f"\n# convergence: DnCNN depth 8 / 32 ch, MSE, sigma 0.25, "
            f"{args.convergence_steps} steps, same seed and batches"
        )
        print(f"{'precision':<10}{'first loss':>12}{'last-10 mean':>14}")
        for precision in args.precisions.split(","):
            first, last = convergence(args, data, labels, precision)
            print(f"{precision:<10}{first:>12.5f}{last:>14.5f}", flush=True)
    print(f"# load average at end: {load()}")


if __name__ == "__main__":
    main()
