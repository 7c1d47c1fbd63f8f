"""Sequential certification: plan, stopping rules, noise bookkeeping, Smooth hook, CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import certify_args, linear_binary_with_pa, read_rows
from scipy.optimize import brentq
from scipy.stats import norm

from dsmooth import ABSTAIN, Smooth, UserError
from dsmooth.analysis.tables import read_log as read_analysis_log
from dsmooth.certify import stats as exact
from dsmooth.certify.noise import (
    SEQUENTIAL_FIRST_STAGE,
    SEQUENTIAL_MAX_ROUNDS,
    STAGE_ESTIMATE,
    STAGE_PREDICT,
    STAGE_SELECT,
    sequential_stage,
)
from dsmooth.certify.sequential import (
    REASON_ABSTAIN,
    REASON_BUDGET,
    REASON_CONVERGED,
    REASON_DECIDED,
    SequentialPlan,
    certify_sequential,
    cp_lower,
    cp_upper,
    geometric_schedule,
    run_sequential,
)
from dsmooth.cli import main
from dsmooth.logs.result_log import CERTIFY_COLUMNS

SHAPE = (1, 4, 4)


# --- plan ---------------------------------------------------------------------------


def test_schedule_is_increasing_and_ends_at_budget():
    s = geometric_schedule(100, 100_000, 1.3)
    assert s[0] == 100
    assert s[-1] == 100_000
    assert all(b > a for a, b in itertools.pairwise(s))
    assert geometric_schedule(100, 50, 1.3) == (50,)  # budget below the first look
    assert geometric_schedule(1, 5, 1.1) == (1, 2, 3, 4, 5)  # no repeated looks


def test_alpha_spending_sums_to_alpha_and_favours_the_last_look():
    plan = SequentialPlan(0.25, 0.001, n_max=100_000)
    assert len(plan.levels) == len(plan.schedule)
    assert sum(plan.levels) == pytest.approx(0.001, rel=1e-12)
    assert plan.levels[-1] == pytest.approx(0.0005)
    assert SequentialPlan(0.25, 0.01, n_max=50).levels == (0.01,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"n_max": 0},
        {"radii": ()},
        {"radii": (-0.1,)},
        {"tol": 0.0},
        {"growth": 1.0},
        {"growth": 1.0001},  # too many looks for the reserved noise stages
    ],
)
def test_bad_plans_are_user_errors(kwargs):
    args = {"sigma": 0.25, "alpha": 0.001, "n_max": 100_000} | kwargs
    with pytest.raises(UserError):
        SequentialPlan(**args)


def test_vectorised_bounds_equal_exact_scalar_bounds():
    for k, n in [(0, 10), (1, 10), (7, 10), (10, 10), (99_990, 100_000)]:
        assert cp_lower([k], n, 0.001)[0] == pytest.approx(
            exact.lower_confidence_bound(k, n, 0.001), abs=1e-12
        )
        assert cp_upper([k], n, 0.001)[0] == pytest.approx(
            exact.upper_confidence_bound(k, n, 0.001), abs=1e-12
        )


# --- stopping rules (deterministic: success counts equal to round(p * m)) ---------------


def run_exact(plan: SequentialPlan, p: float):
    """One certification whose rounds see exactly round(p * m) successes."""
    out = run_sequential(plan, lambda _round, m, a: np.full(a.shape, round(p * m)), 1)
    return float(out.p_lower[0]), int(out.n_used[0]), int(out.reason[0])


def test_decision_mode_stops_early_on_clear_cases_and_certifies_the_target():
    plan = SequentialPlan(0.25, 0.001, n_max=100_000, radii=(0.5,))
    p_lower, used, reason = run_exact(plan, 1.0)
    assert reason == REASON_DECIDED
    assert used < 5_000
    assert 0.25 * norm.ppf(p_lower) >= 0.5
    p_lower, used, reason = run_exact(plan, 0.3)  # pA clearly below 1/2
    assert reason == REASON_ABSTAIN
    assert used <= 300
    assert p_lower < 0.5
    p_lower, used, reason = run_exact(plan, 0.8)  # target out of reach, class certified
    assert reason == REASON_DECIDED
    assert used < 5_000
    assert 0.5 < p_lower < norm.cdf(2)


def test_decision_mode_near_the_threshold_uses_the_budget():
    plan = SequentialPlan(0.25, 0.001, n_max=100_000, radii=(0.5,))
    # the pA whose full-budget bound (level alpha/2) is exactly Phi(0.5 / 0.25)
    p_star = brentq(lambda p: cp_lower([p * 1e5], 1e5, 0.0005)[0] - norm.cdf(2.0), 0.9, 1)
    p_lower, used, reason = run_exact(plan, p_star)
    assert (used, reason) == (100_000, REASON_BUDGET)
    assert 0.25 * norm.ppf(p_lower) == pytest.approx(0.5, abs=1e-3)
    p_lower, used, reason = run_exact(plan, p_star - 0.001)  # just out of reach: gives up
    assert reason == REASON_DECIDED
    assert used < 100_000
    assert 0.25 * norm.ppf(p_lower) < 0.5


def test_unreachable_target_gives_up_at_once():
    plan = SequentialPlan(0.12, 0.001, n_max=100_000, radii=(0.75,))  # needs pA > 1 - 2e-10
    _, used, reason = run_exact(plan, 1.0)
    assert used == 100
    assert reason == REASON_DECIDED


def test_maximal_radius_mode_stops_when_the_radius_cannot_grow_by_tol():
    plan = SequentialPlan(0.25, 0.001, n_max=100_000, tol=0.025)
    p_lower, used, reason = run_exact(plan, 0.7)
    assert reason == REASON_CONVERGED
    assert used < 100_000
    fixed = exact.radius(0.25, exact.lower_confidence_bound(70_000, 100_000, 0.001))
    assert fixed - 0.25 * norm.ppf(p_lower) <= 0.025  # what the full budget would add
    _, used, reason = run_exact(plan, 1.0)  # every sample helps: runs to the budget
    assert (used, reason) == (100_000, REASON_BUDGET)


# --- the product path -----------------------------------------------------------------


def model_with_pa(p_a: float, sigma: float):
    """(model, x, exact radius of class 1) with P[f(x + d) = 1] = p_a >= 1/2."""
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    x = torch.full(SHAPE, 0.5)
    model, radius = linear_binary_with_pa(w, x, p_a, sigma)
    return model, x, radius


class Recorder(Smooth):
    """A Smooth that records every (stage, num) it is asked to sample."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls: list[tuple[int, int]] = []

    def sample_counts(self, x, num, batch_size, *, index, stage=STAGE_ESTIMATE):
        self.calls.append((stage, num))
        return super().sample_counts(x, num, batch_size, index=index, stage=stage)


