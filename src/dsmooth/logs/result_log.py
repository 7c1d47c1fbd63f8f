"""The result log: a TSV with one row per image, appended atomically, resumable.

Columns start with the reference layout (`idx label predict radius correct time` for
certify, `idx label predict correct time` for predict) so logs from Cohen et al. and
Salman et al. read the same; extra columns go after these. Each row is written with a
single `write` on an O_APPEND descriptor and fsynced, so a killed run leaves at most one
partial trailing line, which `ResultLog` removes before resuming.

`read_rows` is the one reader of these logs: `ResultLog` resumes from it and
`dsmooth.analysis.tables` builds its tables from it, so a row counted as done is a row `dsmooth
analyze` can read. The only imperfection it tolerates is a torn last line (no newline
after it: a row a killed run was writing); any other malformed line is a `UserError`
naming the file and the line.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsmooth._io import write_text
from dsmooth.errors import UserError

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
#: Sequential certification adds the samples used per image (n0 + estimation).
SEQUENTIAL_CERTIFY_COLUMNS = (*CERTIFY_COLUMNS, "n_used")
#: `--stop-if-misclassified` adds 1 for rows that stopped after selection (selected class
#: not the label: no estimation, radius 0, correct 0), 0 for the others.
SELECTION_ONLY = "selection_only"
#: Image-folder data: each row names its image (subfolder/file).
FILE = "file"

#: Columns of whole numbers (written in digits, with a minus sign for predict's -1), and
#: those of them that are 0 or 1. Other extra columns (`file`, or a column another tool
#: added) are kept as they are, numbers when every value is one.
INT_COLUMNS = ("idx", "label", "predict", "correct", "n_used", "queries", SELECTION_ONLY)
FLAG_COLUMNS = ("correct", SELECTION_ONLY)
TEXT_COLUMNS = (FILE,)

_NON_NEGATIVE = {"idx": "image indices", "label": "labels", "n_used": "counts", "queries": "counts"}
_INT_RE = re.compile(r"-?[0-9]+")
_INTS_RE = re.compile(r"-?[0-9]+(?:\n-?[0-9]+)*")
_TIME_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


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
        provenance record, when one is given: dsmooth.logs.provenance)."""
        if self.path.parent and not self.path.parent.exists():
            raise UserError(f"the output folder {self.path.parent} does not exist.")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            if self.provenance is not None:  # a new log: any older record is stale
                from dsmooth.logs.provenance import sidecar, write

                write(sidecar(self.path), self.provenance)
            write_text(self.path, "\t".join(self.columns) + "\n")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return self

    def _resume(self) -> None:
        """Read the log (read_rows: refusing, before anything is changed, a log that is
        not one), check its provenance, then drop a torn last line from a killed run."""
        table = read_rows(self.path, self.columns)
        if self.provenance is not None:  # before anything is changed
            from dsmooth.logs.provenance import check_or_write

            check_or_write(self.path, self.provenance, rows=len(table))
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if table.complete < size:  # a torn row from a killed run: drop it
                f.truncate(table.complete)
            f.seek(table.complete - 1)
            ends_line = f.read(1) == b"\n"
            if not ends_line:  # a header without its newline: the rows go below it
                f.write(b"\n")
            if table.complete < size or not ends_line:
                f.flush()
                os.fsync(f.fileno())
        self.done = set(table.columns["idx"].tolist())

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
        self._check_same_file()
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)
        self.done.add(int(row["idx"]))

    def _check_same_file(self) -> None:
        """Refuse to append once the path names another file than the one opened: a
        program that rewrites files by replacing them (a git merge, stash or checkout,
        an editor) would otherwise leave every later row in an unlinked file, lost."""
        opened = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise UserError(
                f"{self.path} was {'removed' if now is None else 'replaced'} by another "
                "program while this run was writing it; stopping so that no row is lost "
                "(run the same command again to resume from what the file holds)."
            )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultLog:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- reading


