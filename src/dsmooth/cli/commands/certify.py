"""`dsmooth certify`: CERTIFY on every selected image into a resumable TSV log."""

from __future__ import annotations

from dsmooth.cli.commands import common
from dsmooth.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "certify",
        help="certify images: (class, l2 radius) or abstain, one log row per image",
        description="Certify each image with Cohen et al.'s CERTIFY: select with n0 samples, "
        "bound pA with n fresh samples, radius = sigma * PhiInv(pA_lower). Rerun with the "
        "same --out to resume. --method sequential stops sampling early with the same "
        "guarantee (docs/sequential.md); --method takes any registered method "
        "(dsmooth.certify.methods).",
    )
    common.add_model_options(p)
    common.add_data_options(p)
    common.add_sampling_options(p, certify=True)
    common.add_sequential_options(p)
    add_scale_out_options(p)
    p.set_defaults(func=run)


def add_scale_out_options(p) -> None:
    g = p.add_argument_group("scale-out on Ray (docs/distributed.md)")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="certify on Ray: alone, a local Ray in this process; with ADDRESS (HOST:PORT or "
        "auto), an existing cluster started by `ray start` (needs pip install 'dsmooth[ray]')",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --ray: worker actors (default: the CPUs Ray offers, or GPUs with cuda)",
    )
    g.add_argument(
        "--sorted",
        action="store_true",
        help="rewrite the log sorted by image index at the end (rows are appended as they finish)",
    )


def run(args) -> int:
    from dsmooth.runs.local import run_job

    if args.workers is not None and args.ray is None:
        raise UserError("--workers needs --ray.")
    job = common.job_from_args(args)
    if args.ray is not None:
        return run_on_ray(job, args)
    built = common.build_job(job)
    written = run_job(job, built=built, progress=not args.no_progress)
    if args.sorted:
        from dsmooth.runs.distributed import sort_log

        sort_log(job.out)
    common.report_summary(job.out, written)
    return 0


def run_on_ray(job, args) -> int:
    import sys

    from dsmooth.runs.distributed import certify_dataset

    summary = certify_dataset(
        job,
        address=args.ray,
        workers=args.workers,
        sort=args.sorted,
        progress=not args.no_progress,
    )
    print(f"dsmooth: {summary}", file=sys.stderr)
    return 0
