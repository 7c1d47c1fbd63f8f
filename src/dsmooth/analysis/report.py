"""The report page: settings, tables, curves and sample images as HTML or Markdown.

Renderers only: they take an analysis `Report`, the settings rows and the figures
(PNG bytes or file names) and return the page's text, so `dsmooth report` and the
demo's table share one Markdown writer.
"""

from __future__ import annotations

import base64
import html
import io


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, at the resolution the report embeds."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def records(report) -> dict[str, dict | None]:
    """Each log's provenance record (None where it has none), by log path."""
    from dsmooth.logs.provenance import read

    return {str(log.path): read(log.path) for log in report.logs}


def run_settings(report, recorded: dict[str, dict | None]):
    """The certification settings table (one row per log with a record) and the
    commands with them; ([], [], []) when no log has a record."""
    from dsmooth.analysis.settings import SETTINGS_COLUMNS, certify_command, settings_row

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


def html_table(head: list[str], body: list[list[str]]) -> str:
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
    title, setting_rows, *, report, decimals, curves: bytes, samples: bytes | None, runs=None
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
        html_table(["setting", "value"], [list(r) for r in setting_rows]),
    ]
    if head:
        parts += ["<h2>Certification settings</h2>", html_table(head, body)]
        parts.append(f'<p class="note">{e(COMMANDS_NOTE)}</p>')
        parts += [f"<p>{e(name)}:</p><pre>{e(cmd)}</pre>" for name, cmd in commands]
    parts += [
        "<h2>Certified accuracy</h2>",
        f"<p>{e(table_caption(report))}</p>",
        html_table(*report.main_table(decimals)),
    ]
    note = getattr(report, "footnote", None)
    if note:
        parts.append(f'<p class="note">{e(note)}</p>')
    parts += [
        "<h2>Per log</h2>",
        html_table(*report.stats_table(decimals)),
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


def render_markdown(title, setting_rows, *, report, decimals, curves_name, samples_name, runs=None):
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
