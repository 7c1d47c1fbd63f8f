"""`dsmooth report`: one page about a run: settings, tables, curves, sample images.

`--out report.html` gives a single self-contained file (figures embedded as base64
PNG); `--out report.md` gives Markdown with the figures as PNG files beside it. What each
log's provenance record (`LOG.json`) holds is shown too: its certification settings, a
command with them, its class names, and the largest radius its n can certify (radius
columns above it are marked). The page is rendered by `dsmooth.analysis.report`.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from dsmooth.analysis.report import png_bytes, records, render_html, render_markdown, run_settings
from dsmooth.cli.commands.analyze import REPORT_OPTIONS
from dsmooth.cli.options import add_options
from dsmooth.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one HTML (or Markdown + PNG) page of a run: settings, tables, curves, images",
        description="Summarise result logs in one page: the settings (logs, groups, radii; "
        "from each log's provenance record: sigma, alpha, n0, n or the sequential method, "
        "noise, seed, precision, class names and a command with them), the "
        "certified-accuracy table (envelopes with --envelope, as in `dsmooth analyze`; "
        "radii above what the recorded n can certify are marked), per-log statistics, "
        "warnings, the accuracy curves and, with --data and --classifier, sample "
        "clean/noisy/denoised images. The format follows --out: .html (self-contained) or "
        ".md (figures written as PNGs beside it).",
    )
    add_options(
        p,
        REPORT_OPTIONS,
        ("logs", "label", "radii", "envelope", "decimals"),
        helps={
            "label": "a group",
            "radii": "l2 radii",
            "envelope": "one row per group (best per radius)",
            "decimals": "decimals of percentages",
        },
    )
    p.add_argument("--max-radius", type=float, default=None, help="x-axis end of the curves")
    p.add_argument("--title", default="dsmooth report", help="page title")
    p.add_argument("--out", required=True, help="report.html or report.md")
    add_options(p, REPORT_OPTIONS, ("strict",))
    g = p.add_argument_group("sample images (optional)")
    g.add_argument("--data", default=None, help="images (.npz or folder) for the sample grid")
    g.add_argument("--classifier", default=None, help="classifier for the sample grid")
    g.add_argument("--denoiser", default=None, help="denoiser for the sample grid")
    g.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3], help="image indices")
    g.add_argument("--sigmas", type=float, nargs="+", default=[0.25], help="noise levels")
    g.add_argument("--seed", type=int, default=0, help="noise seed (as in certify)")
    g.add_argument(
        "--class-names",
        default=None,
        help="'cifar10' or comma-separated names (default: the logs' record, folder names, "
        "or CIFAR-10's for CIFAR-10 data)",
    )
    g.add_argument("--device", default="cpu", help="torch device for the sample grid")
    p.set_defaults(func=run)


def class_names(args, recorded: dict[str, dict | None]) -> list[str] | None:
    """--class-names, else the names the logs' records give (their --class-names, or
    CIFAR-10's for a CIFAR-10 run of 10 classes)."""
    from dsmooth.analysis.settings import known_class_names
    from dsmooth.data.images import parse_class_names

    if args.class_names:
        return parse_class_names(args.class_names)
    for record in recorded.values():
        names = known_class_names(record)
        if names:
            return names
    return None


def sample_figure(args, names: list[str] | None = None):
    """The clean/noisy/denoised grid, or None when --data/--classifier are not given.
    Without --class-names or class folders, classes are named by `names` (the logs'),
    else CIFAR-10's when --data or --classifier is named so and the labels fit."""
    if not args.data and not args.classifier:
        return None
    if not (args.data and args.classifier):
        raise UserError("sample images need both --data and --classifier.")
    from dsmooth.analysis.settings import known_class_names
    from dsmooth.cli.commands.visualize import grid_from_args
    from dsmooth.data.load import load_images

    data = load_images(args.data)
    if not args.class_names and not data.classes:
        names = names or known_class_names(specs=[args.data, args.classifier])
        if names and len(data) and int(data.labels.max()) < len(names):
            args = argparse.Namespace(**{**vars(args), "class_names": ",".join(names)})
    return grid_from_args(args, data)


def settings(args, report, names: list[str] | None = None) -> list[tuple[str, str]]:
    from dsmooth._version import __version__

    rows = [
        ("generated", datetime.datetime.now().isoformat(timespec="seconds")),
        ("dsmooth", __version__),
        ("radii", " ".join(f"{r:g}" for r in report.radii)),
        ("rows", "envelope over each group's logs" if report.envelope else "one per log"),
    ]
    for s in report.series:
        rows.append((f"row {s.name}", ", ".join(str(log.path) for log in s.logs)))
    if names:
        rows.append(("classes", ", ".join(f"{k} {n}" for k, n in enumerate(names))))
    if args.data:
        rows.append(("sample data", str(args.data)))
        rows.append(("sample classifier", str(args.classifier)))
        if args.denoiser:
            rows.append(("sample denoiser", str(args.denoiser)))
    return rows


def run(args) -> int:
    from dsmooth.analysis.plots import plot_curves, save_figure
    from dsmooth.analysis.settings import plot_cap
    from dsmooth.cli.commands.analyze import build_report, write_text

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md"):
        raise UserError(f"{out}: the report is .html (one file) or .md (with PNGs beside it).")
    if not out.parent.is_dir():
        raise UserError(f"the output folder {out.parent} does not exist.")
    args.format = "markdown"
    report = build_report(args)
    cap, cap_label = plot_cap(report.caps)
    curves = plot_curves(
        report.series,
        max_radius=args.max_radius,
        title=args.title,
        radii=report.radii,
        cap=cap,
        cap_label=cap_label,
    )
    recorded = records(report)
    names = class_names(args, recorded)
    samples = sample_figure(args, names)
    setting_rows = settings(args, report, names)
    runs = run_settings(report, recorded)
    if suffix == ".md":
        curves_path = out.with_name(f"{out.stem}_curves.png")
        samples_path = out.with_name(f"{out.stem}_samples.png") if samples is not None else None
        save_figure(curves, curves_path, dpi=120)
        if samples_path is not None:
            save_figure(samples, samples_path, dpi=120)
        text = render_markdown(
            args.title,
            setting_rows,
            report=report,
            decimals=args.decimals,
            curves_name=curves_path.name,
            samples_name=samples_path.name if samples_path else None,
            runs=runs,
        )
    else:
        text = render_html(
            args.title,
            setting_rows,
            report=report,
            decimals=args.decimals,
            curves=png_bytes(curves),
            samples=None if samples is None else png_bytes(samples),
            runs=runs,
        )
    write_text(out, text)
    print(f"wrote {out}")
    return 0
