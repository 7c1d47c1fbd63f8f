"""`dsmooth evaluate`: clean (and noisy) accuracy of classifier(denoiser(x))."""

from __future__ import annotations

import json

from dsmooth.cli.commands import common
from dsmooth.cli.options import add_options
from dsmooth.sigma import check_sigma


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy of a classifier (behind an optional denoiser), clean and under noise",
        description="Plain accuracy of f(D(x)) on a dataset, and with --sigma of "
        "f(D(x + noise)) with one seeded Gaussian draw per image (not a certificate). Use it "
        "to check imported weights and denoisers. The model runs as certify runs it (the "
        "engine options below), and the engine it used is printed on stderr and recorded "
        "under 'engine' with --json.",
    )
    common.add_model_options(p)
    g = p.add_argument_group("data")
    add_options(g, common.DATA_OPTIONS, ("data",))
    g.add_argument("--split", default="test", choices=("train", "test"), help="default: test")
    add_options(
        g,
        common.DATA_OPTIONS,
        ("size", "skip", "max", "class_names"),
        helps={
            "size": "image folders: resize+crop to SIZE",
            "max": "stop before this index (default: all)",
        },
    )
    g = p.add_argument_group("evaluation")
    g.add_argument("--sigma", type=float, default=None, help="also report accuracy under noise")
    g.add_argument("--batch", type=int, default=256, help="images per forward pass (256)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_options(g, common.SMOOTHING_OPTIONS, ("no_progress", "strict"))
    common.add_engine_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from dsmooth.data.datasets import load_dataset
    from dsmooth.errors import UserError
    from dsmooth.pipeline.engine import resolve_device
    from dsmooth.pipeline.evaluation import evaluate_accuracy

    if args.skip < 1:
        raise UserError(f"skip must be at least 1, got {args.skip}.")
    if args.batch < 1:
        raise UserError(f"batch must be at least 1, got {args.batch}.")
    if args.sigma is not None:
        check_sigma(args.sigma)
    data = load_dataset(args.data, args.split, args.size)
    stop = len(data) if args.max < 0 else min(args.max, len(data))
    indices = np.arange(0, stop, args.skip)
    if len(indices) == 0:
        raise UserError(f"{args.data}: no images selected.")
    device = resolve_device(args.device)
    base = common.load_base(args, device, int(data.image(0).shape[0]))
    common.align_labels(args, data, common.infer_num_classes(base, data, device))
    base = accelerated(args, base, data, len(indices))
    report_engine(engine_record(args, base))
    result = evaluate_accuracy(
        base,
        data,
        sigma=args.sigma,
        indices=indices,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps({**result, "engine": engine_record(args, base)}))
        return 0
    n = result["n"]
    print(f"images: {n}")
    print(f"clean accuracy: {100 * result['clean_accuracy']:.2f}% ({result['clean_correct']}/{n})")
    if args.sigma is not None:
        print(
            f"noisy accuracy (sigma {args.sigma:g}, one draw per image): "
            f"{100 * result['noisy_accuracy']:.2f}% ({result['noisy_correct']}/{n})"
        )
    return 0


def accelerated(args, base, data, images: int):
    """The base classifier run by the engine with the command's engine options, settled
    for `images` forward passes (twice that with --sigma), as certify runs it
    (dsmooth.pipeline.build.engine_for)."""
    from dsmooth.pipeline.build import engine_for

    return engine_for(
        base,
        common.engine_options(args),
        samples=images * (2 if args.sigma is not None else 1),
        image_shape=tuple(data.image(0).shape),
        data=data,
        sigma=args.sigma if args.sigma is not None else 0.0,  # int8: clean images otherwise
        seed=args.seed,
        calibration_images=args.calibration_images,
    )


def engine_record(args, base) -> dict:
    """How the base classifier really runs: the engine's settings, not the flags'."""
    import torch

    from dsmooth.certify.base_classifier import module_device
    from dsmooth.pipeline.engine import backend_of, is_engine

    fast = base if is_engine(base) else None
    return {
        "backend": backend_of(base),
        "precision": fast.precision if fast is not None else "fp32 (not a torch module)",
        "asked_backend": args.backend,
        "asked_precision": args.precision,
        "device": str(fast.device if fast is not None else module_device(base)),
        "compile": bool(getattr(fast, "compile_enabled", False)),
        "channels_last": bool(getattr(fast, "channels_last", False)),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
    }


def report_engine(record: dict) -> None:
    """One line on stderr, as certify prints it (dsmooth.cli.commands.common.report_engine)."""
    from dsmooth.pipeline.engine import stderr_report

    stderr_report(
        f"dsmooth: engine: {record['backend']} {record['precision']} "
        f"(asked {record['asked_backend']} {record['asked_precision']}), "
        f"device {record['device']}, compile {'on' if record['compile'] else 'off'}, "
        f"channels_last {'on' if record['channels_last'] else 'off'}, "
        f"batch {record['batch']}, {record['threads']} threads"
    )
