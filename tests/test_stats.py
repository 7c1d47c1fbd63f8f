"""Our bounds, p-values and radii equal the reference algorithm's (statsmodels, scipy)."""

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from dsmooth import Smooth
from dsmooth.certify import stats

CASES = [
    (0, 100),
    (1, 100),
    (50, 100),
    (99, 100),
    (100, 100),
    (9990, 10000),
    (65000, 100000),
    (99999, 100000),
    (3, 7),
    (5000, 10000),
]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
def test_lower_bound_equals_statsmodels(k, n, alpha):
    # Cohen et al.: proportion_confint(NA, N, alpha=2 * alpha, method="beta")[0]
    reference = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]
    assert stats.lower_confidence_bound(k, n, alpha) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), CASES)
def test_upper_bound_equals_statsmodels(k, n):
    reference = proportion_confint(k, n, alpha=0.02, method="beta")[1]
    assert stats.upper_confidence_bound(k, n, 0.01) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (5, 10), (60, 100), (70, 100), (520, 1000), (1, 2)])
def test_binomial_pvalue_equals_scipy(k, n):
    assert stats.binomial_pvalue(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, abs=1e-12)


def _reference_certify(counts0, counts, sigma, alpha):
    """Cohen et al.'s CERTIFY on given counts (locuslab/smoothing code/core.py)."""
    c_hat = int(np.argmax(counts0))
    p_lower = proportion_confint(
        int(counts[c_hat]), int(counts.sum()), alpha=2 * alpha, method="beta"
    )[0]
    if p_lower < 0.5:
        return -1, 0.0
    return c_hat, sigma * norm.ppf(p_lower)


def _reference_predict(counts, alpha):
    top2 = counts.argsort()[::-1][:2]
    c1, c2 = counts[top2[0]], counts[top2[1]]
    if binomtest(int(c1), int(c1 + c2), p=0.5).pvalue > alpha:
        return -1
    return int(top2[0])


class _Fixed(Smooth):
    """A Smooth whose sampling returns given counts, to compare the decision logic."""

    def __init__(self, counts_by_stage, sigma):
        super().__init__(lambda x: x.new_zeros(len(x), dtype=int), 4, sigma)
        self.counts_by_stage = counts_by_stage

    def sample_counts(self, x, num, batch_size, *, index, stage=1):  # noqa: ARG002
        counts = np.asarray(self.counts_by_stage[stage], dtype=np.int64)
        assert counts.sum() == num
        return counts


@pytest.mark.parametrize("seed", range(40))
def test_certify_and_predict_equal_reference_on_same_counts(seed):
    rng = np.random.default_rng(seed)
    n0, n, sigma, alpha = 100, int(rng.integers(100, 20000)), float(rng.uniform(0.1, 1)), 0.001
    p = rng.dirichlet(np.full(4, rng.uniform(0.05, 2)))
    counts0, counts, counts_pred = (rng.multinomial(m, p) for m in (n0, n, n))
    smooth = _Fixed({0: counts0, 1: counts, 2: counts_pred}, sigma)
    x = np.zeros((1, 2, 2), np.float32)
    label, radius = smooth.certify(x, n0, n, alpha, index=seed)
    ref_label, ref_radius = _reference_certify(counts0, counts, sigma, alpha)
    assert label == ref_label
    assert radius == pytest.approx(ref_radius, abs=1e-12)
    assert smooth.predict(x, n, alpha, index=seed) == _reference_predict(counts_pred, alpha)
