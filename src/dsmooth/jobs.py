"""Dataset-level certification and prediction: the loop behind `dsmooth certify`.

One image at a time, one durable log row per image, skipping rows already in the log;
this is what makes a killed run resume without loss or duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from dsmooth.data import ImageSet
from dsmooth.noise import STAGE_SELECT
from dsmooth.queries import count_queries
from dsmooth.results import (
    CERTIFY_COLUMNS,
    FILE,
    PREDICT_COLUMNS,
    SELECTION_ONLY,
    SEQUENTIAL_CERTIFY_COLUMNS,
    ResultLog,
    format_time,
)
from dsmooth.sequential import certify_sequential
from dsmooth.smoothing import Smooth


def select_indices(total: int, skip: int = 1, max_index: int = -1) -> list[int]:
    """Every `skip`-th image index, below `max_index` when it is >= 0 (reference semantics)."""
    stop = total if max_index < 0 else min(total, max_index)
    return list(range(0, stop, max(1, skip)))


def certify_row(
    smooth: Smooth,
    data: ImageSet,
    i: int,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    sequential: dict | None = None,
    stop_if_misclassified: bool = False,
) -> dict:
    """One log row; `sequential` (radius, n_max, tol) selects sequential CERTIFY + n_used.

    `stop_if_misclassified` stops after selection when the selected class is not the
    label: such an image is not certified correct at any radius whatever the estimation
    would say, so certified accuracy is unchanged. Selection is drawn again, with the same
    noise, inside CERTIFY for the other images (n0 more samples each).
    """
    start = time.perf_counter()
    label = int(data.labels[i])
    extra = {}
    if stop_if_misclassified:
        selected = smooth.sample_counts(data.image(i), n0, batch_size, index=i, stage=STAGE_SELECT)
        c_hat = int(selected.argmax())
        extra[SELECTION_ONLY] = int(c_hat != label)
        if c_hat != label:
            row = {"idx": i, "label": label, "predict": c_hat, "radius": 0.0, "correct": 0}
            row["time"] = format_time(time.perf_counter() - start)
            used = {"n_used": n0} if sequential is not None else {}
            return {**row, **used, **extra, **file_of(data, i)}
    if sequential is None:
        prediction, radius = smooth.certify(data.image(i), n0, n, alpha, batch_size, index=i)
    else:
        result = certify_sequential(
            smooth, data.image(i), n0, alpha, batch_size=batch_size, index=i, **sequential
        )
        prediction, radius = result.prediction, result.radius
        extra = {"n_used": result.n_used, **extra}
    return {
        "idx": i,
        "label": label,
        "predict": prediction,
        "radius": float(radius),
        "correct": int(prediction == label),
        "time": format_time(time.perf_counter() - start),
        **extra,
        **file_of(data, i),
    }


def predict_row(
    smooth: Smooth, data: ImageSet, i: int, n: int, alpha: float, batch_size: int
) -> dict:
    start = time.perf_counter()
    label = int(data.labels[i])
    prediction = smooth.predict(data.image(i), n, alpha, batch_size, index=i)
    return {
        "idx": i,
        "label": label,
        "predict": prediction,
        "correct": int(prediction == label),
        "time": format_time(time.perf_counter() - start),
        **file_of(data, i),
    }


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
    path = Path(out)
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
        if header == list(columns):
            return tuple(columns)
    return (*columns, FILE)


def run(rows, log: ResultLog, indices: Iterable[int], desc: str, progress: bool = True) -> int:
    """Append `rows(i)` for every index not yet in the log; returns rows written."""
    todo = [i for i in indices if i not in log.done]
    written = 0
    with tqdm(
        total=len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True
    ) as bar:
        for i in todo:
            log.append(rows(i))
            written += 1
            bar.update(1)
    return written


def certify_dataset(
    smooth: Smooth,
    data: ImageSet,
    out,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int = 64,
    skip: int = 1,
    max_index: int = -1,
    progress: bool = True,
    sequential: dict | None = None,
    provenance: dict | None = None,
    stop_if_misclassified: bool = False,
) -> int:
    """Certify every selected image into the TSV log `out`, resuming if it exists.

    `sequential` = dict(n_max=..., radius=..., tol=...) runs sequential CERTIFY
    (dsmooth.sequential) and logs `n_used` after the standard columns. `provenance`
    (dsmooth.provenance) is recorded beside a new log and checked against a resumed one.
    """
    columns = CERTIFY_COLUMNS if sequential is None else SEQUENTIAL_CERTIFY_COLUMNS
    if stop_if_misclassified:
        columns = (*columns, SELECTION_ONLY)
    stop = stop_if_misclassified
    return _log_dataset(
        smooth,
        data,
        out,
        columns,
        lambda i: certify_row(smooth, data, i, n0, n, alpha, batch_size, sequential, stop),
        skip,
        max_index,
        "certify",
        progress,
        provenance,
    )


def predict_dataset(
    smooth: Smooth,
    data: ImageSet,
    out,
    n: int,
    alpha: float,
    batch_size: int = 64,
    skip: int = 1,
    max_index: int = -1,
    progress: bool = True,
    provenance: dict | None = None,
) -> int:
    """Predict every selected image into the TSV log `out`, resuming if it exists."""
    return _log_dataset(
        smooth,
        data,
        out,
        PREDICT_COLUMNS,
        lambda i: predict_row(smooth, data, i, n, alpha, batch_size),
        skip,
        max_index,
        "predict",
        progress,
        provenance,
    )


def _log_dataset(
    smooth: Smooth,
    data: ImageSet,
    out,
    columns,
    row,
    skip: int,
    max_index: int,
    desc: str,
    progress: bool,
    provenance: dict | None = None,
) -> int:
    """`row(i)` for the selected images into the log `out` (with the queries column
    when the classifier is remote); returns rows written."""
    columns, rows = count_queries(smooth, columns, row)
    columns = with_file_column(out, columns, data)
    with ResultLog(out, columns, provenance) as log:
        return run(rows, log, select_indices(len(data), skip, max_index), desc, progress)
