"""The result log: a TSV with one row per image, appended atomically, resumable.

Columns start with the reference layout (`idx label predict radius correct time` for
certify, `idx label predict correct time` for predict) so logs from Cohen et al. and
Salman et al. read the same; extra columns go after these. Each row is written with a
single `write` on an O_APPEND descriptor and fsynced, so a killed run leaves at most one
partial trailing line, which `open_log` removes before resuming.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from pathlib import Path

from dsmooth.errors import UserError

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
#: Sequential certification adds the samples used per image (n0 + estimation).
SEQUENTIAL_CERTIFY_COLUMNS = (*CERTIFY_COLUMNS, "n_used")
#: `--stop-if-misclassified` adds 1 for rows that stopped after selection (selected class
#: not the label: no estimation, radius 0, correct 0), 0 for the others.
SELECTION_ONLY = "selection_only"


def format_time(seconds: float) -> str:
    """Elapsed time as the reference code writes it (str of a timedelta)."""
    return str(datetime.timedelta(seconds=float(seconds)))


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_radius(radius: float) -> str:
    """A certified radius with 6 significant digits, rounded *down*: a log must never
    claim more than was certified (0.2499996 is written 0.249999, not 0.25)."""
    text = f"{radius:.6g}"
    if not math.isfinite(radius) or float(text) <= radius:
        return text
    digits = 5 - math.floor(math.log10(abs(radius))) if radius else 0
    down = math.floor(radius * 10**digits) / 10**digits
    while down > radius:  # float rounding in the product; step one unit down
        down -= 10**-digits
    return f"{down:.{max(digits, 0)}f}".rstrip("0").rstrip(".") if digits > 0 else f"{down:g}"


class ResultLog:
    """Append-only TSV log; `done` holds the indices already written."""

    def __init__(
        self, path: str | os.PathLike, columns: Sequence[str], provenance: dict | None = None
    ):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.done: set[int] = set()
        self.provenance = provenance
        self._fd: int | None = None

    def open(self) -> ResultLog:
        """Create the log with its header, or resume an existing one (after checking its
        provenance record, when one is given: dsmooth.provenance)."""
        header = "\t".join(self.columns) + "\n"
        if self.path.parent and not self.path.parent.exists():
            raise UserError(f"the output folder {self.path.parent} does not exist.")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume(header)
        else:
            if self.provenance is not None:  # a new log: any older record is stale
                from dsmooth.provenance import sidecar, write

                write(sidecar(self.path), self.provenance)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                f.write(header)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return self

    def _resume(self, header: str) -> None:
        data = self.path.read_bytes()
        text = data.decode("utf-8", errors="replace")
        first_end = text.find("\n")
        if first_end < 0 or text[: first_end + 1] != header:
            found = text[:first_end].split("\t") if first_end >= 0 else text.split("\t")
            raise UserError(
                f"{self.path} exists with columns {found}, not {list(self.columns)}; "
                "choose another --out."
            )
        complete = text.rfind("\n") + 1
        done = self._complete_rows(text[first_end + 1 : complete], first_line=2)
        if self.provenance is not None:  # before anything is changed
            from dsmooth.provenance import check_or_write

            check_or_write(self.path, self.provenance, rows=len(done))
        if complete < len(text):  # a partial row from a killed run: drop it
            with open(self.path, "r+b") as f:
                f.truncate(len(text[:complete].encode("utf-8")))
                f.flush()
                os.fsync(f.fileno())
        self.done = set(done)

    def _complete_rows(self, body: str, first_line: int) -> list[int]:
        """Indices of the complete rows, refusing (before anything is changed) a row that
        is not one: a wrong number of fields, or an index that is not a whole number. A
        row is only counted as done if `dsmooth analyze` could read it."""
        indices = []
        for n, line in enumerate(body.split("\n"), start=first_line):
            if not line.strip():
                continue
            fields = line.rstrip("\r").split("\t")
            if len(fields) != len(self.columns) or not fields[0].strip().isdigit():
                raise UserError(
                    f"{self.path}, line {n} is not a complete row ({len(fields)} fields, "
                    f"the header has {len(self.columns)}); remove that line to resume."
                )
            indices.append(int(fields[0]))
        return indices

    def append(self, row: dict) -> None:
        """Write one complete row (all columns) and make it durable."""
        if self._fd is None:
            raise RuntimeError("ResultLog.open() was not called")
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}")
        line = "\t".join(
            format_radius(row[c]) if c == "radius" else format_value(row[c]) for c in self.columns
        )
        line += "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)
        self.done.add(int(row["idx"]))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultLog:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.close()
