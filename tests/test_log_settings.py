"""What a log's provenance record tells a reader: the largest radius its n can certify
(marked in analyze/report tables and the curves), its settings, a command, class names."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from dsmooth.analysis.plots import plot_curves
from dsmooth.analysis.settings import (
    DAGGER,
    RadiusCap,
    certify_command,
    known_class_names,
    radius_cap,
    sequential_max_radius,
    with_caps,
)
from dsmooth.analysis.tables import analyze
from dsmooth.certify import stats
from dsmooth.certify.sequential import SequentialPlan, run_sequential
from dsmooth.cli import main

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def write_log(path, radii, correct, record: dict | None = None):
    rows = [
        f"{i}\t1\t{1 if c else 0}\t{r}\t{c}\t0:00:01"
        for i, (r, c) in enumerate(zip(radii, correct, strict=True))
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    if record is not None:
        (path.parent / (path.name + ".json")).write_text(json.dumps(record))
    return path


def cp_record(n=500, sigma=0.25, alpha=0.001, **more):
    return {"command": "certify", "method": "cp", "sigma": sigma, "alpha": alpha, "n": n, **more}


# ----------------------------------------------------------------------------- the cap


def test_the_cp_cap_is_all_samples_on_the_top_class():
    cap = stats.max_certified_radius(0.25, 0.001, 500)
    assert cap == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 500)), rel=1e-12)
    assert 0.55 < cap < 0.552  # the example: n = 500 caps near 0.55
    # no count of top-class samples gives more
    for k in (251, 400, 499, 500):
        p = stats.lower_confidence_bound(k, 500, 0.001)
        assert stats.radius(0.25, p) <= cap
    assert stats.max_certified_radius(0.25, 0.001, 100_000) > stats.max_certified_radius(
        0.25, 0.001, 10_000
    )


@pytest.mark.parametrize("targets", [None, (0.25, 0.5)])
def test_the_sequential_cap_bounds_what_sequential_certify_returns(targets):
    cap = sequential_max_radius(0.25, 0.001, 2000, targets)
    plan = SequentialPlan(0.25, 0.001, n_max=2000, radii=targets)
    everything = run_sequential(plan, lambda _round, m, active: np.full(active.shape, m), 1)
    from dsmooth.certify.sequential import radius_of

    assert float(radius_of(everything.p_lower[0], 0.25)) <= cap + 1e-12
    # its final look (n_max samples at half of alpha) alone reaches the cap
    final = stats.radius(0.25, (0.001 * plan.final_share) ** (1 / 2000))
    assert cap == pytest.approx(final, rel=1e-12)
    # below what fixed n = n_max at the full alpha reaches: sequential spends alpha on looks
    assert cap < stats.max_certified_radius(0.25, 0.001, 2000)


def test_radius_cap_of_a_record():
    cap = radius_cap(cp_record())
    assert isinstance(cap, RadiusCap)
    assert cap.samples == 500
    assert cap.shown == "0.551"
    assert cap.excludes(0.75)
    assert not cap.excludes(0.5)
    seq = radius_cap({**cp_record(), "method": "sequential", "n": 100, "n_max": 4000})
    assert seq.method == "sequential"
    assert seq.samples == 4000
    assert seq.radius == pytest.approx(sequential_max_radius(0.25, 0.001, 4000))
    assert radius_cap(None) is None
    assert radius_cap({"command": "predict", "sigma": 0.25, "alpha": 0.001, "n": 100}) is None
    assert radius_cap({"command": "certify", "sigma": 0.25}) is None  # no n: unknown


def test_an_n_too_small_for_alpha_certifies_nothing(tmp_path):
    assert (
        stats.max_certified_radius(0.25, 0.001, 9) < 0 < stats.max_certified_radius(0.25, 0.001, 10)
    )
    log = write_log(tmp_path / "a.tsv", [0.0, 0.0], [0, 0], cp_record(n=9))
    report = with_caps(analyze([log], radii=[0.0, 0.25]))
    assert report.caps[0].radius == 0.0
    assert report.marks == [False, True]
    assert "n = 9 certifies no radius at all" in report.footnote


# ----------------------------------------------------------------------------- tables


def test_analyze_marks_radii_above_the_recorded_cap(tmp_path, capsys):
    log = write_log(tmp_path / "a.tsv", [0.5, 0.3, 0.0], [1, 1, 0], cp_record())
    argv = ["analyze", str(log), "--radii", "0", "0.25", "0.5", "0.75"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"| l2 radius | 0 | 0.25 | 0.5 | 0.75 {DAGGER} |" in out
    assert f"{DAGGER} above 0.551, the largest radius n = 500 can certify" in out
    assert "sigma = 0.25, alpha = 0.001" in out
    assert main([*argv, "--format", "latex"]) == 0
    assert r"0.75$^\dagger$" in capsys.readouterr().out
    assert main([*argv, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["above_cap"] == [0.75]
    assert data["radius_caps"][0]["samples"] == 500


def test_no_record_no_mark(tmp_path, capsys):
    log = write_log(tmp_path / "a.tsv", [0.5, 0.3, 0.0], [1, 1, 0])
    assert main(["analyze", str(log), "--radii", "0", "0.75", "3"]) == 0
    assert DAGGER not in capsys.readouterr().out


def test_rows_with_different_caps_are_named_in_the_footnote(tmp_path):
    a = write_log(tmp_path / "a.tsv", [0.5, 0.3], [1, 1], cp_record(n=500))
    b = write_log(tmp_path / "b.tsv", [0.9, 0.3], [1, 1], cp_record(n=100_000))
    report = with_caps(analyze([a, b], radii=[0.5, 0.75, 1.0]))
    assert report.marks == [False, True, True]  # 1.0 is beyond both (0.551 and 0.953)
    note = report.footnote
    assert "a.tsv 0.551 (n = 500" in note
    assert "b.tsv 0.952 (n = 100000" in note
    head, _ = report.main_table(0)
    assert head == ["l2 radius", "0.5", f"0.75 {DAGGER}", f"1 {DAGGER}"]
    # an envelope row is capped by its best log; a log without a record leaves it unknown
    c = write_log(tmp_path / "c.tsv", [0.9, 0.3], [1, 1])
    env = with_caps(analyze(groups=[("S", [a, b]), ("T", [a, c])], radii=[0.75], envelope=True))
    assert [None if cap is None else cap.samples for cap in env.caps] == [100_000, None]


# ----------------------------------------------------------------------------- curves


def test_curves_in_percent_at_the_table_radii_with_the_cap_shaded(tmp_path):
    log = write_log(tmp_path / "a.tsv", [0.5, 0.3, 0.0, 0.1], [1, 1, 0, 1], cp_record())
    report = with_caps(analyze([log], radii=[0, 0.25, 0.5, 0.75]))
    fig = plot_curves(
        report.series, max_radius=0.75, radii=report.radii, cap=0.551, cap_label="beyond"
    )
    (ax,) = fig.axes
    assert ax.get_ylabel() == "certified accuracy (%)"
    ticks = [ax.yaxis.get_major_formatter()(v) for v in (0.0, 0.5, 1.0)]
    assert ticks == ["0", "50", "100"]  # the table's units
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5", "0.75"]
    (line,) = ax.get_lines()
    x, y = line.get_data()
    at = line.get_markevery()
    assert list(x[at]) == [0.0, 0.25, 0.5, 0.75]
    cells = [float(c.certified) for c in report.certified_rows()[0][1]]
    assert list(y[at]) == cells  # the markers are the table's cells
    assert "beyond" in [t.get_text() for t in ax.get_legend().get_texts()]
    (span,) = ax.patches
    assert span.get_x() == pytest.approx(0.551)
    # without --max-radius the x-axis reaches the table's last radius
    assert plot_curves(report.series, radii=[0, 1.5]).axes[0].get_xlim() == (0.0, 1.5)


# ----------------------------------------------------------------------------- report


@pytest.fixture
def recorded_log(tmp_path, tiny_classifier_file, tiny_data_file):
    out = tmp_path / "run.tsv"
    argv = ["certify", "--classifier", str(tiny_classifier_file), "--data", str(tiny_data_file)]
    argv += ["--sigma", "0.25", "--n0", "10", "--n", "50", "--max", "3", "--out", str(out)]
    assert main([*argv, "--no-progress", "--class-names", "a,b,c"]) == 0
    return out


def test_report_shows_the_recorded_settings_command_and_classes(tmp_path, recorded_log):
    page = tmp_path / "r.html"
    assert (
        main(["report", str(recorded_log), "--radii", "0", "0.25", "0.5", "--out", str(page)]) == 0
    )
    text = page.read_text()
    assert "<h2>Certification settings</h2>" in text
    for cell in ("0.25", "0.001", "10", "50", "CERTIFY (Clopper-Pearson)", "fp32 (torch, cpu)"):
        assert f"<td>{cell}</td>" in text
    cap = f"{math.floor(stats.max_certified_radius(0.25, 0.001, 50) * 1000) / 1000:.3f}"
    assert f"<td>{cap}</td>" in text  # the largest radius column
    assert f"<th>0.5 {DAGGER}</th>" in text
    assert "<th>0.25</th>" in text
    assert f"above {cap}, the largest radius n = 50 can certify" in text
    command = text.split("<pre>")[1].split("</pre>")[0]
    assert command.startswith("dsmooth certify --classifier ")
    assert "--sigma 0.25 --n0 10 --n 50 --alpha 0.001 --seed 0" in command
    assert "--class-names a,b,c" in command
    assert f"--out {recorded_log}" in command
    assert "<td>0 a, 1 b, 2 c</td>" in text  # the classes row of the settings
    assert "smoothed acc. %" in text
    assert "clean %" not in text


def test_markdown_report_settings(tmp_path, recorded_log):
    page = tmp_path / "r.md"
    assert main(["report", str(recorded_log), "--radii", "0", "0.5", "--out", str(page)]) == 0
    text = page.read_text()
    assert "## Certification settings" in text
    assert "```\ndsmooth certify " in text
    assert f"| l2 radius | 0 | 0.5 {DAGGER} |" in text
    assert text.index(f"{DAGGER} above") < text.index("## Per log")


def test_known_class_names():
    cifar = known_class_names({"class_names": "cifar10", "num_classes": 10})
    assert cifar[:2] == ["airplane", "automobile"]
    assert len(cifar) == 10
    assert known_class_names({"class_names": "x,y"}) == ["x", "y"]
    by_data = {"num_classes": 10, "data": {"spec": "/data/cifar10_test_every20.npz"}}
    assert known_class_names(by_data) == cifar
    assert known_class_names({**by_data, "num_classes": 3}) is None
    assert known_class_names({"num_classes": 100, "data": {"spec": "cifar100.npz"}}) is None
    assert known_class_names(specs=["cifar10-resnet20-akamaster"]) == cifar
    assert known_class_names(specs=["cifar100.npz", None]) is None
    assert known_class_names() is None


def test_certify_command_of_a_sequential_record():
    record = {
        **cp_record(n=100),
        "method": "sequential",
        "n_max": 4000,
        "radius": [0.25, 0.5],
        "models": {"classifier": {"spec": "my clf.pt"}},
        "data": {"spec": "d.npz"},
        "seed": 0,
    }
    command = certify_command(record, "out.tsv")
    assert "--classifier 'my clf.pt' --data d.npz" in command
    assert command.endswith("--method sequential --radius 0.25 0.5 --n-max 4000 --out out.tsv")


def test_a_predict_logs_command_has_no_method_flag():
    record = {"command": "predict", "method": "predict", "sigma": 0.25, "n": 100,
              "alpha": 0.001, "seed": 0}  # fmt: skip
    command = certify_command(record, "p.tsv")
    assert command.startswith("dsmooth predict ")
    assert "--method" not in command
    assert "--n 100" in command
