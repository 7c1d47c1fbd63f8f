"""`dsmooth demo`: the main job on the embedded default, in minutes, on a CPU.

PLACEHOLDER until the shipped CIFAR-10 models exist: it trains a small CNN for a few
seconds on part of the bundled CIFAR-10 sample (500 test images, one in every 20) with
Gaussian noise augmentation, then certifies other images of the sample with it. It says
so when it runs; the numbers say nothing about the paper's method.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE = "cifar10_test_every20.npz"


def register(sub) -> None:
    p = sub.add_parser("demo", help="certify bundled CIFAR-10 images end to end (minutes, CPU)")
    p.add_argument("--out-dir", default="runs/demo", help="where the log goes (default runs/demo)")
    p.add_argument("--images", type=int, default=20, help="images to certify (default 20)")
    p.add_argument("--n", type=int, default=1000, help="estimation samples (default 1000)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise level (default 0.25)")
    p.set_defaults(func=run)


def sample_path() -> Path:
    return Path(str(resources.files("dsmooth") / "assets" / SAMPLE))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )


def run(args) -> int:
    from dsmooth.data import load_images
    from dsmooth.jobs import certify_dataset
    from dsmooth.smoothing import Smooth

    print(
        "dsmooth demo (PLACEHOLDER): trains a tiny CNN for seconds on 400 bundled images; "
        "the shipped CIFAR-10 models replace it."
    )
    torch.manual_seed(0)
    data = load_images(sample_path())
    train_x = data.batch(range(400))
    train_y = torch.from_numpy(data.labels[:400])
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    for _ in range(30):
        for b in range(0, 400, 50):
            x = train_x[b : b + 50]
            x = x + args.sigma * torch.randn_like(x)
            loss = nn.functional.cross_entropy(model(x), train_y[b : b + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"trained in {time.perf_counter() - start:.1f} s")
    model.eval()
    held_out = data.__class__(
        data.images[400 : 400 + args.images], data.labels[400 : 400 + args.images]
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "certify.tsv"
    log.unlink(missing_ok=True)
    smooth = Smooth(model, 10, args.sigma, seed=0)
    certify_dataset(smooth, held_out, log, 100, args.n, 0.001, batch_size=100)
    rows = np.genfromtxt(log, delimiter="\t", names=True, dtype=None, encoding="utf-8")
    radii = np.atleast_1d(rows["radius"]).astype(float)
    correct = np.atleast_1d(rows["correct"]).astype(int)
    print(f"log: {log}")
    for r in (0.0, 0.25, 0.5, 0.75):
        print(f"certified accuracy at r={r:.2f}: {np.mean((correct == 1) & (radii >= r)):.2f}")
    return 0
