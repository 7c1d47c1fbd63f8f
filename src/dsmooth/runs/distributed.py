"""Certification scaled out on Ray: one actor per worker, rows streamed to one log.

Each actor builds its own `Smooth` from the `CertifyJob` it is sent (frozen and
picklable: the driver settles what must be the same everywhere, then every worker
builds exactly that), so models load once per worker, and certifies images by index
with the same `local.certify_row` and method object as a single-process run; the log's
columns come from the same `columns.certify_columns`. Noise
is drawn per image from (seed, index), so rows do not depend on how many workers ran
or which one took an image. The driver hands images out one by one as workers finish
(dynamic scheduling), appends rows to the one `ResultLog` in completion order, and
reschedules the images of a worker that dies.
The log stays the source of truth: a killed driver resumes like `dsmooth certify`.

Ray is optional (`pip install 'dsmooth[ray]'`) and only imported when a job starts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from dsmooth._io import write_text
from dsmooth.errors import UserError, brief
from dsmooth.logs.queries import count_queries
from dsmooth.logs.result_log import ResultLog
from dsmooth.runs.job import CertifyJob

#: Images queued per worker: one running, one waiting, so no worker idles on a round trip.
IN_FLIGHT = 2


@dataclass
class Summary:
    """What a distributed run did, for the final report line."""

    images: int  # rows written by this run
    skipped: int  # rows already in the log (resumed)
    _: KW_ONLY
    seconds: float
    workers: int
    failures: int = 0  # workers that died and were replaced
    rescheduled: int = 0  # images handed out again after a worker died

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        text = f"certified {self.images} images in {self.seconds:.1f} s ({self.rate:.2f} img/s)"
        if self.workers:
            text += f" on {self.workers} Ray workers"
        if self.skipped:
            text += f"; {self.skipped} already in the log"
        return text + f"; {self.failures} worker failures, {self.rescheduled} images rescheduled."


def import_ray():
    """The `ray` module, or a one-sentence UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray needs Ray, which is not installed; install it with pip install 'dsmooth[ray]'."
        ) from None
    return ray


class CertifyWorker:
    """A Ray actor: builds the job's data and models once, then certifies images by index."""

    def __init__(self, job: CertifyJob):
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.job = job
        self.error: str | None = None
        try:  # a UserError is reported by the first call, as one sentence on the driver
            built = job.build()
            self.smooth, self.data, self.batch = built.smooth, built.data, built.batch
            # as in a single process: a `queries` entry per row for a remote classifier
            self.row = count_queries(self.smooth, self._certify_row)
        except UserError as e:
            self.error = str(e)

    def certify(self, i: int) -> dict:
        if self.error is not None:
            raise UserError(self.error)
        return self.row(i)

    def _certify_row(self, i: int) -> dict:
        from dsmooth.runs.local import certify_row

        job = self.job
        return certify_row(
            self.smooth, self.data, i=i, method=job.certifier, batch_size=self.batch,
            stop_if_misclassified=job.stop_if_misclassified,
        )  # fmt: skip

    def pid(self) -> int:
        return os.getpid()


