"""`dsmooth predict`: PREDICT (abstaining) on every selected image into a TSV log."""

from __future__ import annotations

from dsmooth.cli.commands import common


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict with the smoothed classifier (or abstain), one log row per image",
        description="Cohen et al.'s PREDICT: n noise samples, two-sided binomial test on the "
        "top two counts at level alpha. Rerun with the same --out to resume.",
    )
    common.add_model_options(p)
    common.add_data_options(p)
    common.add_sampling_options(p, certify=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsmooth.runs.local import run_job

    job = common.job_from_args(args, predict=True)
    written = run_job(job, built=common.build_job(job), progress=not args.no_progress)
    common.report_summary(job.out, written)
    return 0
