"""`dsmooth analyze`: certified-accuracy tables (and curves) from result logs."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from dsmooth._io import write_text as write_whole
from dsmooth.cli.options import add_options, option, table
from dsmooth.errors import UserError

#: The flags `build_report` reads, shared with `dsmooth report` (which words some of
#: their help texts its own way).
REPORT_OPTIONS = table(
    option("logs", nargs="*", metavar="LOG", help="result logs (files or glob patterns)"),
    option(
        "--label",
        action="append",
        default=[],
        metavar="NAME=GLOB",
        help="name a group of logs; repeat for more groups (or more globs for one name)",
    ),
    option(
        "--radii",
        nargs="+",
        default=["0:1.5:0.25"],
        metavar="R",
        help="l2 radii: numbers and/or START:STOP:STEP ranges (default 0:1.5:0.25)",
    ),
    option(
        "--envelope",
        action="store_true",
        help="one row per group (all LOGs without --label): best over its logs per radius",
    ),
    option(
        "--decimals", type=int, default=0, help="decimals of percentages (default 0, as the paper)"
    ),
    option("--strict", action="store_true", help="treat every warning as an error"),
)


def register(sub) -> None:
    from dsmooth.analysis.tables import FORMATS

    p = sub.add_parser(
        "analyze",
        help="certified accuracy at radii, envelopes over sigma, ACR, abstain rate, curves",
        description=textwrap.fill(
            "Read result logs (dsmooth's or the reference implementations', e.g. the "
            "paper's released logs) and print certified accuracy at each radius: the "
            "fraction of images with correct == 1 and radius >= r. With --envelope each "
            "group of logs becomes one row holding the best accuracy over its logs, with "
            "the clean accuracy of the chosen log in parentheses, as in the paper's tables: "
            "(72)56. Also reports images, clean accuracy, ACR, abstain rate, time per image, "
            "and mean n_used when logs have that column. Logs with duplicate indices, "
            "different image sets or no rows are reported on stderr (docs/analysis.md).",
            width=88,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: dsmooth analyze --envelope --radii 0.25:1.5:0.25 \\\n"
        "    --label 'No denoiser=logs/noise_0.00/sigma_*' --label 'Stab=logs/stab/*/sigma_*'",
    )
    add_options(p, REPORT_OPTIONS, ("logs", "label", "radii", "envelope"))
    p.add_argument("--format", choices=FORMATS, default="markdown", help="table format")
    add_options(p, REPORT_OPTIONS, ("decimals",))
    p.add_argument("--out", default=None, help="write the table to this file (default: stdout)")
    p.add_argument("--plot", default=None, help="write accuracy curves here (.png, .svg, .pdf)")
    p.add_argument("--max-radius", type=float, default=None, help="x-axis end of the plot")
    p.add_argument("--title", default=None, help="plot title")
    add_options(p, REPORT_OPTIONS, ("strict",))
    p.set_defaults(func=run)


def parse_labels(items: list[str]) -> list[tuple[str, list[Path]]]:
    """`NAME=GLOB` arguments as (name, paths) groups, in order, merging repeated names."""
    from dsmooth.analysis.tables import expand

    groups: dict[str, list[Path]] = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not name.strip() or not pattern:
            raise UserError(f"--label wants NAME=GLOB, got {item!r}.")
        paths = groups.setdefault(name.strip(), [])
        paths += [p for p in expand([pattern]) if p not in paths]
    return list(groups.items())


def make_warn(strict: bool):
    def warn(message: str) -> None:
        if strict:
            raise UserError(f"{message} (--strict)")
        print(f"dsmooth: warning: {message}", file=sys.stderr)

    return warn


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole file or nothing (temporary file, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"the output folder {path.parent} does not exist.")
    write_whole(path, text)


def build_report(args):
    from dsmooth.analysis.settings import with_caps
    from dsmooth.analysis.tables import analyze, expand, parse_radii

    if args.decimals < 0 or args.decimals > 6:
        raise UserError(f"--decimals must be between 0 and 6, got {args.decimals}.")
    report = analyze(
        logs=expand(args.logs),
        groups=parse_labels(args.label),
        radii=parse_radii(args.radii),
        envelope=args.envelope,
        warn=make_warn(args.strict),
    )
    # radius columns above what the logs' recorded settings can certify get a dagger
    return with_caps(report)


def run(args) -> int:
    from dsmooth.analysis.plots import check_figure_path, plot_curves
    from dsmooth.analysis.settings import plot_cap

    if args.plot:
        check_figure_path(args.plot)  # fail before the work, not after
    report = build_report(args)
    text = report.render(args.format, args.decimals)
    if args.plot:
        cap, cap_label = plot_cap(report.caps)
        plot_curves(
            report.series,
            args.plot,
            max_radius=args.max_radius,
            title=args.title,
            radii=report.radii,
            cap=cap,
            cap_label=cap_label,
        )
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
