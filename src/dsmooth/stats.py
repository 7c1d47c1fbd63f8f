"""Exact statistics of randomized smoothing (Cohen, Rosenfeld, Kolter 2019).

Clopper-Pearson bounds come from the beta distribution and the abstention test is an
exact two-sided binomial test, so results equal statsmodels/scipy to machine precision.
"""

from __future__ import annotations

import math

from scipy.stats import beta, binomtest, norm


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n."""
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p from k successes in n."""
    if k >= n:
        return 1.0
    return float(beta.ppf(1 - alpha, k + 1, n - k))


def radius(sigma: float, p_lower: float) -> float:
    """Certified l2 radius sigma * PhiInv(pA_lower); only meaningful for pA_lower > 1/2."""
    if p_lower >= 1.0:
        return math.inf
    return float(sigma * norm.ppf(p_lower))


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided exact binomial test of k successes in n against p = 1/2."""
    return float(binomtest(k, n, p=0.5).pvalue)


def check_alpha(alpha: float) -> None:
    from dsmooth.errors import UserError

    if not (0.0 < alpha < 1.0) or math.isnan(alpha):
        raise UserError(f"alpha must be in (0, 1), got {alpha}.")
