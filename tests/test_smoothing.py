"""Smooth against exact oracles: a binary linear classifier has a closed-form radius."""

import numpy as np
import pytest
import torch
from helpers import LinearBinary, linear_binary_with_pa

from dsmooth import ABSTAIN, Smooth, UserError, compose

SHAPE = (1, 4, 4)


def oracle(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g)
    return LinearBinary(w, 0.0), w


def point_with_pa(w, p_a, sigma, rng):
    """An x in [0, 1] where P[f(x + d) = 1] = p_a (up to float rounding): moves x along w
    as far as the box allows, then sets the bias for the rest. Returns (model, x, radius)."""
    x = torch.from_numpy(rng.uniform(0.4, 0.6, w.numel()))
    x32 = x.view(SHAPE).float()
    model, radius = linear_binary_with_pa(w, x32, p_a, sigma)
    return model, x32, radius


@pytest.mark.parametrize("p_a", [0.65, 0.8, 0.9, 0.99, 0.999])
def test_radius_close_to_exact_and_never_above(p_a):
    sigma = 0.25
    model, w = oracle()
    rng = np.random.default_rng(1)
    model, x, exact = point_with_pa(w, p_a, sigma, rng)
    label, radius = Smooth(model, 2, sigma, seed=3).certify(x, 100, 100_000, 0.001, 10_000, index=0)
    assert label == 1
    assert radius <= exact
    assert radius >= 0.9 * exact


def test_other_side_is_class_zero():
    sigma = 0.5
    model, w = oracle(1)
    model, x, exact = point_with_pa(w, 0.1, sigma, np.random.default_rng(2))  # P[f = 0] = 0.9
    label, radius = Smooth(model, 2, sigma).certify(x, 100, 20_000, 0.001, 5_000, index=0)
    assert label == 0
    assert 0.8 * exact <= radius <= exact


def test_false_certification_rate_below_alpha():
    """4,000 independent certifications at pA = 0.7, alpha = 0.1: the rate of radii
    above the true one must be <= alpha + 3 binomial standard errors (0.1 + 0.014)."""
    sigma, alpha, trials = 0.5, 0.1, 4000
    model, w = oracle(2)
    model, x, exact = point_with_pa(w, 0.7, sigma, np.random.default_rng(3))
    smooth = Smooth(model, 2, sigma, seed=11)
    wrong = 0
    for i in range(trials):
        label, radius = smooth.certify(x, 20, 100, alpha, batch_size=100, index=i)
        wrong += label != ABSTAIN and (label != 1 or radius > exact)
    margin = 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert wrong / trials <= alpha + margin
    assert wrong > 0  # the test has power: CP at n = 100 is not vacuous here


def test_batch_size_does_not_change_counts():
    model, w = oracle()
    model, x, _ = point_with_pa(w, 0.8, 0.25, np.random.default_rng(0))
    smooth = Smooth(model, 2, 0.25, seed=5)
    ref = smooth.sample_counts(x, 1000, 1000, index=7)
    for b in (1, 7, 64, 255, 256, 257, 999):
        np.testing.assert_array_equal(smooth.sample_counts(x, 1000, b, index=7), ref)


def test_noise_depends_on_seed_index_and_stage():
    """The base classifier sees different noisy batches for any other (seed, index, stage)
    and the same ones for the same coordinates (compared on the inputs themselves: equal
    counts can happen by chance)."""
    model, w = oracle()
    model, x, _ = point_with_pa(w, 0.6, 0.5, np.random.default_rng(0))
    seen = []

    def recording(batch):
        seen.append(batch.clone())
        return model(batch)

    def inputs(seed, index, stage):
        seen.clear()
        Smooth(recording, 2, 0.5, seed=seed).sample_counts(x, 300, 100, index=index, stage=stage)
        return torch.cat(seen)

    a = inputs(0, 0, 1)
    assert torch.equal(a, inputs(0, 0, 1))
    for other in [(0, 1, 1), (0, 0, 0), (1, 0, 1)]:
        assert not torch.equal(a, inputs(*other)), other


def test_predict_abstains_at_the_boundary_and_answers_far_from_it():
    _model, w = oracle()
    rng = np.random.default_rng(4)
    far, x_far, _ = point_with_pa(w, 0.99, 0.25, rng)
    mid, x_mid, _ = point_with_pa(w, 0.5, 0.25, rng)
    assert Smooth(far, 2, 0.25).predict(x_far, 1000, 0.001, index=0) == 1
    assert Smooth(mid, 2, 0.25).predict(x_mid, 1000, 0.001, index=0) == ABSTAIN


def test_callables_numpy_scores_and_composition():
    model, w = oracle()
    model, x, _ = point_with_pa(w, 0.95, 0.25, np.random.default_rng(5))

    def numpy_scores(batch):
        y = model(batch).numpy()
        return np.stack([1 - y, y], axis=1).astype(np.float64)

    identity = torch.nn.Identity()
    a = Smooth(model, 2, 0.25).certify(x, 100, 2000, 0.001, index=0)
    b = Smooth(numpy_scores, 2, 0.25).certify(x, 100, 2000, 0.001, index=0)
    c = Smooth(compose(model, identity), 2, 0.25).certify(x, 100, 2000, 0.001, index=0)
    d = Smooth(compose(numpy_scores, lambda z: z), 2, 0.25).certify(x, 100, 2000, 0.001, index=0)
    assert a == b == c == d
    assert a[0] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_construction(kwargs, message):
    model, _ = oracle()
    args = {"base_classifier": model, "num_classes": 2, "sigma": 0.25} | kwargs
    with pytest.raises(UserError, match=message):
        Smooth(**args)


@pytest.mark.parametrize(
    ("x", "n0", "n", "alpha", "message"),
    [
        (torch.full(SHAPE, 255.0), 10, 10, 0.01, r"\[0, 1\]"),
        (torch.full(SHAPE, float("nan")), 10, 10, 0.01, "NaN"),
        (torch.zeros(4, 4), 10, 10, 0.01, "shape"),
        (torch.zeros(SHAPE), 0, 10, 0.01, "n0"),
        (torch.zeros(SHAPE), 10, 0, 0.01, "n must"),
        (torch.zeros(SHAPE), 10, 10, 0.0, "alpha"),
        (torch.zeros(SHAPE), 10, 10, 1.0, "alpha"),
        (torch.zeros(SHAPE), 10, 10, 0.5, "alpha"),
    ],
)
def test_bad_certify_inputs(x, n0, n, alpha, message):
    model, _ = oracle()
    with pytest.raises(UserError, match=message):
        Smooth(model, 2, 0.25).certify(x, n0, n, alpha, index=0)


def test_output_size_must_match_num_classes():
    with pytest.raises(UserError, match="3 scores per image but num_classes is 2"):
        Smooth(lambda b: torch.zeros(len(b), 3), 2, 0.25).certify(
            torch.zeros(SHAPE), 5, 5, 0.1, index=0
        )
    with pytest.raises(UserError, match="label outside"):
        Smooth(lambda b: torch.full((len(b),), 5), 2, 0.25).certify(
            torch.zeros(SHAPE), 5, 5, 0.1, index=0
        )
