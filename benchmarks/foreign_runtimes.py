"""A base classifier without a PyTorch graph of ours (an ONNX file, Keras models) on its
own runtime and on OpenVINO, measured side by side.

    python benchmarks/foreign_runtimes.py --format onnx --out REPORT.txt
    python benchmarks/foreign_runtimes.py --format keras --out REPORT.txt

onnx: exports a pipeline (default: the shipped MSE DnCNN + ResNet-20) to ONNX and loads
it as a user's ONNX file is loaded (`dsmooth.sources`); its own runtime is onnxruntime.
keras: the shipped DnCNN exported to a `.keras` file in front of a Keras ResNet-20 built
here (random weights: Keras export covers DnCNN-family models, not ResNets), both loaded
as a user's `.keras` files are; their own runtime is Keras on its torch backend, eager
(torch.compile cannot trace Keras layers). Each runtime is measured on the same batches
in interleaved rounds, so that a loaded machine slows all alike: the own runtime (fp32),
OpenVINO fp32, and OpenVINO bf16 where the CPU computes bf16 natively, with the largest
output difference and label agreement against the own runtime. `--backend auto` makes
this choice per run (docs/engine.md).
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
from dsmooth.deploy.export import export
from dsmooth.pipeline.engine import EngineOptions, accelerate
from dsmooth.pipeline.host import cpu_model, native_bf16

SHAPE = (3, 32, 32)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=("onnx", "keras"), default="onnx")
    p.add_argument(
        "--classifier",
        default="pretrained:cifar10-resnet20-akamaster",
        help="onnx only (keras builds its own ResNet-20)",
    )
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


def keras_resnet20(path: Path) -> None:
    """A CIFAR ResNet-20 (v1, projection shortcuts) in Keras, random weights, saved."""
    from dsmooth.sources.keras import import_keras

    keras = import_keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)

    def conv_bn(x, filters, strides=1, relu=True):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inputs = keras.Input((SHAPE[1], SHAPE[2], SHAPE[0]))
    x = conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(conv_bn(x, filters, strides), filters, relu=False)
            if strides != 1:
                x = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
            x = layers.ReLU()(layers.Add()([x, y]))
    logits = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, logits).save(path)


def runtimes_for(args, tmp: Path) -> dict:
    """name -> callable on [0, 1] NCHW batches; the first is the model's own runtime."""
    denoiser = load_model(args.denoiser, role="denoiser")
    if args.format == "onnx":
        path = tmp / "pipeline.onnx"
        export(compose(load_model(args.classifier), denoiser), path, "onnx")
        ort = load_model(str(path))
        runtimes = {"onnxruntime fp32": ort}
        runtimes["openvino fp32"] = ort.on_openvino("fp32", args.threads)
        if native_bf16("cpu"):
            runtimes["openvino bf16"] = ort.on_openvino("bf16", args.threads)
        return runtimes
    export(denoiser, tmp / "denoiser.keras", "keras", check_tensorflow=False)
    keras_resnet20(tmp / "classifier.keras")
    model = compose(
        load_model(str(tmp / "classifier.keras")),
        load_model(str(tmp / "denoiser.keras"), role="denoiser"),
    )
    eager = EngineOptions(precision="fp32", compile=False, backend="torch", threads=args.threads)
    runtimes = {"keras (torch backend, eager) fp32": accelerate(model, eager)}
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        options = EngineOptions(precision=precision, backend="openvino", threads=args.threads)
        runtimes[f"openvino {precision}"] = accelerate(model, options, image_shape=SHAPE)
    return runtimes


def main(argv=None) -> int:
    args = parse(argv)
    what = (
        f"{args.denoiser} + {args.classifier}, exported to ONNX"
        if args.format == "onnx"
        else f"{args.denoiser} exported to .keras + a Keras ResNet-20 (random weights)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = runtimes_for(args, Path(tmp))
        own = next(iter(runtimes))
        x = torch.rand((args.batch, *SHAPE), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            reference = np.asarray(runtimes[own](x))
        rates: dict[str, list[float]] = {k: [] for k in runtimes}
        for _ in range(args.rounds):
            for name, fn in runtimes.items():
                rates[name].append(rate(fn, x, args.seconds))
        lines = [
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs, native bf16: {native_bf16('cpu')}",
            f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
            f"pipeline: {what}; batch {args.batch}, {args.rounds} interleaved rounds of "
            f"{args.seconds:g} s",
            "",
            f"| runtime | samples/s (median) | x {own} | max abs output diff | labels agree |",
            "|---|---|---|---|---|",
        ]
        base = sorted(rates[own])[args.rounds // 2]
        for name, fn in runtimes.items():
            median = sorted(rates[name])[args.rounds // 2]
            with torch.no_grad():
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