def test_rounds_use_fresh_noise_stages_and_selection_stays_separate():
    model, x, _ = model_with_pa(0.97, 0.25)
    smooth = Recorder(model, 2, 0.25, seed=1)
    result = certify_sequential(
        smooth, x, n0=100, alpha=0.001, n_max=100_000, radius=(0.25, 0.5), batch_size=1000, index=3
    )
    stages = [s for s, _ in smooth.calls]
    assert stages[0] == STAGE_SELECT
    assert smooth.calls[0][1] == 100
    rounds = stages[1:]
    assert rounds == [sequential_stage(r) for r in range(len(rounds))]
    assert len(set(stages)) == len(stages)
    assert not {STAGE_ESTIMATE, STAGE_PREDICT} & set(stages)
    assert result.n_used == sum(num for _, num in smooth.calls)
    with pytest.raises(ValueError, match=f"sequential round {SEQUENTIAL_MAX_ROUNDS} outside"):
        sequential_stage(SEQUENTIAL_MAX_ROUNDS)
    assert sequential_stage(0) == SEQUENTIAL_FIRST_STAGE > STAGE_PREDICT


@pytest.mark.parametrize("p_a", [0.8, 0.99])
def test_smooth_certify_sequential_is_below_exact_radius_and_cheaper(p_a):
    sigma = 0.25
    model, x, exact_radius = model_with_pa(p_a, sigma)
    smooth = Smooth(model, 2, sigma, seed=5)
    label, radius = smooth.certify(x, 100, 50_000, 0.001, 2048, index=0, method="sequential")
    assert label == 1
    assert 0.8 * exact_radius <= radius <= exact_radius
    target = 0.5 * exact_radius  # decision mode: a clearly reachable target is cheap
    result = certify_sequential(
        smooth, x, n0=100, alpha=0.001, n_max=50_000, radius=target, batch_size=2048, index=0
    )
    assert result.prediction == 1
    assert target <= result.radius <= exact_radius
    assert result.n_used < 2_000


