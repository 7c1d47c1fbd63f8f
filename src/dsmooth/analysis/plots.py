"""Figures: certified-accuracy curves and image grids, drawn off-screen.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never through
pyplot, so no display or global backend is touched (safe on servers, in tests and
inside notebooks). Files are written atomically; the format follows the extension.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from dsmooth._io import replacing
from dsmooth.analysis.tables import Series
from dsmooth.errors import UserError

FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: Points per curve; certified accuracy is a step function of the radius.
CURVE_POINTS = 1001


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_figure_path(path: str | os.PathLike) -> Path:
    """A writable figure path whose extension names a known format, else UserError."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise UserError(
            f"{path}: the figure format comes from the extension; use one of "
            f"{', '.join(FIGURE_FORMATS)}."
        )
    if not path.parent.is_dir():
        raise UserError(f"the output folder {path.parent} does not exist.")
    return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write `fig` to `path` (PNG, SVG or PDF by extension) without leaving a partial file."""
    path = check_figure_path(path)
    fmt = FIGURE_FORMATS[path.suffix.lower()]
    with replacing(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def default_max_radius(series: Sequence[Series]) -> float:
    """The largest certified radius among correct rows, rounded up to a multiple of 0.25."""
    largest = 0.0
    for s in series:
        for log in s.logs:
            if log.radius is not None and len(log) and (log.correct == 1).any():
                largest = max(largest, float(log.radius[log.correct == 1].max()))
    return max(0.25, math.ceil(largest * 4 + 1e-9) / 4)


def plot_curves(
    series: Sequence[Series],
    path: str | os.PathLike | None = None,
    *,
    max_radius: float | None = None,
    title: str | None = None,
    radii: Sequence[float] | None = None,
    cap: float | None = None,
    cap_label: str | None = None,
) -> Figure:
    """Certified accuracy (%, as the tables print it) against l2 radius, one line per
    series (envelopes take the max).

    `radii` (a table's radii) get a marker on each curve and a tick on the x-axis, so the
    figure reads off the table's cells; without `max_radius` the x-axis reaches them all.
    `cap`, the largest radius the runs' settings can certify (dsmooth.analysis.settings),
    shades the radii beyond it, labelled `cap_label`.
    Returns the figure; writes it to `path` when given.
    """
    if not series:
        raise UserError("nothing to plot: no logs with rows.")
    if path is not None:
        check_figure_path(path)
    if max_radius is None:  # the curves' extent, and at least the table's radii
        max_radius = max([default_max_radius(series), *(float(r) for r in radii or ())])
    if not (max_radius > 0 and math.isfinite(max_radius)):
        raise UserError(f"the largest radius to plot must be positive, got {max_radius}.")
    marked = sorted({float(r) for r in radii or () if 0.0 <= r <= max_radius})
    grid = np.union1d(np.linspace(0.0, max_radius, CURVE_POINTS), marked)
    at_marks = [int(np.searchsorted(grid, r)) for r in marked]
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    for s in series:
        targets = sorted({t for log in s.logs for t in (log.targets or ())} | {0.0})
        if all(log.targets is not None for log in s.logs):  # decision mode: its points only
            points = np.array([t for t in targets if t <= max_radius])
            ax.plot(
                points,
                s.curve(points),
                label=f"{s.name} (at target radii)",
                linewidth=1.2,
                linestyle="--",
                marker="o",
            )
        else:
            ax.plot(
                grid,
                s.curve(grid),
                label=s.name,
                linewidth=1.8,
                marker="o" if at_marks else None,
                markersize=4,
                markevery=at_marks or None,
            )
    if cap is not None and 0.0 <= cap < max_radius:
        ax.axvspan(cap, max_radius, color="0.5", alpha=0.15, linewidth=0, label=cap_label)
    if marked and len(marked) <= 16:
        ax.set_xticks(marked, labels=[f"{r:g}" for r in marked])  # as the table heads them
    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, 1.0)  # fractions, labelled as percentages
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0, symbol=""))
    ax.set_xlabel(r"$\ell_2$ radius (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title(title or "Certified accuracy against $\\ell_2$ radius")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    if path is not None:
        save_figure(fig, path)
    return fig


def image_grid(
    images: Sequence[Sequence[np.ndarray]],
    captions: Sequence[Sequence[str]],
    *,
    column_titles: Sequence[str],
    row_titles: Sequence[str] = (),
    colors: Sequence[Sequence[str]] | None = None,
    cell_inches: float = 1.6,
) -> Figure:
    """A grid of HWC images in [0, 1] with a caption under each and titles on top."""
    rows, cols = len(images), len(column_titles)
    if rows == 0:
        raise UserError("no images to show.")
    fig = new_figure(cols * cell_inches + 0.6, rows * (cell_inches + 0.35) + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = np.clip(np.asarray(images[r][c], dtype=np.float32), 0.0, 1.0)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            color = colors[r][c] if colors else "black"
            ax.set_xlabel(captions[r][c], fontsize=8, color=color)
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=8)
    return fig
