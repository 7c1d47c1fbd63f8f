"""Certified-accuracy tables from result logs: read, check, summarise, take envelopes.

A log is a TSV with a header line and one row per image (`dsmooth.logs.result_log`), from dsmooth
or from the reference implementations of Cohen et al. and Salman et al. Certified
accuracy at radius r is the fraction of rows with `correct == 1` and `radius >= r`;
the paper's tables show, for each radius, the best certified accuracy over several logs
(sigmas, denoisers) with the clean accuracy of the chosen log in parentheses, e.g.
`(72)56`. Percentages are rounded to nearest, as the reference code did
(`"{:.2f}".format(fraction)`), not truncated.

Every check here exists so that a malformed log gives an error or a warning, never a
silently wrong number.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np

from dsmooth.errors import UserError
from dsmooth.logs.result_log import CERTIFY_COLUMNS, PREDICT_COLUMNS, read_rows
from dsmooth.logs.result_log import parse_seconds as parse_seconds  # part of this module's API

#: Radii of the paper's tables (Salman et al. 2020, Tables 1 and 2).
PAPER_RADII = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
FORMATS = ("markdown", "latex", "csv", "json")

Warn = Callable[[str], None]


class LogWarning(UserWarning):
    """A log can be read but something about it deserves attention."""


def _default_warn(message: str) -> None:
    warnings.warn(message, LogWarning, stacklevel=3)


@dataclass
class Log:
    """One result log, validated: one row per image (duplicates removed), numbers parsed."""

    path: Path
    kind: str  # "certify" or "predict"
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    seconds: np.ndarray
    radius: np.ndarray | None = None  # None for predict logs
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
    #: decision-mode sequential logs (from the provenance record): the target radii. Their
    #: radius column means "certified at these targets", not the largest certified radius.
    targets: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.idx)

    def reports_at(self, radius: float) -> bool:
        """Whether certified accuracy at `radius` is what this log measured: always, except
        for a decision-mode log away from its targets (and 0, where it abstains or not)."""
        if self.targets is None or radius == 0:
            return True
        return any(math.isclose(radius, t, rel_tol=1e-9, abs_tol=1e-12) for t in self.targets)

    @property
    def images(self) -> int:
        return len(self.idx)

    def certified_count(self, radius: float) -> int:
        """Rows correct and certified at l2 radius >= `radius` (radius 0: clean count)."""
        if self.radius is None:
            if radius > 0:
                raise UserError(f"{self.path} is a predict log; it has no certified radii.")
            return int(self.correct.sum())
        return int(((self.correct == 1) & (self.radius >= radius)).sum())

    def certified_fraction(self, radius: float) -> Fraction:
        return Fraction(self.certified_count(radius), max(len(self), 1))

    def certified_accuracy(self, radius: float) -> float:
        """Fraction of images certified correct at `radius` (NaN for an empty log)."""
        if not len(self):
            return math.nan
        return self.certified_count(radius) / len(self)

    def curve(self, radii: np.ndarray) -> np.ndarray:
        """Certified accuracy at every radius of `radii` (vectorised; NaN where the log
        does not report, e.g. between a decision-mode log's targets)."""
        if not len(self):
            return np.full(len(radii), np.nan)
        if self.targets is not None:
            out = np.full(len(radii), np.nan)
            for k, r in enumerate(np.asarray(radii, dtype=float)):
                if self.reports_at(float(r)):
                    out[k] = self.certified_count(float(r)) / len(self)
            return out
        if self.radius is None:
            return np.where(np.asarray(radii) <= 0, self.correct.mean(), np.nan)
        certified = np.sort(self.radius[self.correct == 1])
        above = len(certified) - np.searchsorted(certified, radii, side="left")
        return above / len(self)

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else math.nan

    @property
    def acr(self) -> float:
        """Average certified radius: mean of radius over images, 0 when wrong or abstained.
        Undefined (NaN) for decision-mode logs, which stop sampling once their targets are
        decided, so their radii are not the largest certifiable ones."""
        if self.radius is None or not len(self) or self.targets is not None:
            return math.nan
        return float(np.where(self.correct == 1, self.radius, 0.0).mean())

    @property
    def abstain_rate(self) -> float:
        return float((self.predict == -1).mean()) if len(self) else math.nan

    @property
    def seconds_per_image(self) -> float:
        return float(self.seconds.mean()) if len(self) else math.nan

    def extra_mean(self, column: str) -> float:
        values = self.extra.get(column)
        if values is None or not len(values) or values.dtype.kind not in "fiu":
            return math.nan
        return float(np.mean(values))


# ----------------------------------------------------------------------------- reading


def read_log(path: str | os.PathLike, name: str = "", warn: Warn | None = None) -> Log:
    """Read and check one log; bad input raises UserError, doubtful input warns.

    The rows are those `dsmooth.logs.result_log.read_rows` accepts, the reader a resumed run
    uses too: a log certify would resume is a log this reads, row for row.
    """
    warn = warn or _default_warn
    table = read_rows(path)
    path = table.path
    if table.torn is not None:  # no newline after it: a row still being written, or cut off
        fields = len(table.torn.split("\t"))
        warn(f"{path}: ignored an incomplete last line ({fields} fields, no newline after it).")
    standard = CERTIFY_COLUMNS if table.kind == "certify" else PREDICT_COLUMNS
    col = table.columns
    log = Log(
        path=path,
        kind=table.kind,
        idx=col["idx"],
        label=col["label"],
        predict=col["predict"],
        correct=col["correct"],
        seconds=col["time"],
        radius=col.get("radius"),
        extra={c: v for c, v in col.items() if c not in standard},
        name=name or path.name,
        targets=_decision_targets(path),
    )
    if log.radius is not None:
        bad = np.flatnonzero((log.predict == -1) & (log.radius > 0))
        if len(bad):
            warn(
                f"{path}: {len(bad)} abstained row(s) carry a radius > 0 "
                f"(first: {table.where(bad[0])}); they count as not certified."
            )
    return _drop_duplicates(log, warn)


def _decision_targets(path: Path) -> tuple[float, ...] | None:
    """Target radii of a decision-mode log (sequential with --radius), from its record."""
    from dsmooth.certify.methods import certifier_from_record
    from dsmooth.logs.provenance import read

    certifier = certifier_from_record(read(path))
    return None if certifier is None else certifier.decided_radii


def _drop_duplicates(log: Log, warn: Warn) -> Log:
    """Keep the first row of each image index (read_rows refused conflicting labels)."""
    _, first = np.unique(log.idx, return_index=True)
    if len(first) == len(log):
        return log
    keep = np.sort(first)
    sorted_idx = np.sort(log.idx)
    same = sorted_idx[1:] == sorted_idx[:-1]
    dup_indices = np.unique(sorted_idx[1:][same])
    warn(
        f"{log.path}: {len(log) - len(keep)} duplicate row(s) for {len(dup_indices)} image "
        f"index(es) (e.g. {dup_indices[0]}); kept the first row of each."
    )
    return Log(
        path=log.path,
        kind=log.kind,
        idx=log.idx[keep],
        label=log.label[keep],
        predict=log.predict[keep],
        correct=log.correct[keep],
        seconds=log.seconds[keep],
        radius=None if log.radius is None else log.radius[keep],
        extra={k: v[keep] for k, v in log.extra.items()},
        name=log.name,
        targets=log.targets,
    )


def expand(patterns: Iterable[str]) -> list[Path]:
    """Paths from arguments that may be files or glob patterns (sorted matches)."""
    import glob

    out: list[Path] = []
    for pattern in patterns:
        if Path(pattern).exists() or not glob.has_magic(pattern):
            out.append(Path(pattern))
            continue
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise UserError(f"no log matches {pattern!r}.")
        out.extend(Path(m) for m in matches)
    return out


def short_names(paths: Sequence[Path]) -> list[str]:
    """Names that drop the folders all paths share (the file name for a single log)."""
    if not paths:
        return []
    if len(paths) == 1:
        return [paths[0].name]
    resolved = [str(p.resolve()) for p in paths]
    common = os.path.commonpath(resolved)
    names = [os.path.relpath(p, common) for p in resolved]
    return [n if n != "." else p.name for n, p in zip(names, paths, strict=True)]


# ----------------------------------------------------------------------------- series


@dataclass
class Series:
    """A row of a table and a line of a plot: one log, or the envelope over several."""

    name: str
    logs: list[Log]
    envelope: bool = False

    def curve(self, radii: np.ndarray) -> np.ndarray:
        curves = [log.curve(radii) for log in self.logs if len(log)]
        if not curves:
            return np.full(len(radii), np.nan)
        return np.max(curves, axis=0)


@dataclass
class Cell:
    """Certified accuracy at one radius, and the log it comes from (for envelopes)."""

    radius: float
    certified: Fraction | None  # None: not defined (e.g. radius > 0 on a predict log)
    log: Log | None
    clean: Fraction | None = None

    @property
    def certified_float(self) -> float | None:
        return None if self.certified is None else float(self.certified)

    @property
    def clean_float(self) -> float | None:
        return None if self.clean is None else float(self.clean)


def envelope_cell(logs: Sequence[Log], radius: float) -> Cell:
    """Best certified accuracy over `logs` at `radius`; ties go to the higher clean accuracy.

    Among logs equal in both, the first one given wins. This is the rule of the reference
    analysis code (and it reproduces the parentheses of the paper's tables).
    """
    best: tuple[Fraction, Fraction] | None = None
    chosen: Log | None = None
    for log in logs:
        if not len(log) or (log.radius is None and radius > 0) or not log.reports_at(radius):
            continue
        key = (log.certified_fraction(radius), log.certified_fraction(0.0))
        if best is None or key > best:
            best, chosen = key, log
    if chosen is None:
        return Cell(radius, None, None)
    return Cell(radius, best[0], chosen, best[1])


def series_cells(series: Series, radii: Sequence[float]) -> list[Cell]:
    if series.envelope:
        return [envelope_cell(series.logs, r) for r in radii]
    (log,) = series.logs
    cells = []
    for r in radii:
        if not len(log) or (log.radius is None and r > 0) or not log.reports_at(r):
            cells.append(Cell(r, None, log))
        else:
            cells.append(Cell(r, log.certified_fraction(r), log, log.certified_fraction(0.0)))
    return cells


def check_logs(logs: Sequence[Log], warn: Warn | None = None) -> list[Log]:
    """Warn about empty logs (returned without them) and logs over different images."""
    warn = warn or _default_warn
    kept = []
    for log in logs:
        if len(log):
            kept.append(log)
        else:
            warn(f"{log.path} holds no rows (only a header); left out.")
    decision = [log for log in kept if log.targets is not None]
    if decision and len(decision) < len([log for log in kept if log.radius is not None]):
        warn(
            f"{', '.join(log.name for log in decision[:3])} are decision-mode sequential logs "
            "(certified only at their target radii, no ACR) beside logs with full radii; "
            "compare them only at the targets."
        )
    sets = {}
    for log in kept:
        sets.setdefault(frozenset(log.idx.tolist()), []).append(log)
    if len(sets) > 1:
        groups = sorted(sets.items(), key=lambda kv: -len(kv[1]))
        main = groups[0][0]
        odd = [log for s, group in groups[1:] for log in group]
        sample = ", ".join(
            f"{log.name} ({len(log)} images, {len(main - frozenset(log.idx.tolist()))} missing, "
            f"{len(frozenset(log.idx.tolist()) - main)} extra)"
            for log in odd[:3]
        )
        warn(
            f"the logs cover different image sets ({len(sets)} distinct); "
            f"{len(groups[0][1])} log(s) share {len(main)} images, but: {sample}"
            f"{' ...' if len(odd) > 3 else ''}. Their accuracies are not directly comparable."
        )
    return kept


# ----------------------------------------------------------------------------- formatting


def percent(fraction: float | Fraction | None, decimals: int = 0) -> str:
    """A fraction as a percentage, rounded the way the paper's tables were.

    The reference code printed `"{:.2f}".format(fraction)` (round to nearest on the
    binary float) and the paper shows those two digits as a percentage; `decimals`
    adds digits the same way. An undefined value prints as `-`.
    """
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "-"
    text = f"{float(fraction):.{decimals + 2}f}"
    return f"{Decimal(text).scaleb(2):.{decimals}f}"


def parse_radii(tokens: Sequence[str]) -> list[float]:
    """Radii from numbers and `START:STOP:STEP` ranges (STOP included)."""
    radii: list[float] = []
    for token in tokens:
        parts = token.split(":")
        try:
            if len(parts) == 1:
                radii.append(float(token))
                continue
            if len(parts) != 3:
                raise ValueError
            start, stop, step = (Decimal(p) for p in parts)
        except (ValueError, ArithmeticError):
            raise UserError(
                f"radius {token!r} is neither a number nor START:STOP:STEP (e.g. 0:1.5:0.25)."
            ) from None
        if step <= 0 or stop < start:
            raise UserError(f"radius range {token!r} needs STEP > 0 and STOP >= START.")
        count = int((stop - start) / step) + 1
        if count > 10_000:
            raise UserError(f"radius range {token!r} has {count} radii; use a larger STEP.")
        radii.extend(float(start + k * step) for k in range(count))
    for r in radii:
        if not math.isfinite(r) or r < 0:
            raise UserError(f"radii must be finite and >= 0, got {r}.")
    return radii


def _radius_label(r: float) -> str:
    return f"{r:g}"


def _number(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class Report:
    """Everything `dsmooth analyze` prints: certified-accuracy rows and per-log statistics."""

    series: list[Series]
    radii: list[float]
    warnings: list[str] = field(default_factory=list)

    @property
    def logs(self) -> list[Log]:
        seen: dict[int, Log] = {}
        for s in self.series:
            for log in s.logs:
                seen.setdefault(id(log), log)
        return list(seen.values())

    @property
    def envelope(self) -> bool:
        return any(s.envelope for s in self.series)

    @property
    def extra_means(self) -> list[str]:
        """Numeric extra columns worth a mean in the statistics (e.g. n_used)."""
        cols = []
        for log in self.logs:
            for c, v in log.extra.items():
                if c == "n_used" and v.dtype.kind in "fiu" and c not in cols:
                    cols.append(c)
        return cols

    # -- table content
    def certified_rows(self) -> list[tuple[Series, list[Cell]]]:
        return [(s, series_cells(s, self.radii)) for s in self.series]

    def stats_rows(self) -> list[dict]:
        rows = []
        for log in self.logs:
            row = {
                "name": log.name,
                "path": str(log.path),
                "kind": log.kind,
                "images": len(log),
                "clean_accuracy": log.clean_accuracy,
                "acr": log.acr,
                "abstain_rate": log.abstain_rate,
                "seconds_per_image": log.seconds_per_image,
            }
            for c in self.extra_means:
                row[f"mean_{c}"] = log.extra_mean(c)
            rows.append(row)
        return rows

    # -- rendering
    def render(self, fmt: str = "markdown", decimals: int = 0) -> str:
        if fmt == "markdown":
            return self.markdown(decimals)
        if fmt == "latex":
            return self.latex(decimals)
        if fmt == "csv":
            return self.csv()
        if fmt == "json":
            return self.json()
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")

    def cell_text(self, cell: Cell, decimals: int, latex: bool = False) -> str:
        cert = percent(cell.certified, decimals)
        if not self.envelope or cell.certified is None:
            return cert
        clean = percent(cell.clean, decimals)
        return f"$^{{({clean})}}${cert}" if latex else f"({clean}){cert}"

    def stats_table(self, decimals: int) -> tuple[list[str], list[list[str]]]:
        # the accuracy of the smoothed classifier (certified at r = 0; abstaining = wrong)
        head = ["log", "images", "smoothed acc. %", "ACR", "abstain %", "s/image"]
        head += [f"mean {c}" for c in self.extra_means]
        body = []
        for row in self.stats_rows():
            line = [
                row["name"],
                str(row["images"]),
                percent(row["clean_accuracy"], decimals),
                _number(row["acr"], 3),
                percent(row["abstain_rate"], decimals),
                _number(row["seconds_per_image"], 3),
            ]
            line += [_number(row[f"mean_{c}"], 1) for c in self.extra_means]
            body.append(line)
        return head, body

    def main_table(self, decimals: int, latex: bool = False) -> tuple[list[str], list[list[str]]]:
        title = "l2 radius" if not latex else r"$\ell_2$ radius"
        head = [title] + [_radius_label(r) for r in self.radii]
        body = []
        for s, cells in self.certified_rows():
            body.append([s.name] + [self.cell_text(c, decimals, latex) for c in cells])
        return head, body

    def markdown(self, decimals: int = 0) -> str:
        what = (
            "Certified accuracy (%) at each l2 radius: best over the logs of each row, "
            "with the smoothed accuracy (r = 0) of the chosen log in parentheses."
            if self.envelope
            else "Certified accuracy (%) at each l2 radius."
        )
        head, body = self.main_table(decimals)
        out = [what, "", _md_table(head, body), ""]
        head, body = self.stats_table(decimals)
        out += ["Per log:", "", _md_table(head, body)]
        return "\n".join(out) + "\n"

    def latex(self, decimals: int = 0) -> str:
        def tabular(head: list[str], body: list[list[str]]) -> str:
            esc = _latex_escape
            lines = [
                r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}",
                r"\toprule",
                " & ".join(head) + r" \\",
                r"\midrule",
            ]
            lines += [" & ".join([esc(row[0]), *row[1:]]) + r" \\" for row in body]
            lines += [r"\bottomrule", r"\end{tabular}"]
            return "\n".join(lines)

        head, body = self.main_table(decimals, latex=True)
        out = [tabular(head, body), ""]
        head, body = self.stats_table(decimals)
        head = [h.replace("%", r"\%") for h in head]
        out.append(tabular(head, body))
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["series", "radius", "certified_accuracy", "clean_accuracy", "log"])
        for s, cells in self.certified_rows():
            for c in cells:
                w.writerow(
                    [
                        s.name,
                        _radius_label(c.radius),
                        "" if c.certified is None else repr(float(c.certified)),
                        "" if c.clean is None else repr(float(c.clean)),
                        "" if c.log is None else str(c.log.path),
                    ]
                )
        return buf.getvalue()

    def json(self) -> str:
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

        data = {
            "radii": self.radii,
            "envelope": self.envelope,
            "series": [
                {
                    "name": s.name,
                    "logs": [str(log.path) for log in s.logs],
                    "cells": [
                        {
                            "radius": c.radius,
                            "certified_accuracy": c.certified_float,
                            "clean_accuracy": c.clean_float,
                            "log": None if c.log is None else str(c.log.path),
                        }
                        for c in cells
                    ],
                }
                for s, cells in self.certified_rows()
            ],
            "logs": [{k: num(v) for k, v in row.items()} for row in self.stats_rows()],
            "warnings": self.warnings,
        }
        return json.dumps(data, indent=2) + "\n"


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    lines = [row(head), "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += [row(r) for r in body]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(a, b)
    text = text.replace("#", r"\#").replace("$", r"\$")
    return text


# ----------------------------------------------------------------------------- entry point


def analyze(
    logs: Sequence[str | os.PathLike] = (),
    groups: Sequence[tuple[str, Sequence[str | os.PathLike]]] = (),
    radii: Sequence[float] = DEFAULT_RADII,
    envelope: bool = False,
    warn: Warn | None = None,
) -> Report:
    """Read logs and build the rows of a certified-accuracy table.

    `logs` are paths; `groups` are (name, paths) pairs. Without `envelope` every log is
    a row; with it, each group (and the ungrouped `logs` together) is one row holding the
    best certified accuracy over its logs at each radius.
    """
    collected: list[str] = []

    def record(message: str) -> None:
        collected.append(message)
        (warn or _default_warn)(message)

    radii = [float(r) for r in radii]
    if not radii:
        raise UserError("give at least one radius.")
    read = _read_entries(_entries(logs, groups), record)
    if any(log.kind == "predict" for _, log in read) and any(r > 0 for r in radii):
        record("predict logs have no certified radii; their cells at radius > 0 are left empty.")
    ungrouped = [log for g, log in read if g is None]
    members: dict[str, list[Log]] = {name: [] for name, _ in groups}
    for g, log in read:
        if g is not None:
            members[g].append(log)
    series = _series(ungrouped, members, envelope)
    for g, logs in members.items():  # say so rather than drop a group silently
        if not logs:
            record(f"the group {g!r} has only empty logs; it has no row.")
    return Report(series, radii, collected)


def _entries(
    logs: Sequence[str | os.PathLike], groups: Sequence[tuple[str, Sequence[str | os.PathLike]]]
) -> list[tuple[str | None, Path]]:
    """(group or None, path) for every log given."""
    entries: list[tuple[str | None, Path]] = [(None, Path(p)) for p in logs]
    for name, paths in groups:
        if not paths:
            raise UserError(f"the group {name!r} has no logs.")
        entries += [(name, Path(p)) for p in paths]
    if not entries:
        raise UserError("give at least one log (or --label NAME=GLOB).")
    return entries


def _read_entries(
    entries: list[tuple[str | None, Path]], record: Warn
) -> list[tuple[str | None, Log]]:
    """(group, log) for every entry whose log is not empty; a file given twice is read once."""
    names = short_names([p for _, p in entries])
    cache: dict[Path, Log] = {}
    read: list[tuple[str | None, Log]] = []
    for (group, path), name in zip(entries, names, strict=True):
        key = path.resolve()
        if key not in cache:
            cache[key] = read_log(path, name=name, warn=record)
        read.append((group, cache[key]))
    kept = {id(log) for log in check_logs(list(cache.values()), warn=record)}
    if not kept:
        raise UserError("every log is empty; nothing to analyze.")
    return [(g, log) for g, log in read if id(log) in kept]


def _series(ungrouped: list[Log], members: dict[str, list[Log]], envelope: bool) -> list[Series]:
    """The table's rows: each log, or with `envelope` each group's (and the ungrouped
    logs') best certified accuracy."""
    series: list[Series] = []
    if envelope:
        if ungrouped:
            series.append(Series("envelope", ungrouped, envelope=True))
        series += [Series(g, logs, envelope=True) for g, logs in members.items() if logs]
    else:
        series += [Series(log.name, [log]) for log in ungrouped]
        for g, logs in members.items():
            series += [Series(g if len(logs) == 1 else f"{g}: {x.name}", [x]) for x in logs]
    return series