def parse_seconds(text: str) -> float:
    """Seconds from `0:00:09.862955` (str of a timedelta, reference logs) or `9.86`."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        m = _TIME_RE.match(text)
        if not m:
            raise ValueError(text) from None
        days, hours, minutes, secs = m.groups()
        value = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


@dataclass
class LogRows:
    """The checked rows of a result log: one typed array per column, in file order."""

    path: Path
    header: tuple[str, ...]
    kind: str  # "certify" (a radius column) or "predict"
    columns: dict[str, np.ndarray]
    lines: np.ndarray  # the line number (1 = header) of each row
    #: the last line when no newline follows it (a row a killed run was writing): never
    #: a row, never an error; None when the file ends with a newline
    torn: str | None
    #: bytes of the file up to the end of its last complete line
    complete: int

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, i: int) -> str:
        return f"{self.path}, line {self.lines[i]}"


def read_rows(path: str | os.PathLike, columns: Sequence[str] | None = None) -> LogRows:
    """Read and check a result log; anything but a torn last line that is not a row
    raises a UserError naming the file and the line.

    With `columns` (resuming a log), the header must be exactly those columns; without,
    it must hold the certify or the predict columns, in any order, with any extras.
    """
    path = Path(path)
    text, torn, end = _read_text(path)
    lines = text.split("\n")
    header = tuple(c.strip() for c in lines[0].rstrip("\r").split("\t"))
    kind, standard = _check_header(path, header, columns)
    rows, numbers = _split_rows(path, header, lines)
    table = LogRows(
        path=path,
        header=header,
        kind=kind,
        columns={},
        lines=np.array(numbers, dtype=np.int64),
        torn=torn if torn.strip() else None,
        complete=end,
    )
    for j, name in enumerate(header):
        values = [r[j].strip() for r in rows]
        if name in standard or name in INT_COLUMNS:
            table.columns[name] = _parse_column(name, values, table.where)
        elif name in TEXT_COLUMNS:
            table.columns[name] = np.array(values, dtype=object)
        else:
            table.columns[name] = _extra_column(values)
    _check_values(table)
    return table


def _read_text(path: Path) -> tuple[str, str, int]:
    """(the text up to the end of the last complete line, the torn rest, the bytes of the
    former); a lone header line without its newline counts as complete."""
    if not path.is_file():
        raise UserError(f"{path} is not a file." if path.exists() else f"log not found: {path}.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}).") from None
    end = data.rfind(b"\n") + 1
    if end == 0:  # a header line and nothing else, without its newline
        end = len(data)
        torn_bytes = b""
    else:
        torn_bytes = data[end:]
    try:
        text = data[:end].decode("utf-8-sig")  # tolerate a BOM
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text (UTF-8) log.") from None
    return text, torn_bytes.decode("utf-8", errors="replace"), end


def _check_header(
    path: Path, header: tuple[str, ...], columns: Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """The log's kind and its standard columns, once the header is known to hold them."""
    if header == ("",):
        raise UserError(f"{path} is empty; a log starts with a header line.")
    if columns is not None and header != tuple(columns):
        raise UserError(
            f"{path} exists with columns {list(header)}, not {list(columns)}; choose another --out."
        )
    if len(set(header)) != len(header):
        raise UserError(f"{path}: the header repeats a column name: {list(header)}.")
    kind = "certify" if "radius" in header else "predict"
    standard = CERTIFY_COLUMNS if kind == "certify" else PREDICT_COLUMNS
    missing = [c for c in standard if c not in header]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)} (header: {' '.join(header)}); "
            f"expected {' '.join(CERTIFY_COLUMNS)} or {' '.join(PREDICT_COLUMNS)}."
        )
    return kind, standard


def _split_rows(
    path: Path, header: tuple[str, ...], lines: list[str]
) -> tuple[list[list[str]], list[int]]:
    """The fields of each non-blank line after the header, and its line number."""
    rows: list[list[str]] = []
    numbers: list[int] = []
    for n, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(
                f"{path}, line {n} is not a complete row ({len(fields)} fields, the header "
                f"has {len(header)}); fix or remove that line."
            )
        rows.append(fields)
        numbers.append(n)
    return rows, numbers


