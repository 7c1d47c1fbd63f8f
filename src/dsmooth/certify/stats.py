"""Exact statistics of randomized smoothing (Cohen, Rosenfeld, Kolter 2019).

Clopper-Pearson bounds come from the beta distribution and the abstention test is an
exact two-sided binomial test, so results equal statsmodels/scipy to machine precision.
"""

from __future__ import annotations

import math

from scipy.stats import beta, binomtest, norm


def check_trials(k: int, n: int) -> None:
    """A ValueError unless 0 <= k <= n and n >= 1: anything else is a bug in the caller,
    and the bounds below would quietly return 0 or 1 for it."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n = 0..{n}, got {k}")


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n."""
    check_trials(k, n)
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p from k successes in n."""
    check_trials(k, n)
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
    check_trials(k, n)
    return float(binomtest(k, n, p=0.5).pvalue)


def check_alpha(alpha: float) -> None:
    """A UserError unless 0 < alpha < 1/2: at alpha >= 1/2 a "1 - alpha confidence" bound
    is no better than a coin flip, and pA_lower >= 1/2 would certify on a single vote."""
    from dsmooth.errors import UserError

    if not (0.0 < alpha < 0.5) or math.isnan(alpha):
        raise UserError(f"alpha must be in (0, 0.5), got {alpha}.")


def check_count(name: str, value: int) -> None:
    """A UserError unless a sample count (n0, n, a batch size) is at least 1."""
    from dsmooth.errors import UserError

    if int(value) < 1:
        raise UserError(f"{name} must be at least 1, got {value}.")


def max_certified_radius(sigma: float, alpha: float, n: int) -> float:
    """The largest radius CERTIFY can return with n estimation samples: every sample on
    the top class gives pA_lower = alpha ** (1 / n), the radius sigma * PhiInv(that).
    No log made with these settings holds a larger radius (n = 500, alpha = 0.001 and
    sigma = 0.25 cap it near 0.55). It is negative when alpha ** (1 / n) < 1/2 (n < 10
    at alpha = 0.001): CERTIFY then abstains on every image."""
    return radius(sigma, lower_confidence_bound(n, n, alpha))
