"""One worker fills each base-classifier batch with the noise samples of every image in
flight, from all requests, and feeds the class counts back to their certifications.

Fairness: each batch is shared out round-robin over the requests that still need
samples (each gets about B / R slots, its images taking turns), so a request with a
100k-sample budget slows a small one down to its fair share and never starves it.
Backpressure: at most `queue` images are admitted at once; beyond that `submit` raises
`QueueFull` (HTTP 429), and so does `check_room`, which the HTTP side calls before it reads
a request's body. A request past its deadline gets what is certified so far
(`Certification.stop`). `close` stops admitting, lets in-flight work finish for a grace
period, stops the rest the same way, and joins the worker.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dsmooth.certify.base_classifier import label_function, module_device
from dsmooth.certify.smooth import check_counts
from dsmooth.deploy.service.certification import Certification, Outcome, make_certification
from dsmooth.deploy.service.metrics import Metrics
from dsmooth.deploy.service.policy import CertifySettings
from dsmooth.deploy.service.samples import ImageSamples, keyed_seed
from dsmooth.errors import UserError


class QueueFull(Exception):
    """Admitting the request would exceed the bound on images in flight."""

    def __init__(self, used: int, capacity: int, retry_after: float):
        super().__init__(f"{used} of {capacity} image slots are in use; retry later.")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The service no longer admits requests."""


@dataclass
class ImageJob:
    """One image of a request: its noisy samples and its certification."""

    samples: ImageSamples
    certification: Certification

    @property
    def pending(self) -> int:
        return self.certification.pending


class Ticket:
    """One admitted request: its images, deadline, and the future of their outcomes."""

    _ids = itertools.count()

    def __init__(self, jobs: list[ImageJob], settings: CertifySettings, deadline: float | None):
        self.id = next(self._ids)
        self.jobs = jobs
        self.settings = settings
        self.deadline = deadline
        self.future: concurrent.futures.Future[list[Outcome]] = concurrent.futures.Future()
        self.cancelled = False
        self._turn = 0

    @property
    def done(self) -> bool:
        return all(job.certification.done for job in self.jobs)

    def next_job(self, taken: set[int], shape: tuple | None) -> ImageJob | None:
        """The next of its images (round-robin) that needs samples and is not in this batch."""
        count = len(self.jobs)
        for step in range(count):
            i = (self._turn + step) % count
            job = self.jobs[i]
            if id(job) in taken or job.pending == 0:
                continue
            if shape is not None and job.samples.shape != shape:
                continue
            self._turn = (i + 1) % count
            return job
        return None

    def outcomes(self) -> list[Outcome]:
        return [job.certification.outcome for job in self.jobs]