def _fast_column(name: str, values: list[str]) -> np.ndarray | None:
    """Quick parsing of well-formed columns; None sends them to the careful path."""
    if not values:
        return None
    try:
        if name in INT_COLUMNS:
            if not _INTS_RE.fullmatch("\n".join(values)):
                return None
            return np.fromiter(map(int, values), np.int64, len(values))
        if name == "time" and ":" in values[0]:
            parts = (v.split(":") for v in values)
            seconds = (float(h) * 3600 + float(m) * 60 + float(sec) for h, m, sec in parts)
            out = np.fromiter(seconds, np.float64, len(values))
        else:
            out = np.fromiter(map(float, values), np.float64, len(values))
        return out if np.isfinite(out).all() and (out >= 0).all() else None
    except (ValueError, TypeError, OverflowError):
        return None


def _parse_column(name: str, values: list[str], where: Callable[[int], str]) -> np.ndarray:
    fast = _fast_column(name, values)
    if fast is not None:
        return fast
    if name in INT_COLUMNS:
        return _parse_ints(name, values, where)
    if name == "time":
        return _parse_times(values, where)
    return _parse_radii(name, values, where)


def _parse_ints(name: str, values: list[str], where: Callable[[int], str]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if not _INT_RE.fullmatch(v):
            raise UserError(f"{where(i)}: {name} is {v!r}, not an integer.")
        out[i] = int(v)
    return out


def _parse_times(values: list[str], where: Callable[[int], str]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = parse_seconds(v)
        except ValueError:
            raise UserError(
                f"{where(i)}: time is {v!r}, neither seconds nor H:MM:SS.ffffff."
            ) from None
    return out


def _parse_radii(name: str, values: list[str], where: Callable[[int], str]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except ValueError:
            raise UserError(f"{where(i)}: {name} is {v!r}, not a number.") from None
        if not math.isfinite(out[i]) or out[i] < 0:
            raise UserError(f"{where(i)}: {name} is {v!r}; it must be a finite number >= 0.")
    return out


def _extra_column(values: list[str]) -> np.ndarray:
    """Numbers when every value parses as one, else the strings as they are."""
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def _check_values(table: LogRows) -> None:
    """What no log can hold: flags other than 0/1, negative indices or labels, a class
    below -1, `correct` that contradicts predict and label, one image with two labels."""
    col, where = table.columns, table.where
    for name in FLAG_COLUMNS:
        if name in col:
            bad = np.flatnonzero((col[name] != 0) & (col[name] != 1))
            if len(bad):
                raise UserError(
                    f"{where(bad[0])}: {name} is {col[name][bad[0]]}; it must be 0 or 1."
                )
    for name, what in _NON_NEGATIVE.items():
        if name in col:
            bad = np.flatnonzero(col[name] < 0)
            if len(bad):
                raise UserError(f"{where(bad[0])}: {name} is {col[name][bad[0]]}; {what} are >= 0.")
    idx, label, predict, correct = (col[c] for c in ("idx", "label", "predict", "correct"))
    bad = np.flatnonzero(predict < -1)
    if len(bad):
        raise UserError(
            f"{where(bad[0])}: predict is {predict[bad[0]]}; a class >= 0, or -1 for abstain."
        )
    bad = np.flatnonzero(correct != (predict == label))
    if len(bad):
        raise UserError(
            f"{where(bad[0])}: correct is {correct[bad[0]]} but predict {predict[bad[0]]} vs "
            f"label {label[bad[0]]} says otherwise ({len(bad)} such row(s))."
        )
    order = np.argsort(idx, kind="stable")
    same = idx[order][1:] == idx[order][:-1]
    clash = np.flatnonzero(same & (label[order][1:] != label[order][:-1]))
    if len(clash):
        first, second = order[clash[0]], order[clash[0] + 1]
        raise UserError(
            f"{where(second)}: image index {idx[second]} appears with different labels "
            f"(line {table.lines[first]} has label {label[first]}, this one {label[second]}); "
            "the log mixes different datasets."
        )
