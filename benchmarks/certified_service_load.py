"""Load test of `dsmooth serve --smoothed` against offline certification, in one run.

    python benchmarks/certified_service_load.py --seconds 20 --out REPORT.txt

1. Offline: `Smooth.certify` on the same model, one image after another, for --seconds:
   samples/s.
2. The server, in its own process on 127.0.0.1 (fp32 eager torch, like the offline run),
   under 1, 8 and 32 concurrent asyncio httpx clients, each for --seconds: requests/s,
   p50/p99 latency, served samples/s and its ratio to offline, status codes, and the
   server's peak RSS (VmHWM).
3. A sample of the 2xx certificates (at least --check) is recomputed offline and must be
   equal (prediction, radius, samples used).
The default model is a small CNN on 3x32x32 written to a temporary TorchScript file;
--classifier/--denoiser take any spec `dsmooth serve` takes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmooth import Smooth, load_model
from dsmooth.base import compose

EXACT_ENV = {"DSMOOTH_PRECISION": "fp32", "DSMOOTH_COMPILE": "0", "DSMOOTH_BACKEND": "torch"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default=None, help="default: a small CNN (TorchScript)")
    p.add_argument("--denoiser", default=None)
    p.add_argument("--input-shape", default="3,32,32")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--n0", type=int, default=32)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--queue", type=int, default=64, help="server's bound on images in flight")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    p.add_argument("--check", type=int, default=100, help="2xx certificates to verify")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


class SmallCNN(nn.Module):
    """A fixed random CNN: a few hundred kFLOPs, so sampling and the server both matter."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def pool(count: int, shape) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(count)]


def pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float().div_(255.0)


def offline_rate(smooth: Smooth, images, args) -> float:
    samples, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        smooth.certify(pixels(images[i % len(images)]), args.n0, args.n, args.alpha, args.batch,
                       index=i)  # fmt: skip
        samples += args.n0 + args.n
        i += 1
    return samples / (time.perf_counter() - start)


def start_server(args, model_spec: str):
    cmd = [sys.executable, "-m", "dsmooth.cli", "serve", "--smoothed", "--classifier", model_spec]
    if args.denoiser:
        cmd += ["--denoiser", args.denoiser]
    cmd += ["--sigma", str(args.sigma), "--input-shape", args.input_shape, "--port", "0"]
    cmd += ["--method", "cp", "--n0", str(args.n0), "--n", str(args.n), "--alpha", str(args.alpha)]
    cmd += ["--batch", str(args.batch), "--queue", str(args.queue), "--threads", str(args.threads)]
    cmd += ["--max-images-per-request", "1", "--request-timeout", "300", "--grace", "2"]
    cmd += ["--public-noise"]  # so each answer can be checked against offline certify
    env = {**os.environ, **EXACT_ENV, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(180)
    match = re.search(r"http://127\.0\.0\.1:\d+", box[0] if box else "")
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {proc.stderr.read()[-2000:]}")
    return proc, match.group(0)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, clients: int, seconds: float, images, args):
    import httpx

    latencies, codes, certs = [], {}, []
    end = time.monotonic() + seconds

    async def one_client(c: int):
        rng = random.Random(c)
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while time.monotonic() < end:
                k = rng.randrange(len(images))
                index = rng.randrange(10**6)
                body = {"images": images[k][None].tolist(), "datatype": "UINT8", "index": index}
                start = time.monotonic()
                r = await http.post("/v1/certify", json=body)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.monotonic() - start)
                    certs.append((k, r.json()["certificates"][0]))
                elif r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) / 10)

    started = time.monotonic()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return time.monotonic() - started, latencies, codes, certs


def main(argv=None) -> int:
    args = parse(argv)
    os.environ.update(EXACT_ENV)
    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    folder = tempfile.mkdtemp(prefix="dsmooth-load-")
    spec = args.classifier
    if spec is None:
        spec = str(Path(folder) / "small_cnn.pt")
        torch.jit.save(torch.jit.script(SmallCNN().eval()), spec)
    classifier = load_model(spec, role="classifier")
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    model = compose(classifier, denoiser, sigma=args.sigma)
    with torch.inference_mode():
        classes = int(model(torch.zeros(1, *shape)).shape[1])
    smooth = Smooth(model, classes, args.sigma, seed=0)
    images = pool(16, shape)

    lines = [
        f"host: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {args.threads}",
        f"model: {spec}{' + ' + args.denoiser if args.denoiser else ''}; cp n0={args.n0} "
        f"n={args.n} alpha={args.alpha} sigma={args.sigma} batch={args.batch} "
        f"queue={args.queue}; {args.seconds:g} s per measurement",
    ]
    offline = offline_rate(smooth, images, args)
    lines.append(f"offline certify: {offline:,.0f} samples/s")
    proc, url = start_server(args, spec)
    checked = mismatched = 0
    try:
        lines.append("clients  req/s   p50 s   p99 s  samples/s  vs offline  codes")
        for clients in args.concurrency:
            elapsed, lat, codes, certs = asyncio.run(load(url, clients, args.seconds, images, args))
            served = sum(c["n_used"] for _, c in certs) / elapsed
            p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"),) * 2
            lines.append(
                f"{clients:7d}  {len(lat) / elapsed:5.1f}  {p50:6.3f}  {p99:6.3f}  "
                f"{served:9,.0f}  {served / offline:9.0%}   {dict(sorted(codes.items()))}"
            )
            share = max(1, args.check // len(args.concurrency))
            for k, c in random.Random(clients).sample(certs, min(share, len(certs))):
                label, radius = smooth.certify(pixels(images[k]), args.n0, args.n, args.alpha,
                                               args.batch, index=c["index"])  # fmt: skip
                checked += 1
                mismatched += (label, radius, args.n0 + args.n) != (
                    c["prediction"],
                    c["radius"],
                    c["n_used"],
                )
        lines.append(f"server peak RSS: {peak_rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(30)
    lines.append(f"2xx certificates checked against offline: {checked}, mismatches: {mismatched}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
