"""CERTIFY for one image as a state machine that asks for samples and is fed counts.

Offline, `Certifier.certify` draws all the noise of an image in one call. The certified
service (dsmooth.deploy.service) interleaves the samples of many images in one batch, so
here each certification says what it needs next (`Need`: m samples of stream stage s),
is fed class counts in chunks of any size, and advances when a need is complete. A
method offers one through `Certifier.resumable` (dsmooth.certify.methods). The
arithmetic is the offline one, call for call (dsmooth.certify.stats for CP; for
sequential, the very `SequentialTest` that `run_sequential` drives offline), so with the
same noise the answer equals `Smooth.certify(..., index=i)` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsmooth.certify import stats
from dsmooth.certify.noise import STAGE_ESTIMATE, STAGE_SELECT, sequential_stage
from dsmooth.certify.sequential import (
    REASON_ABSTAIN,
    REASON_BUDGET,
    REASON_CONVERGED,
    REASON_DECIDED,
    SequentialPlan,
    SequentialTest,
    decide,
)

ABSTAIN = -1

#: Why a certification ended, as the service reports it.
SEQUENTIAL_REASONS = {
    REASON_DECIDED: "decided",
    REASON_CONVERGED: "converged",
    REASON_ABSTAIN: "abstain",
    REASON_BUDGET: "budget",
}


@dataclass(frozen=True)
class Need:
    """`count` samples of noise stage `stage` of this image (the stream's next ones)."""

    stage: int
    count: int


@dataclass(frozen=True)
class Outcome:
    """One image's certificate: class or ABSTAIN, radius, pA lower bound, samples used.

    `stopped_early` is set when a deadline or shutdown ended it before the offline
    procedure would have stopped; the certificate then rests on fewer samples (same alpha).
    """

    prediction: int
    radius: float
    p_lower: float
    n_used: int
    reason: str
    stopped_early: bool = False


class Certification:
    """Common bookkeeping: the current need, how much of it has arrived, its counts.

    A subclass sets the first `need`, completes each one in `_complete` (setting the next
    need, or `outcome` and need None), and says in `stop` what holds when cut short.
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.need: Need | None = None
        self.received = 0
        self.drawn = 0
        self.outcome: Outcome | None = None
        self._counts = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def pending(self) -> int:
        """Samples of the current need not fed yet (0 when done)."""
        return 0 if self.need is None else self.need.count - self.received

    def feed(self, counts: np.ndarray) -> None:
        """Class counts of the next chunk of the current need, in stream order."""
        counts = np.asarray(counts, dtype=np.int64)
        m = int(counts.sum())
        if self.need is None or counts.shape != (self.num_classes,) or m > self.pending:
            raise RuntimeError("counts fed to a certification that did not ask for them")
        self._counts += counts
        self.received += m
        self.drawn += m
        if self.received == self.need.count:
            complete, self._counts = self._counts, np.zeros(self.num_classes, dtype=np.int64)
            self.received = 0
            self._complete(complete)

    def _complete(self, counts: np.ndarray) -> None:
        raise NotImplementedError

    def stop(self, reason: str) -> Outcome:
        """End now (deadline, shutdown): what is certified so far at the same alpha."""
        raise NotImplementedError


class CPCertification(Certification):
    """Cohen et al.'s CERTIFY: n0 selection samples, then n fresh estimation samples."""

    def __init__(self, num_classes: int, sigma: float, n0: int, n: int, alpha: float):
        super().__init__(num_classes)
        self.sigma, self.n0, self.n, self.alpha = float(sigma), int(n0), int(n), float(alpha)
        self.c_hat: int | None = None
        self.need = Need(STAGE_SELECT, self.n0)

    def _complete(self, counts: np.ndarray) -> None:
        if self.c_hat is None:  # selection
            self.c_hat = int(counts.argmax())
            self.need = Need(STAGE_ESTIMATE, self.n)
            return
        self.need = None
        n_used = self.n0 + self.n
        p_lower = stats.lower_confidence_bound(int(counts[self.c_hat]), self.n, self.alpha)
        if p_lower < 0.5:
            self.outcome = Outcome(ABSTAIN, 0.0, p_lower, n_used, "abstain")
        else:
            r = stats.radius(self.sigma, p_lower)
            self.outcome = Outcome(self.c_hat, r, p_lower, n_used, "certified")

    def stop(self, reason: str) -> Outcome:
        """A fixed-n bound is only valid at n: an unfinished image abstains."""
        if self.outcome is None:
            self.need = None
            self.outcome = Outcome(ABSTAIN, 0.0, 0.0, self.drawn, reason, stopped_early=True)
        return self.outcome


class SequentialCertification(Certification):
    """dsmooth.certify.sequential's procedure for one image, look by look.

    After selection it feeds a `SequentialTest` of one certification, the state machine
    `run_sequential` drives offline, so every look's bound and stopping decision is the
    offline one.
    """

    def __init__(
        self,
        num_classes: int,
        sigma: float,
        *,
        n0: int,
        alpha: float,
        n_max: int,
        radius: float | Sequence[float] | None = None,
        tol: float | None = None,
    ):
        super().__init__(num_classes)
        radii = None if radius is None else tuple(float(r) for r in np.atleast_1d(radius))
        self.plan = SequentialPlan(
            float(sigma), float(alpha), n_max=int(n_max), radii=radii, tol=tol
        )
        self.sigma, self.n0 = float(sigma), int(n0)
        self.c_hat: int | None = None
        self.test = SequentialTest(self.plan)
        self.need = Need(STAGE_SELECT, self.n0)

    def _complete(self, counts: np.ndarray) -> None:
        if self.c_hat is None:  # selection
            self.c_hat = int(counts.argmax())
        else:
            self.test.look(np.full(1, counts[self.c_hat], dtype=np.int64))
        if self.test.done:
            self._finish(int(self.test.reason[0]))
        else:
            self.need = Need(sequential_stage(self.test.round), self.test.need)

    def _result(self, reason: str, stopped_early: bool) -> Outcome:
        p_lower = float(self.test.p_lower[0])
        n_used = int(self.n0 + self.test.n_used[0])
        prediction, r = decide(self.c_hat, p_lower, self.sigma)
        return Outcome(prediction, r, p_lower, n_used, reason, stopped_early)

    def _finish(self, code: int) -> None:
        self.need = None
        self.outcome = self._result(SEQUENTIAL_REASONS[code], False)

    def stop(self, reason: str) -> Outcome:
        """Stop at the last complete look: its bound holds at the same alpha, since the
        looks form a confidence sequence valid under any stopping rule
        (docs/sequential.md). Samples of an unfinished round are not used."""
        if self.outcome is None:
            self.need = None
            self.outcome = self._result(reason, True)
        return self.outcome
