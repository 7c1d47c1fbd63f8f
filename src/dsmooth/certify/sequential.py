"""Sequential CERTIFY: stop sampling as soon as the answer is known, same guarantee.

The lower confidence bound on pA is a *confidence sequence over a pre-declared schedule
of looks*: look k sees the first n_k estimation samples (n_1 < ... < n_K = n_max, fixed
before any sample is drawn) and computes a one-sided Clopper-Pearson bound at level
alpha_k, with sum_k alpha_k = alpha. By Boole's inequality, with probability >= 1 - alpha
*every* look's bound is below pA at once, so any stopping rule, including ones that peek
at the data, keeps P(certificate wrong) <= alpha. The argument and the stopping rules
are in docs/sequential.md; this module implements exactly that argument.

The looks are one resumable state machine, `SequentialTest`, vectorised over independent
certifications: `run_sequential` drives it with a draw function (the product on one
image in `certify_sequential`, the validity tests and benchmark with binomial draws from
a known pA), and the certified service feeds it as its batches complete
(dsmooth.certify.resumable). All three compute every bound and stop with this code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
from scipy.stats import beta, norm

from dsmooth.certify.noise import SEQUENTIAL_MAX_ROUNDS, STAGE_SELECT, sequential_stage
from dsmooth.certify.stats import check_alpha, check_count
from dsmooth.errors import UserError
from dsmooth.sigma import check_sigma

ABSTAIN = -1

#: Stop reasons recorded per certification.
REASON_DECIDED = 1  # decision mode: every target radius certified or out of reach
REASON_CONVERGED = 2  # maximal-radius mode: the radius cannot grow by more than tol
REASON_ABSTAIN = 3  # pA is clearly below 1/2 (even optimistically out of reach)
REASON_BUDGET = 4  # n_max samples used

#: Level of the optimistic upper bound used by the futility rules. It only decides when
#: to give up (costing power, never validity), so it is a fixed design constant.
FUTILITY_LEVEL = 1e-3


def cp_lower(k, n, level: float) -> np.ndarray:
    """One-sided (1 - level) Clopper-Pearson lower bounds on p, vectorised (k may be real)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    out = np.zeros(k.shape)
    pos = k > 0
    out[pos] = beta.ppf(level, k[pos], n[pos] - k[pos] + 1)
    return out


def cp_upper(k, n, level: float) -> np.ndarray:
    """One-sided (1 - level) Clopper-Pearson upper bounds on p, vectorised."""
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    out = np.ones(k.shape)
    low = k < n
    out[low] = beta.ppf(1 - level, k[low] + 1, n[low] - k[low])
    return out


def radius_of(p_lower, sigma: float) -> np.ndarray:
    """sigma * PhiInv(p_lower) where p_lower >= 1/2, else 0 (abstain)."""
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p >= 0.5, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def geometric_schedule(n_first: int, n_max: int, growth: float) -> tuple[int, ...]:
    """Cumulative sample counts of the looks: n_first * growth^k, ending exactly at n_max."""
    points: list[int] = []
    n = float(n_first)
    while round(n) < n_max:
        if not points or round(n) > points[-1]:
            points.append(round(n))
        n *= growth
    points.append(int(n_max))
    return tuple(points)


@dataclass(frozen=True)
class SequentialPlan:
    """Everything fixed before sampling: schedule, alpha spending, targets, tolerance.

    `radii` (decision mode) are the target radii to decide; `None` means maximal-radius
    mode, which stops when the radius can no longer grow by more than `tol`.
    `final_share` of alpha goes to the last look (n_max), the rest is split evenly over
    the earlier looks.
    """

    sigma: float
    alpha: float
    _: KW_ONLY
    n_max: int
    radii: tuple[float, ...] | None = None
    tol: float | None = None
    n_first: int = 100
    growth: float = 1.3
    final_share: float = 0.5

    def __post_init__(self):
        check_plan(self)

    @property
    def schedule(self) -> tuple[int, ...]:
        return geometric_schedule(min(self.n_first, self.n_max), self.n_max, self.growth)

    @property
    def levels(self) -> tuple[float, ...]:
        """alpha_k per look; they sum to alpha (Boole's inequality needs nothing more)."""
        k = len(self.schedule)
        if k == 1:
            return (self.alpha,)
        early = self.alpha * (1.0 - self.final_share) / (k - 1)
        return (early,) * (k - 1) + (self.alpha * self.final_share,)

    @property
    def tolerance(self) -> float:
        """Maximal-radius mode: the radius gain below which sampling stops (default 0.1 sigma)."""
        return 0.1 * self.sigma if self.tol is None else self.tol

    @property
    def thresholds(self) -> np.ndarray:
        """pA lower bound needed for each target radius: Phi(R / sigma)."""
        return norm.cdf(np.asarray(self.radii, dtype=np.float64) / self.sigma)