def certify_dataset(
    job: CertifyJob | Mapping,
    out=None,
    *,
    address: str | None = None,
    workers: int | None = None,
    sort: bool = False,
    progress: bool = True,
    max_failures: int | None = None,
) -> Summary:
    """Certify the selected images on Ray into the job's TSV log, resuming if it exists.

    `job` is a CertifyJob, or `dsmooth certify`'s options by their names (classifier,
    data, sigma, n0, n, alpha, batch, seed, skip, max, method, ...;
    `CertifyJob.from_options`); `out` replaces its log. `address` is an existing cluster
    ("HOST:PORT" or "auto"); None or "local" starts Ray in this process (or reuses an
    initialised one). `workers` defaults to the CPUs (GPUs with a cuda device) Ray
    offers. `sort` rewrites the log sorted by index at the end.
    """
    from dsmooth.runs.columns import certify_columns
    from dsmooth.runs.local import select_indices

    if not isinstance(job, CertifyJob):
        job = CertifyJob.from_options({**job, **({"out": str(out)} if out is not None else {})})
    elif out is not None:
        job = replace(job, out=str(out))
    if job.method is None:
        raise UserError("a Ray run certifies: give the job a certification method.")
    job = job.with_paths_resolved()  # workers may run in another folder
    job.check()
    if workers is not None and workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}.")
    ray = import_ray()
    data = job.load_data()
    indices = select_indices(len(data), job.skip, job.max)
    job, record, base = settle(job, data)
    stop = job.stop_if_misclassified
    columns = certify_columns(job.certifier, base, data, job.out, stop_if_misclassified=stop)
    del data, base
    log = ResultLog(job.log_path, columns, record)
    start = time.perf_counter()
    summary = Summary(0, 0, seconds=0.0, workers=0)
    try:
        if log.path.exists():
            log.open()  # resume: check the record, learn which images are done
        todo = [i for i in indices if i not in log.done]
        summary.skipped = len(indices) - len(todo)
        if todo:
            started = connect(ray, address, workers)
            try:
                scheduler = _Scheduler(
                    ray, job, todo=todo, log=log, summary=summary, workers=workers,
                    max_failures=max_failures,
                )  # fmt: skip
                scheduler.run(progress)
            finally:
                if started:
                    ray.shutdown()
    finally:
        log.close()
    if sort and log.path.exists():
        sort_log(log.path)
    summary.seconds = time.perf_counter() - start
    return summary


def settle(job: CertifyJob, data) -> tuple[CertifyJob, dict, object]:
    """The job every worker runs, with `precision auto` (and `noise auto`) resolved once,
    here, so that workers on different hosts all run the same arithmetic (a mixed cluster
    cannot mix bf16 and fp32 rows); the log's provenance record, from the models loaded on
    the driver; and those models (the log's columns are chosen from them)."""
    import torch

    from dsmooth.pipeline import build as pipeline
    from dsmooth.pipeline.engine import resolve_device, resolve_precision
    from dsmooth.runs.job import provenance_record

    device = resolve_device(job.device)
    precision = resolve_precision(job.engine.precision, device)
    if precision == "int8":
        raise UserError(
            "--precision int8 is calibrated per process, so a cluster could mix classifiers; "
            "use fp32 or bf16 with --workers."
        )
    # auto would measure on each worker, and hosts may choose differently: torch it is
    backend = "torch" if job.engine.backend == "auto" else job.engine.backend
    job = replace(
        job,
        engine=replace(job.engine, precision=precision, backend=backend),
        noise=pipeline.resolve_noise(job.noise, data, job.data),
    )
    cpu = torch.device("cpu")
    base = job.load_base(cpu)
    num_classes = job.num_classes or pipeline.infer_num_classes(base, data, cpu)
    record = provenance_record(
        job, base, num_classes=num_classes, precision=precision, device=device, data=data,
        compiled=bool(job.engine.compile), batch=job.batch, backend=backend,
        noise_mode=job.noise,
    )  # fmt: skip
    return job, record, base


