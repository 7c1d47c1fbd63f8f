"""`dsmooth report`: one page about a run: settings, tables, curves, sample images.

`--out report.html` gives a single self-contained file (figures embedded as base64
PNG); `--out report.md` gives Markdown with the figures as PNG files beside it. What each
log's provenance record (`LOG.json`) holds is shown too: its certification settings, a
command with them, its class names, and the largest radius its n can certify (radius
columns above it are marked).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
from pathlib import Path

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
    p.add_argument("logs", nargs="*", metavar="LOG", help="result logs (files or glob patterns)")
    p.add_argument("--label", action="append", default=[], metavar="NAME=GLOB", help="a group")
    p.add_argument("--radii", nargs="+", default=["0:1.5:0.25"], metavar="R", help="l2 radii")
    p.add_argument("--envelope", action="store_true", help="one row per group (best per radius)")
    p.add_argument("--decimals", type=int, default=0, help="decimals of percentages")
    p.add_argument("--max-radius", type=float, default=None, help="x-axis end of the curves")
    p.add_argument("--title", default="dsmooth report", help="page title")
    p.add_argument("--out", required=True, help="report.html or report.md")
    p.add_argument("--strict", action="store_true", help="treat every warning as an error")
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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def records(report) -> dict[str, dict | None]:
    """Each log's provenance record (None where it has none), by log path."""
    from dsmooth.provenance import read

    return {str(log.path): read(log.path) for log in report.logs}


def class_names(args, recorded: dict[str, dict | None]) -> list[str] | None:
    """--class-names, else the names the logs' records give (their --class-names, or
    CIFAR-10's for a CIFAR-10 run of 10 classes)."""
    from dsmooth.data import parse_class_names
    from dsmooth.log_settings import known_class_names

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
    from dsmooth.commands.visualize import grid_from_args
    from dsmooth.data import load_images
    from dsmooth.log_settings import known_class_names

    data = load_images(args.data)
    if not args.class_names and not data.classes:
        names = names or known_class_names(specs=[args.data, args.classifier])
        if names and len(data) and int(data.labels.max()) < len(names):
            args = argparse.Namespace(**{**vars(args), "class_names": ",".join(names)})
    return grid_from_args(args, data)


def settings(args, report, names: list[str] | None = None) -> list[tuple[str, str]]:
    from dsmooth import __version__

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


def run_settings(report, recorded: dict[str, dict | None]):
    """The certification settings table (one row per log with a record) and the
    commands with them; ([], [], []) when no log has a record."""
    from dsmooth.log_settings import SETTINGS_COLUMNS, certify_command, settings_row

    if not any(recorded.values()):
        return [], [], []
    head = ["log", *SETTINGS_COLUMNS]
    body, commands = [], []
    for log in report.logs:
        record = recorded.get(str(log.path))
        if not record:
            body.append([log.name, "no provenance record"] + ["-"] * (len(head) - 2))
            continue
        row = settings_row(record)
        body.append([log.name, *(row[c] for c in SETTINGS_COLUMNS)])
        commands.append((log.name, certify_command(record, log.path)))
    return head, body, commands


def table_caption(report) -> str:
    if report.envelope:
        return (
            "Best certified accuracy (%) over the logs of each row; in parentheses the "
            "smoothed classifier's accuracy (r = 0) of the chosen log."
        )
    return (
        "Certified accuracy (%) at each l2 radius; at r = 0 it is the smoothed "
        "classifier's accuracy (abstentions count as wrong)."
    )


NOTES = (
    "smoothed acc.: the smoothed classifier's accuracy, i.e. certified accuracy at r = 0 "
    "(abstentions count as wrong). ACR: average certified radius (0 where wrong or "
    "abstained). s/image: seconds per image."
)
COMMANDS_NOTE = (
    "Rebuilt from each log's provenance record; options it does not keep (--skip, --max, "
    "the input contract of foreign models) are not shown."
)


def _html_table(head: list[str], body: list[list[str]]) -> str:
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body]
    out.append("</table>")
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td { font-variant-numeric: tabular-nums; }
.warn { color: #a40; }
.note { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; word-break: break-all; }
img { max-width: 100%; }
"""


def render_html(
    title, setting_rows, report, decimals, curves: bytes, samples: bytes | None, runs=None
):
    e = html.escape
    head, body, commands = runs or ([], [], [])

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Settings</h2>",
        _html_table(["setting", "value"], [list(r) for r in setting_rows]),
    ]
    if head:
        parts += ["<h2>Certification settings</h2>", _html_table(head, body)]
        parts.append(f'<p class="note">{e(COMMANDS_NOTE)}</p>')
        parts += [f"<p>{e(name)}:</p><pre>{e(cmd)}</pre>" for name, cmd in commands]
    parts += [
        "<h2>Certified accuracy</h2>",
        f"<p>{e(table_caption(report))}</p>",
        _html_table(*report.main_table(decimals)),
    ]
    note = getattr(report, "footnote", None)
    if note:
        parts.append(f'<p class="note">{e(note)}</p>')
    parts += [
        "<h2>Per log</h2>",
        _html_table(*report.stats_table(decimals)),
        f'<p class="note">{e(NOTES)}</p>',
    ]
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f'<li class="warn">{e(w)}</li>' for w in report.warnings]
        parts.append("</ul>")
    parts += ["<h2>Curves</h2>", img(curves, "certified accuracy against radius")]
    if samples is not None:
        parts += ["<h2>Sample images</h2>", img(samples, "clean, noisy and denoised images")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def md_table(head: list[str], body: list[list[str]], numbers: bool = True) -> str:
    """A Markdown table; `numbers` right-aligns every column after the first."""

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    rule = ["---"] + ["---:" if numbers else "---"] * (len(head) - 1)
    lines = [row(head), "|" + "|".join(rule) + "|"]
    return "\n".join(lines + [row(r) for r in body])


def render_markdown(title, setting_rows, report, decimals, curves_name, samples_name, runs=None):
    head, body, commands = runs or ([], [], [])
    parts = [f"# {title}", "", "## Settings", ""]
    parts += [md_table(["setting", "value"], [[k, v] for k, v in setting_rows], False), ""]
    if head:
        table = md_table(head, body, numbers=False)
        parts += ["## Certification settings", "", table, "", COMMANDS_NOTE, ""]
        for name, cmd in commands:
            parts += [f"{name}:", "", "```", cmd, "```", ""]
    parts += ["## Certified accuracy", "", table_caption(report), ""]
    parts += [md_table(*report.main_table(decimals)), ""]
    note = getattr(report, "footnote", None)
    if note:
        parts += [note, ""]
    parts += ["## Per log", "", md_table(*report.stats_table(decimals)), "", NOTES, ""]
    if report.warnings:
        parts += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    parts += ["## Curves", "", f"![certified accuracy against radius]({curves_name})", ""]
    if samples_name:
        parts += [
            "## Sample images",
            "",
            f"![clean, noisy and denoised images]({samples_name})",
            "",
        ]
    return "\n".join(parts)


def run(args) -> int:
    from dsmooth.commands.analyze import build_report, write_text
    from dsmooth.log_settings import plot_cap
    from dsmooth.plots import plot_curves, save_figure

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
            report,
            args.decimals,
            curves_path.name,
            samples_path.name if samples_path else None,
            runs,
        )
    else:
        text = render_html(
            args.title,
            setting_rows,
            report,
            args.decimals,
            _png(curves),
            None if samples is None else _png(samples),
            runs,
        )
    write_text(out, text)
    print(f"wrote {out}")
    return 0
