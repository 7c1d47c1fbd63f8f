"""`dsmooth visualize`: clean, noisy and denoised images with the classifier's labels.

The figure itself is `dsmooth.analysis.denoising_grid.denoising_grid`; this module maps the
flags to it.
"""

from __future__ import annotations

from dsmooth.analysis.denoising_grid import class_names, denoising_grid


def register(sub) -> None:
    from dsmooth.cli.commands import common
    from dsmooth.cli.options import add_options

    p = sub.add_parser(
        "visualize",
        help="PNG grid of clean, noisy (x + d) and denoised images with predicted labels",
        description="Draw, for chosen images and noise levels, the clean image, the noisy "
        "image x + d (d ~ N(0, sigma^2 I); the first noise sample certify draws for it with "
        "the same --seed) and, with --denoiser, the denoised D(x + d), each captioned with "
        "the classifier's label (green: correct, red: wrong). Noisy images are clipped to "
        "[0, 1] for display only.",
    )
    common.add_model_options(p)
    add_options(p, common.DATA_OPTIONS, ("data",))
    p.add_argument(
        "--indices",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        help="image indices (default 0 1 2 3)",
    )
    p.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[0.12, 0.25, 0.5],
        help="noise levels in [0,1] pixel units (default 0.12 0.25 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed, as in certify (default 0)")
    p.add_argument(
        "--class-names",
        default=None,
        help="'cifar10' or comma-separated names (default: folder names, else numbers)",
    )
    p.add_argument("--out", required=True, help="output image (.png, .svg or .pdf)")
    p.set_defaults(func=run)


def grid_from_args(args, data, num_classes: int | None = None, **classifier_options):
    """`denoising_grid` for the --classifier/--denoiser/--indices/--sigmas/--seed/
    --class-names/--device options (shared by visualize and report);
    `classifier_options` go to the classifier's loader."""
    from functools import partial

    from dsmooth.cli.commands.common import warn_sigma
    from dsmooth.pipeline.engine import resolve_device
    from dsmooth.sources import load_model

    device = resolve_device(args.device)
    classifier = load_model(args.classifier, role="classifier", device=device, **classifier_options)
    denoiser = load_model(args.denoiser, role="denoiser", device=device) if args.denoiser else None
    return denoising_grid(
        classifier,
        data,
        indices=args.indices,
        sigmas=args.sigmas,
        denoiser=denoiser,
        seed=args.seed,
        num_classes=num_classes,
        names=class_names(args.class_names, data.classes),
        device=args.device,
        warn=partial(warn_sigma, hint=""),  # no --strict here
    )


def run(args) -> int:
    from dsmooth.analysis.plots import check_figure_path, save_figure
    from dsmooth.cli.commands import common, source_options

    check_figure_path(args.out)
    data = common.load_data(args)
    fig = grid_from_args(
        args,
        data,
        num_classes=args.num_classes,
        **common.weights_options(args),
        **source_options.collect(args),
    )
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0