def check_plan(plan: SequentialPlan) -> None:
    check_sigma(plan.sigma)
    check_alpha(plan.alpha)
    if int(plan.n_max) < 1:
        raise UserError(f"n_max must be at least 1, got {plan.n_max}.")
    if int(plan.n_first) < 1:
        raise UserError(f"the first look must have at least 1 sample, got {plan.n_first}.")
    if not (plan.growth > 1.0):
        raise UserError(f"the schedule growth must be above 1, got {plan.growth}.")
    if not (0.0 < plan.final_share <= 1.0):
        raise UserError(f"final_share must be in (0, 1], got {plan.final_share}.")
    if plan.radii is not None:
        if len(plan.radii) == 0:
            raise UserError("give at least one target radius, or none for maximal-radius mode.")
        bad = [r for r in plan.radii if not (r >= 0) or math.isinf(r)]
        if bad:
            raise UserError(f"target radii must be finite and >= 0, got {bad[0]}.")
    if plan.tol is not None and not (plan.tol > 0):
        raise UserError(f"the radius tolerance must be positive, got {plan.tol}.")
    rounds = len(geometric_schedule(min(plan.n_first, plan.n_max), plan.n_max, plan.growth))
    if rounds > SEQUENTIAL_MAX_ROUNDS:
        raise UserError(
            f"the schedule has {rounds} looks, more than the {SEQUENTIAL_MAX_ROUNDS} noise "
            "stages reserved for sequential rounds; use a larger growth."
        )


@dataclass
class SequentialOutcome:
    """Per certification: pA lower bound (max over looks), samples used, stop reason."""

    p_lower: np.ndarray
    n_used: np.ndarray
    reason: np.ndarray


def should_stop(plan: SequentialPlan, k: np.ndarray, n: int, p_lower: np.ndarray):
    """Stop mask and reasons at a look with k successes out of n (before the last look).

    Futility uses an optimistic projection: if the remaining n_max - n samples succeeded
    at rate U (a 1 - FUTILITY_LEVEL upper bound on pA), the last look's bound would be
    `projected`; no radius beyond radius_of(projected) is realistically reachable.
    """
    final_level = plan.levels[-1]
    upper = cp_upper(k, n, FUTILITY_LEVEL)
    projected = cp_lower(k + upper * (plan.n_max - n), plan.n_max, final_level)
    abstain = projected < 0.5
    if plan.radii is not None:
        t = plan.thresholds[None, :]
        decided = (p_lower[:, None] >= t) | (projected[:, None] < t)
        done = decided.all(axis=1)
        reason = np.where(abstain, REASON_ABSTAIN, REASON_DECIDED)
    else:
        gain = radius_of(projected, plan.sigma) - radius_of(p_lower, plan.sigma)
        done = gain <= plan.tolerance
        reason = np.where(abstain, REASON_ABSTAIN, REASON_CONVERGED)
    stop = done | abstain
    return stop, np.where(stop, reason, 0)


