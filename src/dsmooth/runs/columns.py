"""The columns of a result log, chosen in one place for every runner (local loop, Ray).

The reference columns, then the method's, then `selection_only` when misclassified images
stop after selection, then `queries` for a classifier that counts them and `file` for
image-folder data.
"""

from __future__ import annotations

from pathlib import Path

from dsmooth.certify.methods import Certifier
from dsmooth.logs.queries import QUERIES, query_counter
from dsmooth.logs.result_log import CERTIFY_COLUMNS, FILE, SELECTION_ONLY


def file_of(data, i: int) -> dict:
    """{"file": name} for data read from an image folder, else {} (a row dict ignores
    keys that are not columns of its log)."""
    files = getattr(data, "files", None)
    if not files:
        return {}
    return {FILE: " ".join(str(files[i]).split())}  # no tab or newline inside a field


def with_file_column(out, columns: tuple, data) -> tuple:
    """The log's columns, plus `file` for image-folder data, unless the log exists from a
    version without that column (it then resumes as it was written)."""
    if not getattr(data, "files", None):
        return tuple(columns)
    path = Path(out) if out is not None else None
    if path is not None and path.is_file():
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
        if header == list(columns):
            return tuple(columns)
    return (*columns, FILE)


def certify_columns(
    method: Certifier, base, data, out, *, stop_if_misclassified: bool = False
) -> tuple[str, ...]:
    """The columns of a certify log, for every runner: the reference ones, the method's,
    `selection_only` with `stop_if_misclassified`, then those of `log_columns`."""
    columns = (*CERTIFY_COLUMNS, *method.columns)
    if stop_if_misclassified:
        columns = (*columns, SELECTION_ONLY)
    return log_columns(columns, base, data, out)


def log_columns(columns, base, data, out) -> tuple[str, ...]:
    """`columns`, plus `queries` when the base classifier counts them (a remote one) and
    `file` for image-folder data (see with_file_column)."""
    if query_counter(base) is not None:
        columns = (*columns, QUERIES)
    return with_file_column(out, columns, data)
