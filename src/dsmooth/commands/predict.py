"""`dsmooth predict`: PREDICT (abstaining) on every selected image into a TSV log."""

from __future__ import annotations

from dsmooth import provenance
from dsmooth.commands import common


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
    from dsmooth.jobs import predict_dataset

    common.check_sampling(args)
    data = common.load_data(args)
    smooth = common.build_smooth(args, data)
    record = common.log_provenance(args, smooth, data, "predict")
    provenance.check_resume(args.out, record)
    common.report_engine(record)
    written = predict_dataset(
        smooth,
        data,
        args.out,
        args.n,
        args.alpha,
        args.batch,
        args.skip,
        args.max,
        progress=not args.no_progress,
        provenance=record,
    )
    common.report_summary(args.out, written)
    return 0
