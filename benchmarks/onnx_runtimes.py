"""An ONNX base classifier on onnxruntime and on OpenVINO, measured side by side.

    python benchmarks/onnx_runtimes.py --out benchmarks/results/onnx_runtimes_<host>.txt

Exports a pipeline (default: the shipped MSE DnCNN + ResNet-20) to ONNX, loads it as a
user's ONNX file is loaded (`dsmooth.sources`), and measures samples/s of each runtime on
the same batches in interleaved rounds, so that a loaded machine slows both alike:
onnxruntime (fp32), OpenVINO fp32, and OpenVINO bf16 where the CPU computes bf16
natively. It also reports the largest output difference and label agreement with
onnxruntime. `--backend auto` makes this choice per run (docs/engine.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dsmooth import compose, load_model
from dsmooth.engine import cpu_model, native_bf16
from dsmooth.export import export


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default="pretrained:cifar10-resnet20-akamaster")
    p.add_argument("--denoiser", default="pretrained:cifar10-dncnn-mse-0.25-resnet20")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per runtime and round")
    p.add_argument("--threads", type=int, default=None, help="OpenVINO threads (default: its)")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


def rate(fn, x: torch.Tensor, seconds: float) -> float:
    fn(x)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn(x)
        calls += 1
    return calls * len(x) / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse(argv)
    model = compose(load_model(args.classifier), load_model(args.denoiser, role="denoiser"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.onnx"
        export(model, path, "onnx")
        ort = load_model(str(path))
        runtimes = {"onnxruntime fp32": ort, "openvino fp32": ort.on_openvino("fp32", args.threads)}
        if native_bf16("cpu"):
            runtimes["openvino bf16"] = ort.on_openvino("bf16", args.threads)
        x = torch.rand((args.batch, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        reference = np.asarray(ort(x))
        rates: dict[str, list[float]] = {k: [] for k in runtimes}
        for _ in range(args.rounds):
            for name, fn in runtimes.items():
                rates[name].append(rate(fn, x, args.seconds))
        lines = [
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs, native bf16: {native_bf16('cpu')}",
            f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
            f"pipeline: {args.denoiser} + {args.classifier}, exported to ONNX; batch "
            f"{args.batch}, {args.rounds} interleaved rounds of {args.seconds:g} s",
            "",
            "| runtime | samples/s (median) | x onnxruntime | max abs output diff | labels agree |",
            "|---|---|---|---|---|",
        ]
        base = sorted(rates["onnxruntime fp32"])[args.rounds // 2]
        for name, fn in runtimes.items():
            median = sorted(rates[name])[args.rounds // 2]
            out = np.asarray(fn(x))
            diff = float(np.abs(out - reference).max())
            agree = float((out.argmax(1) == reference.argmax(1)).mean())
            lines.append(
                f"| {name} | {median:.1f} | {median / base:.2f} | {diff:.2e} | {agree:.3f} |"
            )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
