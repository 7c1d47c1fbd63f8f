"""Certification methods as objects (dsmooth.certify.methods): the two built in give the
certificates they always gave, and a method defined here, in a test module, certifies a
dataset through `dsmooth certify` with its own log column, registered with one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from helpers import certify_args, read_rows

from dsmooth.certify import stats
from dsmooth.certify.methods import (
    METHODS,
    Certificate,
    Certifier,
    CohenCP,
    Sequential,
    make_method,
    register_method,
)
from dsmooth.certify.noise import STAGE_ESTIMATE, STAGE_SELECT
from dsmooth.certify.sequential import (
    SequentialPlan,
    SequentialTest,
    certify_sequential,
    run_sequential,
)
from dsmooth.certify.smooth import ABSTAIN, Smooth
from dsmooth.cli import main
from dsmooth.data.load import load_images
from dsmooth.errors import UserError
from dsmooth.logs.result_log import CERTIFY_COLUMNS
from dsmooth.runs.local import certify_dataset


@dataclass(frozen=True)
class VotesCP(Certifier):
    """Cohen's CERTIFY, also logging the selected class's estimation votes."""

    name: ClassVar[str] = "cp-votes"
    summary: ClassVar[str] = "cp, plus a votes column"
    columns: ClassVar[tuple[str, ...]] = ("votes",)

    n0: int
    n: int
    alpha: float

    def certify(self, smooth, x, batch_size=64, *, index):
        selection = smooth.sample_counts(x, self.n0, batch_size, index=index, stage=STAGE_SELECT)
        c_hat = int(selection.argmax())
        counts = smooth.sample_counts(x, self.n, batch_size, index=index, stage=STAGE_ESTIMATE)
        votes = int(counts[c_hat])
        p_lower = stats.lower_confidence_bound(votes, self.n, self.alpha)
        if p_lower < 0.5:
            return Certificate(ABSTAIN, 0.0, {"votes": votes})
        return Certificate(c_hat, stats.radius(smooth.sigma, p_lower), {"votes": votes})

    def selection_only(self, prediction):
        return Certificate(prediction, 0.0, {"votes": 0})


@dataclass(frozen=True)
class Abstain(Certifier):
    """Never certifies: draws nothing and abstains."""

    name: ClassVar[str] = "abstain"
    n0: int
    n: int
    alpha: float

    def certify(self, smooth, x, batch_size=64, *, index):  # noqa: ARG002
        return Certificate(ABSTAIN, 0.0)


@pytest.fixture
def votes_method():
    register_method(VotesCP)
    yield VotesCP
    del METHODS[VotesCP.name]


def without(header, rows, *names):
    keep = [k for k, c in enumerate(header) if c not in names]
    return [[r[k] for k in keep] for r in rows]


@pytest.mark.usefixtures("votes_method")
def test_a_registered_method_certifies_through_the_cli_with_its_column(
    tiny_data_file, tiny_classifier_file, tmp_path
):
    cp, votes = tmp_path / "cp.tsv", tmp_path / "votes.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, cp)) == 0
    argv = certify_args(tiny_data_file, tiny_classifier_file, votes, "--method", "cp-votes")
    assert main(argv) == 0
    head_cp, rows_cp = read_rows(cp)
    head, rows = read_rows(votes)
    assert head == [*CERTIFY_COLUMNS, "votes"]
    # the same noise and the same bound as cp: the same certificates, row for row
    assert without(head, rows, "time", "votes") == without(head_cp, rows_cp, "time")
    assert all(0 <= int(r[-1]) <= 500 for r in rows)
    before = votes.read_text()
    assert main(argv) == 0
    assert votes.read_text() == before  # resumed: nothing to do
    assert main(["analyze", str(votes)]) == 0


@pytest.mark.usefixtures("votes_method")
def test_a_registered_method_stops_after_selection_with_its_column(
    tiny_data_file, tiny_classifier_file, tmp_path
):
    out = tmp_path / "votes.tsv"
    extra = ("--method", "cp-votes", "--stop-if-misclassified")
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, *extra)) == 0
    head, rows = read_rows(out)
    assert head == [*CERTIFY_COLUMNS, "votes", "selection_only"]
    stopped = [r for r in rows if r[-1] == "1"]
    assert stopped
    assert all(r[-2] == "0" and r[3] == "0" for r in stopped)


@pytest.mark.usefixtures("votes_method")
def test_an_option_the_method_does_not_read_is_refused(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    out = tmp_path / "votes.tsv"
    extra = ("--method", "cp-votes", "--radius", "0.5")
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, *extra)) == 2
    assert "--radius needs --method sequential." in capsys.readouterr().err
    assert not out.exists()


def test_a_method_object_certifies_through_the_job(tiny_data_file, tmp_path):
    data = load_images(tiny_data_file)
    smooth = Smooth(lambda b: torch.zeros(len(b), dtype=torch.long), 3, 0.25)
    out = tmp_path / "abstain.tsv"
    method = Abstain(10, 10, 0.01)
    assert certify_dataset(smooth, data, out=out, progress=False, method=method) == len(data)
    head, rows = read_rows(out)
    assert head == list(CERTIFY_COLUMNS)
    assert all(r[2] == "-1" and r[3] == "0" for r in rows)
    with pytest.raises(UserError, match="either a method or n0"):
        certify_dataset(
            smooth, data, out=out, n0=10, n=10, alpha=0.01, progress=False, method=method
        )


def test_a_certificate_must_fill_the_declared_columns(tiny_data_file, tmp_path):
    @dataclass(frozen=True)
    class Forgetful(Abstain):
        columns: ClassVar[tuple[str, ...]] = ("votes",)

    data = load_images(tiny_data_file)
    smooth = Smooth(lambda b: torch.zeros(len(b), dtype=torch.long), 3, 0.25)
    out = tmp_path / "bad.tsv"
    with pytest.raises(RuntimeError, match="declares"):
        certify_dataset(smooth, data, out=out, progress=False, method=Forgetful(1, 1, 0.01))
    assert read_rows(out) == ([*CERTIFY_COLUMNS, "votes"], [])  # no row, no half row


# --- the built-in methods ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smooth():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3 * 8 * 8, generator=g) * 0.5
    return Smooth(lambda b: b.flatten(1) @ weight.T, 3, 0.25, seed=2)


def image(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, 8, 8))).float() / 255


@pytest.mark.parametrize("index", [0, 1, 2])
def test_cohen_cp_is_smooth_certify(smooth, index):
    x = image(index)
    got = CohenCP(20, 300, 0.01).certify(smooth, x, 64, index=index)
    assert (got.prediction, got.radius) == smooth.certify(x, 20, 300, 0.01, 64, index=index)
    assert got.extra == {}


@pytest.mark.parametrize("radius", [None, (0.1, 0.3)])
def test_sequential_is_certify_sequential_with_n_used(smooth, radius):
    x = image(3)
    method = make_method("sequential", n0=20, n=2000, alpha=0.01, radius=radius)
    got = method.certify(smooth, x, 100, index=4)
    want = certify_sequential(
        smooth, x, n0=20, alpha=0.01, n_max=2000, radius=radius, batch_size=100, index=4
    )
    assert (got.prediction, got.radius, got.extra) == (
        want.prediction,
        want.radius,
        {"n_used": want.n_used},
    )
    call = smooth.certify(x, 20, 2000, 0.01, 100, index=4, method="sequential", radius=radius)
    assert call == (want.prediction, want.radius)


def test_records_keep_the_provenance_entries_of_older_logs():
    assert CohenCP(100, 500, 0.001).record() == {
        "method": "cp",
        "radius": None,
        "n_max": None,
        "tol": None,
    }
    seq = make_method("sequential", n0=100, n=500, alpha=0.001, radius=[0.25, 0.5])
    assert seq == Sequential(100, 0.001, 500, (0.25, 0.5))
    assert seq.record() == {
        "method": "sequential",
        "radius": [0.25, 0.5],
        "n_max": 500,
        "tol": None,
    }


def test_a_method_reading_options_records_them_by_default():
    """So that a log made with one n_max does not resume under another."""

    @dataclass(frozen=True)
    class Budgeted(Abstain):
        options: ClassVar[tuple[str, ...]] = ("n_max",)
        n_max: int = 0

    assert Budgeted(1, 1, 0.01, n_max=500).record()["n_max"] == 500
    assert Budgeted(1, 1, 0.01, n_max=500).record() != Budgeted(1, 1, 0.01, n_max=9).record()


def test_registry_refuses_what_it_cannot_serve():
    with pytest.raises(UserError, match="method must be one of 'cp', 'sequential'"):
        make_method("bayes", n0=1, n=1, alpha=0.01)

    @dataclass(frozen=True)
    class Other(Abstain):
        name: ClassVar[str] = "cp"

    with pytest.raises(ValueError, match="already registered"):
        register_method(Other)
    with pytest.raises(TypeError):
        register_method(dict)

    @dataclass(frozen=True)
    class Columns(Abstain):
        name: ClassVar[str] = "columns-without-selection"
        columns: ClassVar[tuple[str, ...]] = ("votes",)

    with pytest.raises(ValueError, match="does not override selection_only"):
        register_method(Columns)
    with pytest.raises(UserError, match="n0 must be at least 1"):
        CohenCP(0, 10, 0.01)
    with pytest.raises(UserError, match="n_max must be at least 1"):
        Sequential(10, 0.01, 0)


def test_sequential_test_fed_look_by_look_is_run_sequential():
    """The state machine the service feeds and the loop the product runs are one."""
    plan = SequentialPlan(0.25, 0.001, n_max=20_000, radii=(0.1, 0.5))
    p = np.random.default_rng(0).uniform(0.3, 1.0, 200)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    ran = run_sequential(plan, lambda _round, m, active: a.binomial(m, p[active]), p.size)
    test, looks = SequentialTest(plan, p.size), 0
    while not test.done:
        test.look(b.binomial(test.need, p[test.active]))
        looks += 1
    fed = test.outcome()
    assert 1 < looks <= len(plan.schedule)
    assert test.need == 0
    for name in ("p_lower", "n_used", "reason"):
        assert np.array_equal(getattr(ran, name), getattr(fed, name)), name
    with pytest.raises(RuntimeError):
        test.look(np.zeros(0))


@pytest.mark.usefixtures("votes_method")
def test_reports_describe_a_registered_methods_log_through_the_method(
    tiny_data_file, tiny_classifier_file, tmp_path
):
    """The report's settings, command and radius cap come from the method's own hooks:
    analysis names no method, so a new one needs no change there."""
    from dsmooth.analysis.settings import certify_command, radius_cap, settings_row
    from dsmooth.logs.provenance import read

    out = tmp_path / "votes.tsv"
    argv = certify_args(tiny_data_file, tiny_classifier_file, out, "--method", "cp-votes")
    assert main(argv) == 0
    record = read(out)
    row = settings_row(record)
    assert row["method"] == f"cp-votes, n = {record['n']}"
    assert row["n"] == str(record["n"])
    assert row["largest radius"] == "-"  # VotesCP does not say its largest radius
    assert radius_cap(record) is None
    assert " --method cp-votes " in certify_command(record, out)
    # the built-in ones, through the same hooks
    cp = {**record, "method": "cp"}
    assert settings_row(cp)["method"] == "CERTIFY (Clopper-Pearson)"
    largest = stats.max_certified_radius(record["sigma"], record["alpha"], record["n"])
    assert radius_cap(cp).radius == pytest.approx(max(largest, 0.0))
    seq = {**record, "method": "sequential", "radius": [0.1], "n_max": 80}
    assert settings_row(seq)["method"] == "sequential, n_max = 80; targets 0.1"
    assert settings_row(seq)["n"] == "-"
    assert certify_command(seq, out).count("--method sequential --radius 0.1 --n-max 80") == 1
