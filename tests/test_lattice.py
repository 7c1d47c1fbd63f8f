"""Lattice noise: the exact law of the rounded Gaussian, and the floating-point attack it stops.

The attack follows Voracek and Hein (ICLR 2023): a base classifier that reads the rounding
of x + d. Ours votes 1 exactly when every coordinate of its input is a multiple of 2^-24.
Under real Gaussian noise that event has probability 0, so the smoothed classifier is 0
everywhere; float32 noise added to x in [0.5, 1) lands on multiples of 2^-24 every time,
and the usual implementation certifies class 1 around x: a false certificate.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats as sps

from dsmooth.certify import lattice
from dsmooth.certify.noise import philox_key
from dsmooth.certify.smooth import Smooth
from dsmooth.errors import UserError

SIGMA = 0.05
PIXELS = 16


def exact_pmf(k: int, sigma: float) -> mpmath.mpf:
    s = mpmath.mpf(sigma) * 255
    return mpmath.ncdf((k + mpmath.mpf(0.5)) / s) - mpmath.ncdf((k - mpmath.mpf(0.5)) / s)


def test_thresholds_give_the_discretised_gaussian_to_2_to_the_minus_126():
    mpmath.mp.prec = 200
    inv = lattice.inverse(0.02)
    cut = [(int(h) << 64) | int(lo) for h, lo in zip(inv.hi, inv.lo, strict=True)]
    assert cut == sorted(cut)
    bounds = [0, *cut, 1 << 128]
    worst = 0
    for j in range(len(bounds) - 1):
        k = j - inv.half
        sampled = mpmath.mpf(bounds[j + 1] - bounds[j]) / mpmath.mpf(2) ** 128
        ideal = exact_pmf(k, 0.02)
        if abs(k) == inv.half:  # the last cells hold the merged tails
            ideal = mpmath.ncdf((-inv.half + mpmath.mpf(0.5)) / (mpmath.mpf(0.02) * 255))
        worst = max(worst, abs(sampled - ideal))
    assert worst < mpmath.mpf(2) ** -126
    assert lattice.total_variation_bound(0.02) < 1e-35


def test_fast_inversion_equals_the_exact_search_on_every_hard_word():
    inv = lattice.inverse(0.25)
    rng = np.random.default_rng(1)
    hard = np.concatenate(
        [inv.hi, inv.hi + np.uint64(1), inv.hi - np.uint64(1), np.array([0, 2**64 - 1], np.uint64)]
    )
    words = np.concatenate([rng.integers(0, 2**64, 200_000, dtype=np.uint64), hard])
    low = np.random.default_rng(2).integers(0, 2**64, len(words), dtype=np.uint64)

    def low_words():
        start = [0]

        def take(c):
            out = low[start[0] : start[0] + c]
            start[0] += c
            return out

        return take

    fast = inv.offsets(words, low_words()).astype(np.int64)
    slow = inv._exact(words, low_words()).astype(np.int64) - inv.half
    assert np.array_equal(fast, slow)


def test_sampled_offsets_follow_the_discretised_gaussian():
    sigma = 0.02  # s = 5.1: a few dozen cells, each well populated
    k = lattice.lattice_block(philox_key(7, 3, 1), 0, (400_000,), sigma).astype(np.int64)
    cells = np.arange(-15, 16)
    tail = float(mpmath.ncdf((-15.5) / (mpmath.mpf(sigma) * 255)))  # each side, about 1e-3
    expected = [tail, *(float(exact_pmf(int(c), sigma)) for c in cells), tail]
    observed = [np.count_nonzero(k < -15), *(np.count_nonzero(k == c) for c in cells)]
    observed.append(np.count_nonzero(k > 15))
    expected, observed = np.array(expected) * len(k), np.array(observed)
    assert abs(expected.sum() - len(k)) < 1e-6 * len(k)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert sps.chi2.sf(chi2, len(expected) - 1) > 1e-3


def test_stream_is_deterministic_and_independent_of_how_it_is_taken():
    a = lattice.LatticeNoiseStream((3, 4, 4), 0.25, seed=5, index=9, stage=1)
    b = lattice.LatticeNoiseStream((3, 4, 4), 0.25, seed=5, index=9, stage=1)
    whole = a.take(600)
    parts = torch.cat([b.take(1), b.take(255), b.take(300), b.take(44)])
    assert torch.equal(whole, parts)
    other = lattice.LatticeNoiseStream((3, 4, 4), 0.25, seed=5, index=10, stage=1).take(600)
    assert not torch.equal(whole, other)


def test_lattice_noise_refuses_images_off_the_lattice():
    smooth = Smooth(lambda x: torch.zeros(len(x), dtype=torch.long), 2, 0.25, noise="lattice")
    with pytest.raises(UserError, match="8-bit"):
        smooth.sample_counts(torch.full((1, 2, 2), 0.3), 10, 10, index=0)
    on_grid = torch.full((1, 2, 2), 77, dtype=torch.uint8).float().div_(255.0)
    assert smooth.sample_counts(on_grid, 10, 10, index=0).sum() == 10


def test_lattice_noise_adds_integers_to_the_pixel_levels():
    seen = []

    def record(x):
        seen.append(x.clone())
        return torch.zeros(len(x), dtype=torch.long)

    image = torch.tensor([[[0, 128], [200, 255]]], dtype=torch.uint8).float().div_(255.0)
    Smooth(record, 2, 0.25, noise="lattice").sample_counts(image, 300, 100, index=4)
    z = torch.cat(seen)
    levels = torch.round(z * 255)
    assert torch.equal(levels.div(255), z)  # every input is some integer / 255
    k = (levels - torch.round(image * 255)).flatten()
    assert abs(float(k.std()) - 255 * 0.25) < 4
    assert abs(float(k.mean())) < 4


def coarse(z: torch.Tensor) -> torch.Tensor:
    """The attack: 1 when every coordinate is a multiple of 2^-24, else 0."""
    scaled = z.flatten(1).double() * 2.0**24
    return (scaled == torch.round(scaled)).all(dim=1).long()


def attacked_image() -> torch.Tensor:
    return torch.full((1, 4, PIXELS // 4), 204, dtype=torch.uint8).float().div_(255.0)  # 0.8


def test_float_noise_certifies_a_class_the_smoothed_classifier_never_predicts():
    x = attacked_image()
    prediction, radius = Smooth(coarse, 2, SIGMA, noise="gaussian").certify(
        x, 100, 1000, 0.001, 500, index=0
    )
    assert prediction == 1
    assert radius > 2 * SIGMA  # the implementation's claim
    # The truth: with noise added in float64 (far finer than 2^-24) f votes 0 every time,
    # as it must, since multiples of 2^-24 have measure zero. So g = 0 all around x.
    d = np.random.default_rng(0).normal(0.0, SIGMA, (1000, PIXELS))
    z = torch.from_numpy(x.flatten().double().numpy() + d)
    assert int(coarse(z).sum()) == 0


def rounded_vote_probability(x: np.ndarray, sigma: float) -> float:
    """P[h(x + d) = 1] for h = coarse after rounding to the lattice, computed exactly:
    per coordinate, the mass of the levels m whose float32 m / 255 is a multiple of 2^-24."""
    levels = np.arange(-600, 900)
    value = (levels.astype(np.float32) / np.float32(255.0)).astype(np.float64)
    votes = value * 2.0**24 == np.round(value * 2.0**24)
    p = 1.0
    for xi in x:
        upper = sps.norm.cdf((levels + 0.5 - 255 * xi) / (255 * sigma))
        lower = sps.norm.cdf((levels - 0.5 - 255 * xi) / (255 * sigma))
        p *= float(((upper - lower) * votes).sum())
    return p


def test_lattice_noise_certificate_holds_for_the_classifier_it_smooths():
    x = attacked_image()
    p_lower_alpha, n = 0.001, 1000
    prediction, radius = Smooth(coarse, 2, SIGMA, noise="lattice").certify(
        x, 100, n, p_lower_alpha, 500, index=0
    )
    assert prediction == 1
    assert radius > 2 * SIGMA
    # Lattice sampling is exactly Gaussian smoothing of h(z) = f(round(255 z) / 255), so the
    # certificate is about g_h, and it holds: at the worst point 0.99 R away (every pixel
    # pushed towards 0.5, where float32 m / 255 stops being a multiple of 2^-24), g_h
    # still votes 1 with the probability Cohen's bound promises.
    p_lower = 0.5 * (1 + math.erf(radius / SIGMA / math.sqrt(2)))
    far = x.flatten().double().numpy() - 0.99 * radius / math.sqrt(PIXELS)
    promised = sps.norm.cdf(sps.norm.ppf(p_lower) - 0.99 * radius / SIGMA)
    assert rounded_vote_probability(far, SIGMA) >= promised > 0.5
    assert rounded_vote_probability(x.flatten().double().numpy(), SIGMA) >= p_lower


def test_lattice_certificates_hold_at_level_alpha_against_an_exact_oracle():
    """4,000 certifications of a one-pixel image through Smooth.certify with lattice noise,
    for h(z) = [round(255 z) >= T]. The smoothed classifier is exact here: the lattice cell
    of x' + d is at least T when 255 d >= T - 1/2 - 255 x', so P[h = 1] at x' is
    Phi((255 x' - T + 1/2) / (255 sigma)) and the true radius around x = m / 255 is
    (m - T + 1/2) / 255. A certificate is false when it is class 0, or class 1 with a
    larger radius. At alpha = 0.1 the false rate must stay within the binomial interval
    of 0.1; a sampler with a biased law (a cell too many or too few) exceeds it by far."""
    sigma, m, threshold, alpha = 0.1, 140, 130, 0.1
    true_radius = (m - threshold + 0.5) / 255
    assert 0.3 < sps.norm.cdf(true_radius / sigma) < 0.95  # pA: the test has power

    def h(z):
        return (torch.round(z.flatten(1) * 255)[:, 0] >= threshold).long()

    smooth = Smooth(h, 2, sigma, seed=11, noise="lattice")
    x = torch.full((1, 1, 1), m, dtype=torch.uint8).float().div_(255.0)
    false, runs = 0, 4000
    for i in range(runs):
        label, radius = smooth.certify(x, 20, 100, alpha, batch_size=100, index=i)
        false += label == 0 or (label == 1 and radius > true_radius)
    assert 0.02 * runs < false <= alpha * runs + 3 * math.sqrt(runs * alpha * (1 - alpha))
