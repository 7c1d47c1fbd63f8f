"""`dsmooth certify`: CERTIFY on every selected image into a resumable TSV log."""

from __future__ import annotations

from dsmooth.commands import common


def register(sub) -> None:
    p = sub.add_parser(
        "certify",
        help="certify images: (class, l2 radius) or abstain, one log row per image",
        description="Certify each image with Cohen et al.'s CERTIFY: select with n0 samples, "
        "bound pA with n fresh samples, radius = sigma * PhiInv(pA_lower). Rerun with the "
        "same --out to resume. --method sequential stops sampling early with the same "
        "guarantee (docs/sequential.md).",
    )
    common.add_model_options(p)
    common.add_data_options(p)
    common.add_sampling_options(p, certify=True)
    common.add_sequential_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsmooth.jobs import certify_dataset

    common.check_sampling(args)
    sequential = common.sequential_settings(args)
    data = common.load_data(args)
    smooth = common.build_smooth(args, data)
    certify_dataset(
        smooth,
        data,
        args.out,
        args.n0,
        args.n,
        args.alpha,
        args.batch,
        args.skip,
        args.max,
        progress=not args.no_progress,
        sequential=sequential,
    )
    return 0