class CertificationService:
    """Certifies images for many concurrent requests through one base classifier.

    `base` maps a float [0, 1] NCHW batch to labels or scores (as for `Smooth`); it runs
    only in the worker thread, on batches of at most `batch_size` samples.
    """

    def __init__(
        self,
        base: Callable,
        num_classes: int,
        *,
        batch_size: int = 256,
        queue: int = 256,
        metrics: Metrics | None = None,
        device: torch.device | str | None = None,
        noise_secret: bytes | None = None,
    ):
        """`noise_secret`: key each request's noise by it (samples.keyed_seed), so that no
        client can predict the noise its image will get; None makes the noise a public
        function of (seed, index), equal to offline certify's with the request's seed."""
        if int(batch_size) < 1 or int(queue) < 1:
            raise UserError("the batch size and the queue bound must be at least 1.")
        self.num_classes = int(num_classes)
        self.noise_secret = noise_secret
        #: what a response says of its noise: "secret" (unpredictable) or "public"
        self.noise_keys = "secret" if noise_secret else "public"
        self.batch_size = int(batch_size)
        self.capacity = int(queue)
        self.metrics = metrics or Metrics()
        self.device = torch.device(device) if device is not None else module_device(base)
        self._labels = label_function(base, self.num_classes)
        self._cond = threading.Condition()
        self._tickets: deque[Ticket] = deque()
        self._in_flight = 0
        self._accepting = True
        self._stopping = False
        self._stop_reason = "shutdown"
        self.metrics.gauges["dsmooth_queue_images"] = (
            "Images admitted and not yet certified.",
            lambda: self._in_flight,
        )
        self.metrics.gauges["dsmooth_queue_capacity"] = (
            "Bound on images in flight.",
            lambda: self.capacity,
        )
        self.metrics.gauges["dsmooth_requests_in_flight"] = (
            "Requests admitted and not yet answered.",
            lambda: len(self._tickets),
        )
        self._worker = threading.Thread(target=self._run, name="dsmooth-certify", daemon=True)
        self._worker.start()

    # --- admission ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def ready(self) -> bool:
        return self._accepting and self._worker.is_alive()

    def submit(
        self,
        images: Sequence,
        settings: CertifySettings,
        first_index: int = 0,
        deadline: float | None = None,
    ) -> Ticket:
        """Admit one request: `images` (CHW each) get indices first_index, first_index + 1...

        Bad images raise UserError before anything is admitted; a full queue raises
        QueueFull, a closing service ShuttingDown. `deadline` is a time.monotonic() value.
        """
        if not self._accepting:
            raise ShuttingDown("the server is shutting down.")
        if self._in_flight + len(images) > self.capacity:  # before any work; checked again below
            with self._cond:
                raise QueueFull(self._in_flight, self.capacity, self._retry_after())
        seed = settings.seed
        if self.noise_secret:
            seed = keyed_seed(self.noise_secret, seed)
        jobs = [
            ImageJob(
                ImageSamples(
                    x,
                    settings.sigma,
                    seed=seed,
                    index=first_index + i,
                    noise=settings.noise,
                    device=self.device,
                ),
                make_certification(self.num_classes, settings),
            )
            for i, x in enumerate(images)
        ]
        ticket = Ticket(jobs, settings, deadline)
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down.")
            if self._in_flight + len(jobs) > self.capacity:
                raise QueueFull(self._in_flight, self.capacity, self._retry_after())
            self._in_flight += len(jobs)
            self._tickets.append(ticket)
            self._cond.notify_all()
        return ticket

    def check_room(self, reading: int = 0) -> None:
        """Refuse a request before its body is read: ShuttingDown while closing, QueueFull
        when no image slot is free once each of `reading` requests (admitted by this
        check, their bodies still being read) holds one. `submit` checks again with the
        real image count; this cheap check keeps a flood from being read and decoded."""
        if not self._accepting:
            raise ShuttingDown("the server is shutting down.")
        with self._cond:
            used = self._in_flight + max(0, int(reading))
            if used >= self.capacity:
                raise QueueFull(used, self.capacity, self._retry_after())

    def certify(
        self,
        images: Sequence,
        settings: CertifySettings,
        first_index: int = 0,
        timeout: float | None = None,
    ) -> list[Outcome]:
        """Blocking convenience: submit and wait for the outcomes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.submit(images, settings, first_index, deadline).future.result()

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request whose client went away; its samples stop being drawn."""
        with self._cond:
            ticket.cancelled = True
            self._cond.notify_all()

    def _retry_after(self) -> float:
        """Seconds until a slot is likely free: the queue's work at the recent rate."""
        rate = self.metrics.samples_per_second()
        work = sum(job.pending for t in self._tickets for job in t.jobs)
        return min(60.0, max(1.0, work / rate)) if rate > 0 else 1.0

    # --- shutdown ----------------------------------------------------------------------

    def close(self, grace: float = 0.0) -> None:
        """Stop admitting; give in-flight requests up to `grace` seconds to finish, then end
        each of them with what is certified so far (reason "shutdown"); join the worker."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        end = time.monotonic() + max(0.0, grace)
        with self._cond:
            while self._tickets and time.monotonic() < end:
                self._cond.wait(timeout=min(0.05, max(0.0, end - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        self._worker.join()

    # --- the worker --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._retire()
                    if self._stopping:
                        for ticket in list(self._tickets):
                            self._end(ticket, self._stop_reason)
                        return
                    pieces = self._fill()
                    if pieces:
                        break
                    self._cond.wait(timeout=self._wait_time())
            self._run_batch(pieces)

    def _wait_time(self) -> float:
        deadlines = [t.deadline for t in self._tickets if t.deadline is not None]
        if not deadlines:
            return 1.0
        return min(1.0, max(0.0, min(deadlines) - time.monotonic()))

    def _retire(self) -> None:
        """Answer finished, expired and cancelled requests (under the lock)."""
        now = time.monotonic()
        for ticket in list(self._tickets):
            if ticket.cancelled:
                self._end(ticket, "cancelled")
            elif ticket.done:
                self._end(ticket, None)
            elif ticket.deadline is not None and now >= ticket.deadline:
                self._end(ticket, "deadline")

    def _end(self, ticket: Ticket, reason: str | None) -> None:
        if reason is not None:
            for job in ticket.jobs:
                job.certification.stop(reason)
        self._tickets.remove(ticket)
        self._in_flight -= len(ticket.jobs)
        self._cond.notify_all()
        if ticket.future.done():
            return
        outcomes = ticket.outcomes()
        if not ticket.cancelled:
            for o in outcomes:
                self.metrics.certificate(o.prediction < 0, o.stopped_early)
        ticket.future.set_result(outcomes)

    def _fill(self) -> list[tuple[Ticket, ImageJob, int]]:
        """Share one batch out round-robin over the requests needing samples."""
        pieces: list[tuple[Ticket, ImageJob, int]] = []
        free, taken, shape = self.batch_size, set(), None
        order = list(self._tickets)
        if not order:
            return pieces
        self._tickets.rotate(-1)  # the next batch starts with the next request
        wanting = [t for t in order if not t.future.done()]
        while free > 0 and wanting:
            quota = max(1, free // len(wanting))
            still = []
            for ticket in wanting:
                job = ticket.next_job(taken, shape)
                if job is None:
                    continue
                m = min(job.pending, quota, free)
                pieces.append((ticket, job, m))
                taken.add(id(job))
                shape = job.samples.shape
                free -= m
                still.append(ticket)
                if free == 0:
                    break
            wanting = still
        return pieces

    def _run_batch(self, pieces: list[tuple[Ticket, ImageJob, int]]) -> None:
        """Draw each piece's samples, run the model once, feed each piece its counts."""
        try:
            parts = []
            for _, job, m in pieces:
                need = job.certification.need
                parts.append(job.samples.take(need.stage, job.certification.received, m))
            batch = parts[0] if len(parts) == 1 else torch.cat(parts)
            labels = self._labels(batch)
            start = 0
            for (_, job, m), _part in zip(pieces, parts, strict=True):
                counts = torch.bincount(labels[start : start + m], minlength=self.num_classes)
                check_counts(counts, m, self.num_classes)
                job.certification.feed(counts.numpy())
                start += m
            self.metrics.batch(len(batch))
        except Exception as error:  # the model failed: fail the requests in this batch
            with self._cond:
                for ticket in {id(t): t for t, _, _ in pieces}.values():
                    if ticket in self._tickets:
                        self._tickets.remove(ticket)
                        self._in_flight -= len(ticket.jobs)
                    if not ticket.future.done():
                        ticket.future.set_exception(error)
                self._cond.notify_all()
            return
        with self._cond:
            self._cond.notify_all()