def connect(ray, address: str | None, workers: int | None) -> bool:
    """Join or start Ray; True when this call started it (and should shut it down)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address in (None, "", "local"):
            ray.init(
                address="local",
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                **quiet,
            )
        else:
            check_reachable(address)
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = "a local Ray instance" if address in (None, "", "local") else address
        raise UserError(f"cannot start or reach Ray at {where} ({brief(e)}).") from None
    return True


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens at (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray:// client addresses: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
            "`ray start --head` or check the address."
        ) from None


def _actor_class(ray, job: CertifyJob):
    """CertifyWorker as a Ray actor: one CPU each, or one GPU each for a cuda device."""
    resources = {"num_cpus": 1}
    if str(job.device).startswith("cuda"):
        resources["num_gpus"] = 1
    return ray.remote(max_restarts=0, max_task_retries=0, **resources)(CertifyWorker)


def _pool_size(ray, job: CertifyJob, workers: int | None, images: int) -> int:
    """Workers to start: as asked, or one per CPU (GPU for cuda) of the cluster.

    Asking for more than the cluster has would leave actors waiting forever with images
    assigned to them, so that is an error.
    """
    kind = "GPU" if str(job.device).startswith("cuda") else "CPU"
    available = int(ray.cluster_resources().get(kind, 0))
    if available < 1:
        raise UserError(f"the Ray cluster has no {kind} for a worker.")
    if workers is not None and workers > available:
        raise UserError(
            f"{workers} workers need {workers} {kind}s but the Ray cluster has {available}; "
            f"use --workers {available} or fewer."
        )
    return min(workers or available, images)


class _Scheduler:
    """Hands images to idle actors, appends rows as they finish, replaces dead actors."""

    def __init__(
        self,
        ray,
        job: CertifyJob,
        *,
        todo: list[int],
        log: ResultLog,
        summary: Summary,
        workers: int | None,
        max_failures: int | None,
    ):
        from ray.exceptions import (
            NodeDiedError,
            ObjectLostError,
            RayActorError,
            RayTaskError,
            WorkerCrashedError,
        )

        self.ray, self.job, self.log, self.summary = ray, job, log, summary
        self.task_error = RayTaskError
        self.lost_worker = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)
        self.worker_class = _actor_class(ray, job)
        size = _pool_size(ray, job, workers, len(todo))
        self.limit = max_failures if max_failures is not None else 3 * size
        summary.workers = size
        self.total = len(todo)
        self.queue = deque(todo)
        self.pending: dict = {}  # ObjectRef -> (worker slot, image index)
        self.opened = log.path.exists()  # certify_dataset opened an existing log to resume it
        self.actors = [self.worker_class.remote(job) for _ in range(size)]

    def feed(self, slot: int) -> None:
        busy = sum(1 for s, _ in self.pending.values() if s == slot)
        while self.queue and busy < IN_FLIGHT:
            i = self.queue.popleft()
            self.pending[self.actors[slot].certify.remote(i)] = (slot, i)
            busy += 1

    def run(self, progress: bool) -> None:
        try:
            for slot in range(len(self.actors)):
                self.feed(slot)
            with tqdm(
                total=self.total,
                desc="certify (ray)",
                unit="img",
                disable=not progress,
                dynamic_ncols=True,
            ) as bar:
                bar.set_postfix(workers=len(self.actors), failures=0)
                while self.pending:
                    (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
                    slot, i = self.pending.pop(ref)
                    try:
                        row = self.ray.get(ref)
                    except self.task_error as e:  # the image itself failed: not the worker
                        if isinstance(e.cause, UserError):
                            raise UserError(str(e.cause)) from None
                        raise
                    except self.lost_worker as e:
                        self.replace(slot, i, e)
                        bar.set_postfix(workers=len(self.actors), failures=self.summary.failures)
                    else:
                        self.write(row)
                        bar.update(1)
                    self.feed(slot)
        finally:
            for actor in self.actors:  # free the CPUs now, also in a Ray we did not start
                self.ray.kill(actor)

    def replace(self, slot: int, i: int, error: Exception) -> None:
        """Requeue every image the dead worker held and start a fresh one in its slot."""
        if getattr(error, "actor_init_failed", False):
            raise RuntimeError(f"a Ray worker failed to start: {error}") from None
        refs = [r for r, (s, _) in self.pending.items() if s == slot]
        lost = [i] + [self.pending.pop(r)[1] for r in refs]
        self.queue.extendleft(reversed(lost))
        self.summary.failures += 1
        self.summary.rescheduled += len(lost)
        if self.summary.failures > self.limit:
            raise RuntimeError(
                f"Ray workers died {self.summary.failures} times; giving up ({brief(error)})"
            ) from None
        self.ray.kill(self.actors[slot])
        self.actors[slot] = self.worker_class.remote(self.job)  # maybe elsewhere

    def write(self, row: dict) -> None:
        if int(row["idx"]) in self.log.done:
            return
        if not self.opened:
            self.log.open()  # created on the first row: a failed start writes nothing
            self.opened = True
        self.log.append(row)
        self.summary.images += 1


def sort_log(path) -> None:
    """Rewrite a result log sorted by image index (atomically: temp file + rename)."""
    path = Path(path)
    header, *rows = path.read_text().splitlines(keepends=True)
    rows = [r for r in rows if r.endswith("\n") and r.strip()]  # no partial row
    rows.sort(key=lambda line: int(line.split("\t", 1)[0]))
    write_text(path, header + "".join(rows))
