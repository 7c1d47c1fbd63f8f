"""Monte Carlo validity of sequential certification: P(certificate too large) <= alpha.

Each certification has a base classifier with known pA (two classes, the top one with
probability pA ~ U[0.5, 1)); selection with n0 = 100 and every estimation round are
binomial draws that drive `run_sequential`, the very code the product runs. A certificate
is wrong when it is not ABSTAIN and its radius exceeds the true radius of the selected
class (any certificate for the minority class is wrong). alpha = 0.05 and 6,000
certifications per mode: the rate must stay below alpha + 3 binomial standard errors
(0.05 + 0.0084). The same harness shows it can fail: re-checking Clopper-Pearson at
level alpha after every round (no alpha spending) exceeds the margin by far.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from dsmooth.certify.sequential import SequentialPlan, radius_of, run_sequential

ALPHA, SIGMA, N0, N_MAX, COUNT = 0.05, 0.5, 100, 10_000, 6_000
MARGIN = 3 * np.sqrt(ALPHA * (1 - ALPHA) / COUNT)


class NaivePlan(SequentialPlan):
    """The invalid procedure: a level-alpha Clopper-Pearson bound at every look."""

    @property
    def levels(self):
        return (self.alpha,) * len(self.schedule)


def wrong_rate(plan: SequentialPlan, seed: int) -> tuple[float, float]:
    """(rate of certificates above the true radius, mean estimation samples)."""
    rng = np.random.default_rng(seed)
    p_top = rng.uniform(0.5, 1.0, COUNT)
    k0 = rng.binomial(N0, p_top)
    p_selected = np.where(k0 >= N0 - k0, p_top, 1 - p_top)  # argmax; ties go to the top
    out = run_sequential(plan, lambda _round, m, active: rng.binomial(m, p_selected[active]), COUNT)
    certified = out.p_lower >= 0.5
    true_radius = np.where(p_selected > 0.5, SIGMA * norm.ppf(p_selected), -np.inf)
    wrong = certified & (radius_of(out.p_lower, SIGMA) > true_radius)
    return float(wrong.mean()), float(out.n_used.mean())


DENSE = tuple(SIGMA * norm.ppf(np.linspace(0.55, 0.99, 12)))

MODES = {
    "decision, radii 0.25/0.5/0.75": (0.25, 0.5, 0.75),
    "decision, 12 dense radii": DENSE,
    "maximal radius": None,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_false_certificate_rate_at_most_alpha(mode):
    rate, used = wrong_rate(SequentialPlan(SIGMA, ALPHA, n_max=N_MAX, radii=MODES[mode]), seed=11)
    assert rate <= ALPHA + MARGIN, f"{mode}: {rate:.4f} wrong certificates"
    assert used < N_MAX  # it did stop early on average


def test_uncorrected_repeated_clopper_pearson_fails_the_same_check():
    rate, _ = wrong_rate(NaivePlan(SIGMA, ALPHA, n_max=N_MAX, radii=DENSE), seed=11)
    assert rate > ALPHA + MARGIN
