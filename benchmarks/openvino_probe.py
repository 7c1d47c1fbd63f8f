"""First measurement for the OpenVINO backend (engine v2, not built yet): DnCNN-17 +
ResNet-110 (random weights, batch 64) through OpenVINO bf16 / f32 against the torch engine
(bf16, inductor), side by side in interleaved rounds, one thread each, plus label
agreement with torch fp32 on one batch. Needs `pip install openvino` (not a dependency).

    .venv/bin/python benchmarks/openvino_probe.py > benchmarks/results/openvino_probe_<host>.txt
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from dsmooth.models import create
from dsmooth.pipeline import engine
from dsmooth.pipeline.compose import Composed


def rate(fn, batch: int, seconds: float) -> float:
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def main(batch: int = 64, seconds: float = 6.0, rounds: int = 2) -> None:
    import openvino as ov

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Composed(create("cifar_resnet110"), create("dncnn")).eval()
    x = torch.rand(batch, 3, 32, 32)
    start = time.perf_counter()
    converted = ov.convert_model(model, example_input=x)
    core = ov.Core()
    compiled = {
        p: core.compile_model(
            converted,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": p,
                "INFERENCE_NUM_THREADS": 1,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        for p in ("bf16", "f32")
    }
    print(f"# openvino {ov.__version__}, torch {torch.__version__}, {platform.processor()}")
    print(f"# CPU capabilities: {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    print(f"# conversion + compilation: {time.perf_counter() - start:.1f} s")
    torch_engine = engine.accelerate(model, engine.EngineOptions(precision="bf16", threads=1))
    with torch.inference_mode():
        reference = model(x).argmax(1).numpy()
        torch_engine(x)  # compile outside the timing
    xn = x.numpy()
    for p, c in compiled.items():
        agree = float((c(xn)[0].argmax(1) == reference).mean())
        print(f"# label agreement with torch fp32, OpenVINO {p}: {agree:.3f}")
    paths = {
        "torch engine bf16": lambda: torch_engine(x),
        "openvino bf16": lambda: compiled["bf16"](xn),
        "openvino f32": lambda: compiled["f32"](xn),
    }
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            rates[name].append(rate(fn, batch, seconds))
    base = np.median(rates["torch engine bf16"])
    print(f"{'path':<20}{'samples/s (median)':>20}{'x torch engine':>16}")
    for name, r in rates.items():
        print(f"{name:<20}{np.median(r):>20.0f}{np.median(r) / base:>16.2f}")


if __name__ == "__main__":
    main()