def test_sequential_result_does_not_depend_on_batch_size():
    model, x, _ = model_with_pa(0.9, 0.25)
    smooth = Smooth(model, 2, 0.25, seed=2)
    plan = {"n0": 100, "alpha": 0.001, "n_max": 20_000, "radius": None}
    a = certify_sequential(smooth, x, **plan, batch_size=64, index=4)
    b = certify_sequential(smooth, x, **plan, batch_size=1000, index=4)
    assert (a.prediction, a.radius, a.n_used) == (b.prediction, b.radius, b.n_used)


def test_abstains_early_when_no_class_is_likely():
    model, x, _ = model_with_pa(0.5, 0.25)
    result = certify_sequential(
        Smooth(model, 2, 0.25), x, n0=100, alpha=0.001, n_max=100_000, radius=0.25,
        batch_size=1000, index=0,
    )  # fmt: skip
    assert result.prediction == ABSTAIN
    assert result.radius == 0.0
    assert result.n_used < 100_000


def test_method_cp_is_cohens_certify():
    model, x, _ = model_with_pa(0.9, 0.25)
    smooth = Smooth(model, 2, 0.25, seed=7)
    counts0 = smooth.sample_counts(x, 100, 500, index=2, stage=STAGE_SELECT)
    counts = smooth.sample_counts(x, 5_000, 500, index=2, stage=STAGE_ESTIMATE)
    c = int(counts0.argmax())
    expected = exact.radius(0.25, exact.lower_confidence_bound(int(counts[c]), 5_000, 0.01))
    assert smooth.certify(x, 100, 5_000, 0.01, 500, index=2) == (c, expected)
    assert smooth.certify(x, 100, 5_000, 0.01, 500, index=2, method="cp") == (c, expected)
    with pytest.raises(UserError):
        smooth.certify(x, 100, 5_000, 0.01, index=2, method="bayes")


# --- CLI ------------------------------------------------------------------------------

#: `dsmooth certify` on the first four tiny images with 2000 samples, n0 and batch at
#: their defaults: certify_args(data, classifier, out, *FOUR, ..., **CLI)
FOUR, CLI = ("--max", "4"), {"n0": None, "n": "2000", "batch": None}


def test_cli_sequential_logs_n_used_after_standard_columns_and_resumes(
    tiny_classifier_file, tiny_data_file, tmp_path
):
    out = tmp_path / "seq.tsv"
    args = certify_args(
        tiny_data_file, tiny_classifier_file, out, *FOUR, "--method", "sequential", **CLI
    )
    assert main([*args, "--radius", "0.1", "0.2", "--n-max", "3000"]) == 0
    header, rows = read_rows(out)
    assert header == [*CERTIFY_COLUMNS, "n_used"]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert 100 < int(r[-1]) <= 100 + 3000
        assert float(r[3]) >= 0
        assert (int(r[2]) == -1) == (float(r[3]) == 0)
    before = out.read_text()
    assert main([*args, "--radius", "0.1", "0.2", "--n-max", "3000"]) == 0
    assert out.read_text() == before  # resumed: nothing to do
    # `dsmooth analyze` reads the standard columns and keeps n_used as an extra one
    log = read_analysis_log(out)
    assert log.images == 4
    assert log.radius is not None
    assert log.extra_mean("n_used") == pytest.approx(np.mean([int(r[-1]) for r in rows]))
    assert main(["analyze", str(out)]) == 0


def test_cli_cp_log_keeps_the_reference_columns(tiny_classifier_file, tiny_data_file, tmp_path):
    out = tmp_path / "cp.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, *FOUR, **CLI)) == 0
    assert read_rows(out)[0] == list(CERTIFY_COLUMNS)
    # a cp log cannot silently continue as a sequential one
    args = certify_args(
        tiny_data_file, tiny_classifier_file, out, *FOUR, "--method", "sequential", **CLI
    )
    assert main(args) == 2


@pytest.mark.parametrize(
    "extra",
    [
        ["--radius", "0.5"],
        ["--n-max", "10"],
        ["--method", "sequential", "--radius", "-1"],
        ["--method", "sequential", "--n-max", "0"],
        ["--method", "sequential", "--tol", "0"],
    ],
)
def test_cli_bad_sequential_options_exit_2_and_write_nothing(
    tiny_classifier_file, tiny_data_file, tmp_path, capsys, extra
):
    out = tmp_path / "bad.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, *FOUR, *extra, **CLI)) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsmooth: error:")
    assert "\n" not in err