class SequentialTest:
    """The plan's looks as a state machine over `size` certifications, fed look by look.

    `need` is the number of fresh samples each active certification draws for the next
    look; `look(successes)` takes their successes (samples of the selected class), updates
    the bounds and stops the certifications the rules of `should_stop` say are done. A
    certification still active at the last look stops there with REASON_BUDGET.
    """

    def __init__(self, plan: SequentialPlan, size: int = 1):
        self.plan = plan
        self._schedule, self._levels = plan.schedule, plan.levels
        self.round = 0  # the next look
        self.active = np.arange(size)
        self.successes = np.zeros(size, dtype=np.int64)
        self.p_lower = np.zeros(size)
        self.n_used = np.zeros(size, dtype=np.int64)  # estimation samples at the last look
        self.reason = np.full(size, REASON_BUDGET, dtype=np.int64)

    @property
    def done(self) -> bool:
        return self.active.size == 0

    @property
    def need(self) -> int:
        """Fresh samples per active certification for the next look (0 when done)."""
        if self.done:
            return 0
        previous = self._schedule[self.round - 1] if self.round else 0
        return self._schedule[self.round] - previous

    def look(self, successes) -> None:
        """Take the successes among the `need` fresh samples of each active certification."""
        if self.done:
            raise RuntimeError("the sequential test is over; no look is due")
        r, m, active = self.round, self.need, self.active
        got = np.asarray(successes, dtype=np.int64)
        if got.shape != active.shape or (got < 0).any() or (got > m).any():
            raise ValueError("draw returned impossible success counts")
        n, level = self._schedule[r], self._levels[r]
        self.successes[active] += got
        self.n_used[active] = n
        k = self.successes[active]
        self.p_lower[active] = np.maximum(self.p_lower[active], cp_lower(k, n, level))
        self.round = r + 1
        if r == len(self._schedule) - 1:
            self.active = active[:0]
            return
        stop, why = should_stop(self.plan, k, n, self.p_lower[active])
        self.reason[active[stop]] = why[stop]
        self.active = active[~stop]

    def outcome(self) -> SequentialOutcome:
        return SequentialOutcome(self.p_lower, self.n_used, self.reason)


DrawFn = Callable[[int, int, np.ndarray], np.ndarray]


def run_sequential(plan: SequentialPlan, draw: DrawFn, size: int) -> SequentialOutcome:
    """Run `size` independent sequential certifications.

    `draw(round_no, m, active)` must return, for each certification index in `active`,
    the number of successes (samples of the selected class) among m *fresh* samples;
    round numbers are 0, 1, ... and each round must use new noise.
    """
    test = SequentialTest(plan, size)
    while not test.done:
        test.look(draw(test.round, test.need, test.active))
    return test.outcome()


def decide(c_hat: int | None, p_lower: float, sigma: float) -> tuple[int, float]:
    """(c_hat, its radius) when the bound reaches 1/2, else (ABSTAIN, 0.0).

    `c_hat` is None before selection, when no look has raised the bound from 0 yet."""
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    if c_hat is None:  # unreachable: a bound needs the selected class's counts
        raise RuntimeError(f"a pA lower bound of {p_lower} with no class selected")
    return c_hat, float(radius_of(p_lower, sigma))


@dataclass
class SequentialResult:
    """One image: the CERTIFY answer plus what it cost."""

    prediction: int
    radius: float
    n_used: int  # n0 selection samples + estimation samples
    p_lower: float
    reason: int


def certify_sequential(
    smooth,
    x,
    *,
    n0: int,
    alpha: float,
    n_max: int,
    radius: float | Sequence[float] | None = None,
    batch_size: int = 64,
    index: int,
    tol: float | None = None,
) -> SequentialResult:
    """Select the class with n0 samples, then bound its probability sequentially.

    Decision mode (`radius` given: one or more target radii) stops once each target is
    certified or out of reach; maximal-radius mode (`radius=None`) stops when the radius
    cannot grow by more than `tol` (default 0.1 sigma) within `n_max` samples. Either way
    the certificate is wrong with probability <= alpha.
    """
    check_count("n0", n0)
    check_count("batch_size", batch_size)
    radii = None if radius is None else tuple(float(r) for r in np.atleast_1d(radius))
    plan = SequentialPlan(smooth.sigma, float(alpha), n_max=int(n_max), radii=radii, tol=tol)
    # Both stages go through Smooth.sample_counts, so the base-classifier contract (one
    # integer label or score row per input, counts adding up to the samples) holds here too.
    selection = smooth.sample_counts(x, n0, batch_size, index=index, stage=STAGE_SELECT)
    c_hat = int(selection.argmax())

    def draw(round_no: int, m: int, active: np.ndarray) -> np.ndarray:
        stage = sequential_stage(round_no)
        counts = smooth.sample_counts(x, m, batch_size, index=index, stage=stage)
        return np.full(active.shape, counts[c_hat], dtype=np.int64)

    out = run_sequential(plan, draw, 1)
    p_lower = float(out.p_lower[0])
    prediction, r = decide(c_hat, p_lower, smooth.sigma)
    return SequentialResult(prediction, r, int(n0 + out.n_used[0]), p_lower, int(out.reason[0]))
