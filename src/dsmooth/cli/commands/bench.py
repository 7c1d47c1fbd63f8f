"""`dsmooth bench`: noise samples/s of the certify loop, reference loop vs our engine.

The flags of one benchmark run; what is measured, and how, is `dsmooth.pipeline.bench`.
"""

from __future__ import annotations

import argparse

from dsmooth.pipeline.bench import (
    DEFAULT_PIPELINES,
    BenchSettings,
    bench_pipeline,
    build_pipeline,
    format_report,
    load_average,
    matmul_peak,
    openvino_int8_peak,
)


def register(sub) -> None:
    from dsmooth.cli.commands import common

    p = sub.add_parser(
        "bench",
        help="measure noise samples/s: the reference fp32 eager loop vs our engine",
        description="Throughput of the certify loop (noise + base classifier + counting) on "
        "32x32 images with random weights: the reference implementation's fp32 eager loop "
        "(batch 400) against dsmooth's engine, measured in interleaved rounds, plus FLOP/s "
        "and the fraction of this machine's measured matmul peak. See docs/engine.md.",
    )
    p.add_argument(
        "--pipelines",
        nargs="+",
        default=DEFAULT_PIPELINES,
        metavar="[DENOISER+]CLASSIFIER",
        help="registry architectures, or ddpm_cifar10 as the denoiser (google/ddpm-cifar10-32's "
        f"UNet, random weights; needs the [diffusion] extra) (default: "
        f"{' '.join(DEFAULT_PIPELINES)})",
    )
    p.add_argument(
        "--samples", type=int, default=800, help="noise samples per side per round (default 800)"
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument(
        "--reference-batch", type=int, default=400, help="batch of the reference loop (400)"
    )
    p.add_argument(
        "--batch",
        type=common.batch_size,
        default="auto",
        help="engine batch, or 'auto' to measure (default auto)",
    )
    p.add_argument("--sigma", type=float, default=0.25, help="noise level (default 0.25)")
    p.add_argument(
        "--peak-size", type=int, default=4096, help="matmul size for the peak (default 4096)"
    )
    p.add_argument(
        "--peak-seconds", type=float, default=1.0, help="time per matmul peak (default 1)"
    )
    p.add_argument(
        "--openvino",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the OpenVINO backend at the torch engine's precision and in int8 "
        "(default on where OpenVINO is installed)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", default=None, help="also write the report to this file")
    common.add_engine_options(p)
    p.set_defaults(func=run)


def torch_engine_options(args):
    """(b): the torch engine with the given flags; compile on unless --no-compile (a
    benchmark is the long run that compilation pays for)."""
    from dataclasses import replace

    from dsmooth.cli.commands.common import engine_options

    options = engine_options(args)
    return replace(options, backend="torch", compile=options.compile is not False)


def run(args) -> int:
    import torch

    from dsmooth.certify.smooth import check_count
    from dsmooth.pipeline import engine, host
    from dsmooth.sigma import check_sigma

    for name in ("samples", "rounds", "reference_batch", "peak_size"):
        check_count(name.replace("_", "-"), getattr(args, name))
    if args.batch != "auto":
        check_count("batch", args.batch)
    check_sigma(args.sigma)
    for spec in args.pipelines:  # fail before measuring anything
        build_pipeline(spec, args.sigma)
    report = engine.stderr_report
    options = torch_engine_options(args)
    engine.set_threads(options.threads)
    load_start = load_average()
    report("dsmooth bench: measuring the matmul peaks ...")
    peaks = {
        "fp32": matmul_peak(torch.float32, args.peak_size, args.peak_seconds),
        "bf16": matmul_peak(torch.bfloat16, args.peak_size, args.peak_seconds),
        "int8": openvino_int8_peak(1024, args.peak_seconds) if args.openvino else None,
    }
    settings = BenchSettings(
        sigma=args.sigma, samples=args.samples, rounds=args.rounds,
        reference_batch=args.reference_batch, batch=args.batch, peak_size=args.peak_size,
        peak_seconds=args.peak_seconds, openvino=args.openvino, device=args.device,
        engine=options,
    )  # fmt: skip
    results = [bench_pipeline(spec, settings, report) for spec in args.pipelines]
    precision = engine.resolve_precision(options.precision, engine.resolve_device(options.device))
    compiled = all(r.compiled for r in results)
    context = {
        "cpu": host.cpu_model(),
        "load_start": load_start,
        "reference_batch": args.reference_batch,
        "samples": args.samples,
        "rounds": args.rounds,
        "engine": f"precision {precision} (asked: {options.precision}), "
        f"compile {'on (inductor, freezing)' if compiled else 'off/failed: eager'}, "
        f"channels_last {'on' if options.channels_last else 'off'}, inference mode, "
        f"batch {args.batch}, Smooth.sample_counts (noise float32, seeded per block)",
    }
    text = format_report(results, peaks, context)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for benchmarks/certify_throughput.py."""
    from dsmooth.cli import main as cli_main

    return cli_main(["bench", *(argv or [])])
