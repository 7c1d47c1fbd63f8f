"""Counters, gauges and a latency histogram, rendered in the Prometheus text format.

Written here rather than taken from prometheus_client: the service needs a dozen
numbers, and the text format is a few lines (prometheus.io/docs/instrumenting/exposition_formats).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

#: Latency buckets in seconds (the histogram's `le` bounds).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: Samples/s is averaged over this many seconds of recent batches.
RATE_WINDOW = 10.0


class Metrics:
    """Thread-safe numbers of one server; `render()` gives the /metrics page."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.images = 0
        self.abstained = 0
        self.stopped_early = 0
        self.samples = 0
        self.batches = 0
        self._recent: deque[tuple[float, int]] = deque()
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}  # name: (help, read)

    def request(self, route: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            key = (route, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is not None:
                self._latency_sum += seconds
                self._latency_count += 1
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        self._buckets[i] += 1

    def certificate(self, abstained: bool, stopped_early: bool) -> None:
        with self._lock:
            self.images += 1
            self.abstained += int(abstained)
            self.stopped_early += int(stopped_early)

    def batch(self, samples: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.samples += samples
            self.batches += 1
            self._recent.append((now, samples))
            while self._recent and self._recent[0][0] < now - RATE_WINDOW:
                self._recent.popleft()

    def samples_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = sum(s for t, s in self._recent if t >= now - RATE_WINDOW)
        return recent / RATE_WINDOW

    def render(self) -> str:
        """The Prometheus text exposition of every number."""
        with self._lock:
            requests = dict(self.requests)
            images, abstained, early = self.images, self.abstained, self.stopped_early
            samples, batches = self.samples, self.batches
            buckets, total, count = list(self._buckets), self._latency_sum, self._latency_count
        lines = [
            "# HELP dsmooth_requests_total HTTP requests by route and status code.",
            "# TYPE dsmooth_requests_total counter",
        ]
        for (route, status), value in sorted(requests.items()):
            lines.append(f'dsmooth_requests_total{{route="{route}",code="{status}"}} {value}')
        lines += _counter("dsmooth_certificates_total", "Images certified (or abstained).", images)
        lines += _counter("dsmooth_abstentions_total", "Images answered ABSTAIN.", abstained)
        lines += _counter(
            "dsmooth_stopped_early_total", "Certificates ended by a deadline or shutdown.", early
        )
        rate = abstained / images if images else 0.0
        lines += _gauge("dsmooth_abstain_rate", "Share of certificates that abstained.", rate)
        lines += _counter("dsmooth_samples_total", "Noise samples through the model.", samples)
        lines += _counter("dsmooth_batches_total", "Base-classifier batches run.", batches)
        lines += _gauge(
            "dsmooth_samples_per_second",
            f"Noise samples per second over the last {RATE_WINDOW:g} s.",
            self.samples_per_second(),
        )
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += _gauge(name, help_text, float(read()))
        lines += [
            "# HELP dsmooth_request_seconds Latency of certification requests.",
            "# TYPE dsmooth_request_seconds histogram",
        ]
        for bound, value in zip(LATENCY_BUCKETS, buckets, strict=True):
            lines.append(f'dsmooth_request_seconds_bucket{{le="{bound:g}"}} {value}')
        lines.append(f'dsmooth_request_seconds_bucket{{le="+Inf"}} {count}')
        lines.append(f"dsmooth_request_seconds_sum {total:.6f}")
        lines.append(f"dsmooth_request_seconds_count {count}")
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, value) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]


def _gauge(name: str, help_text: str, value) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
