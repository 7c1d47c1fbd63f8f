"""Dataset-level certification and prediction: the loop behind `dsmooth certify`.

One image at a time, one durable log row per image, skipping rows already in the log;
this is what makes a killed run resume without loss or duplicates. The certification
method is an object (dsmooth.certify.methods), and the log's columns are chosen here for every
runner, this loop and the Ray one alike (`certify_columns`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from dsmooth.certify.methods import Certificate, Certifier, check_certificate, make_method
from dsmooth.certify.noise import STAGE_SELECT
from dsmooth.certify.smooth import Smooth
from dsmooth.data.images import ImageSet
from dsmooth.errors import UserError
from dsmooth.logs.queries import count_queries
from dsmooth.logs.result_log import (
    PREDICT_COLUMNS,
    SELECTION_ONLY,
    ResultLog,
    format_time,
)
from dsmooth.runs.columns import certify_columns, file_of, log_columns

if TYPE_CHECKING:
    from dsmooth.runs.job import Built, CertifyJob


def select_indices(total: int, skip: int = 1, max_index: int = -1) -> list[int]:
    """Every `skip`-th image index, below `max_index` when it is >= 0 (reference semantics)."""
    stop = total if max_index < 0 else min(total, max_index)
    return list(range(0, stop, max(1, skip)))


def certify_row(
    smooth: Smooth,
    data: ImageSet,
    *,
    i: int,
    method: Certifier,
    batch_size: int,
    stop_if_misclassified: bool = False,
) -> dict:
    """One log row: image i certified by `method`, its extra columns included.

    `stop_if_misclassified` stops after selection when the selected class is not the
    label: such an image is not certified correct at any radius whatever the estimation
    would say, so certified accuracy is unchanged. For the other images CERTIFY reuses that
    selection draw (`Smooth.reusing`: the same noise, so the same counts) instead of
    spending n0 more samples on it.
    """
    start = time.perf_counter()
    label = int(data.labels[i])
    x = data.image(i)
    flags = {}
    certificate: Certificate | None = None
    reuse: AbstractContextManager = nullcontext()
    if stop_if_misclassified:
        selected = smooth.sample_counts(x, method.n0, batch_size, index=i, stage=STAGE_SELECT)
        c_hat = int(selected.argmax())
        flags[SELECTION_ONLY] = int(c_hat != label)
        if c_hat != label:
            certificate = method.selection_only(c_hat)
        else:
            reuse = smooth.reusing(x, selected, index=i, stage=STAGE_SELECT, num=method.n0)
    if certificate is None:
        with reuse:
            certificate = method.certify(smooth, x, batch_size, index=i)
    check_certificate(method, certificate)
    return {
        "idx": i,
        "label": label,
        "predict": certificate.prediction,
        "radius": float(certificate.radius),
        "correct": int(certificate.prediction == label),
        "time": format_time(time.perf_counter() - start),
        **certificate.extra,
        **flags,
        **file_of(data, i),
    }


def predict_row(
    smooth: Smooth, data: ImageSet, *, i: int, n: int, alpha: float, batch_size: int
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
    smooth: Smooth | CertifyJob,
    data: ImageSet | None = None,
    *,
    out=None,
    n0: int | None = None,
    n: int | None = None,
    alpha: float | None = None,
    batch_size: int = 64,
    skip: int = 1,
    max_index: int = -1,
    progress: bool = True,
    sequential: dict | None = None,
    provenance: dict | None = None,
    stop_if_misclassified: bool = False,
    method: Certifier | None = None,
) -> int:
    """Certify every selected image into the TSV log `out`, resuming if it exists.

    Given a `CertifyJob` instead of a Smooth, runs the job (`run_job`; the other
    arguments but `progress` are the job's). `method` certifies (dsmooth.certify.methods:
    CohenCP, Sequential, or any registered method); without it, n0, n and alpha give
    CohenCP, or with `sequential` = dict(n_max=..., radius=..., tol=...) Sequential,
    which logs `n_used`. `provenance`
    (dsmooth.logs.provenance) is recorded beside a new log and checked against a resumed one.
    """
    from dsmooth.runs.job import CertifyJob

    if isinstance(smooth, CertifyJob):
        if data is not None or out is not None:
            raise UserError("certify_dataset takes a job alone, or a Smooth, data and out.")
        return run_job(smooth, progress=progress)
    if data is None or out is None:
        raise UserError("certify_dataset takes a job alone, or a Smooth, data and out.")
    method = method_of(method, n0, n, alpha, sequential)
    stop = stop_if_misclassified
    columns = certify_columns(method, smooth.base_classifier, data, out, stop_if_misclassified=stop)
    return _log_dataset(
        smooth,
        data,
        out=out,
        columns=columns,
        row=lambda i: certify_row(
            smooth, data, i=i, method=method, batch_size=batch_size, stop_if_misclassified=stop
        ),
        skip=skip,
        max_index=max_index,
        desc="certify",
        progress=progress,
        provenance=provenance,
    )


def method_of(
    method: Certifier | None, n0: int | None, n: int | None, alpha, sequential: dict | None
) -> Certifier:
    """`method`, or the one that certify_dataset's n0, n, alpha and `sequential` describe."""
    if method is not None:
        if (n0, n, alpha, sequential) != (None, None, None, None):
            raise UserError("give certify_dataset either a method or n0, n and alpha, not both.")
        return method
    if n0 is None or n is None or alpha is None:
        raise UserError("certify_dataset needs a method, or n0, n and alpha.")
    name = "cp" if sequential is None else "sequential"
    return make_method(name, n0=n0, n=n, alpha=alpha, **(sequential or {}))


def predict_dataset(
    smooth: Smooth,
    data: ImageSet,
    *,
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
        out=out,
        columns=log_columns(PREDICT_COLUMNS, smooth.base_classifier, data, out),
        row=lambda i: predict_row(smooth, data, i=i, n=n, alpha=alpha, batch_size=batch_size),
        skip=skip,
        max_index=max_index,
        desc="predict",
        progress=progress,
        provenance=provenance,
    )


def _log_dataset(
    smooth: Smooth,
    data: ImageSet,
    *,
    out,
    columns,
    row,
    skip: int,
    max_index: int,
    desc: str,
    progress: bool,
    provenance: dict | None = None,
) -> int:
    """`row(i)` for the selected images into the log `out` with these `columns` (its
    `queries` entry counted here); returns rows written."""
    rows = count_queries(smooth, row)
    with ResultLog(out, columns, provenance) as log:
        return run(rows, log, select_indices(len(data), skip, max_index), desc, progress)


def run_job(job: CertifyJob, *, built: Built | None = None, progress: bool = True) -> int:
    """Run a CertifyJob into its log (certify, or predict for a job without a method),
    resuming if the log exists; `built` is the job's `build()` when the caller has it
    already. Returns rows written."""
    from dsmooth.logs.provenance import check_resume

    if built is None:
        job.check()
        built = job.build()
        check_resume(job.log_path, built.record)
    smooth, data, batch = built.smooth, built.data, built.batch
    if job.method is None:
        n, alpha = job.n_estimate, job.level

        def row(i):
            return predict_row(smooth, data, i=i, n=n, alpha=alpha, batch_size=batch)
    else:
        method, stop = job.certifier, job.stop_if_misclassified

        def row(i):
            return certify_row(
                smooth, data, i=i, method=method, batch_size=batch, stop_if_misclassified=stop
            )

    return _log_dataset(
        smooth, data, out=job.log_path, columns=built.columns, row=row, skip=job.skip,
        max_index=job.max, desc=job.command, progress=progress, provenance=built.record,
    )  # fmt: skip
