"""`dsmooth analyze` on the command line, and its accuracy curves (dsmooth.analysis.plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from dsmooth.analysis.plots import default_max_radius, plot_curves
from dsmooth.analysis.tables import analyze
from dsmooth.cli import main
from dsmooth.errors import UserError

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def make_log(path, radii, correct):
    rows = [
        f"{i}\t1\t{1 if c else 0}\t{r if c else 0.0}\t{int(c)}\t0:00:0{i % 10}.5"
        for i, (r, c) in enumerate(zip(radii, correct, strict=True))
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "runs").mkdir()
    a = make_log(tmp_path / "runs" / "sigma_0.25.tsv", [0.1, 0.3, 0.6, 0.2], [1, 1, 1, 0])
    b = make_log(tmp_path / "runs" / "sigma_0.50.tsv", [0.9, 1.2, 0.4, 0.0], [1, 1, 0, 0])
    c = make_log(tmp_path / "runs" / "other.tsv", [0.05, 0.05, 0.05, 0.05], [1, 0, 1, 0])
    return a, b, c


def test_plot_has_one_line_per_series_and_the_right_axes(tmp_path, logs):
    a, b, c = logs
    report = analyze(groups=[("S", [a, b]), ("O", [c])], radii=[0.0], envelope=True)
    out = tmp_path / "curves.png"
    fig = plot_curves(report.series, out, title="Test curves")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["S", "O"]
    assert ax.get_xlim() == (0.0, 1.25)  # largest certified radius 1.2, rounded up to 0.25
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_title() == "Test curves"
    assert "radius" in ax.get_xlabel()
    assert "certified accuracy" in ax.get_ylabel()
    x, y = lines[0].get_data()
    # envelope of S: at r=0.35 log a has 1/4 (0.6), log b has 2/4 (0.9, 1.2) -> 0.5
    assert y[np.searchsorted(x, 0.35)] == 0.5
    assert y[0] == 0.75
    assert y[-1] == 0.0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_formats_by_extension(tmp_path, logs):
    report = analyze(list(logs), radii=[0.0])
    fig = plot_curves(report.series, tmp_path / "c.svg", max_radius=2.0)
    assert len(fig.axes[0].get_lines()) == 3
    assert fig.axes[0].get_xlim() == (0.0, 2.0)
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]
    plot_curves(report.series, tmp_path / "c.pdf")
    assert (tmp_path / "c.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(UserError, match="extension"):
        plot_curves(report.series, tmp_path / "c.gif")
    with pytest.raises(UserError, match="does not exist"):
        plot_curves(report.series, tmp_path / "nope" / "c.png")
    with pytest.raises(UserError, match="positive"):
        plot_curves(report.series, max_radius=0.0)
    assert not list(tmp_path.glob(".*tmp"))


def test_default_max_radius(logs):
    report = analyze([logs[2]], radii=[0.0])
    assert default_max_radius(report.series) == 0.25


def test_cli_table_plot_and_json(tmp_path, logs, capsys):
    a, b, _c = logs
    plot = tmp_path / "curves.png"
    code = main(["analyze", str(a), str(b), "--radii", "0", "0.5", "--plot", str(plot)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| sigma_0.25.tsv | 75 | 25 |" in out
    assert "| sigma_0.50.tsv | 50 | 50 |" in out
    # per-log statistics: images, smoothed acc. %, ACR, abstain %, s/image
    assert "| sigma_0.25.tsv | 4 | 75 | 0.250 | 0 | 2.000 |" in out
    assert "| sigma_0.50.tsv | 4 | 50 | 0.525 | 0 | 2.000 |" in out
    assert plot.stat().st_size > 0

    glob = str(tmp_path / "runs" / "sigma_*.tsv")
    out_file = tmp_path / "table.json"
    argv = ["analyze", "--envelope", "--label", f"S={glob}", "--radii", "0:1:0.5"]
    assert main([*argv, "--format", "json", "--out", str(out_file)]) == 0
    data = json.loads(out_file.read_text())
    assert data["radii"] == [0.0, 0.5, 1.0]
    cells = data["series"][0]["cells"]
    assert [c["certified_accuracy"] for c in cells] == [0.75, 0.5, 0.25]
    assert [c["clean_accuracy"] for c in cells] == [0.75, 0.5, 0.5]
    assert data["logs"][0]["seconds_per_image"] == pytest.approx(2.0)


def test_cli_errors_exit_2_with_one_line(tmp_path, logs, capsys):
    a, _b, _c = logs
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n")
    cases = [
        ([str(bad)], "lacks column(s) time"),
        (["--label", "X"], "NAME=GLOB"),
        (["--label", f"X={tmp_path}/none*"], "no log matches"),
        ([str(tmp_path / "missing.tsv")], "not found"),
        ([str(a), "--radii", "a"], "neither a number"),
        ([str(a), "--plot", str(tmp_path / "x.jpg")], "extension"),
        ([str(a), "--decimals", "9"], "--decimals"),
        ([], "at least one log"),
    ]
    for argv, message in cases:
        assert main(["analyze", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err
        assert err.count("\n") == 1
        assert "Traceback" not in err


def test_cli_warnings_go_to_stderr_and_strict_turns_them_into_errors(tmp_path, logs, capsys):
    a = logs[0]
    dup = tmp_path / "dup.tsv"
    dup.write_text(a.read_text() + "3\t1\t0\t0.0\t0\t1\n")
    assert main(["analyze", str(dup), "--radii", "0"]) == 0
    captured = capsys.readouterr()
    assert "dsmooth: warning:" in captured.err
    assert "duplicate" in captured.err
    assert "| dup.tsv | 4 | 75 |" in captured.out
    out = tmp_path / "table.md"
    assert main(["analyze", str(dup), "--strict", "--out", str(out)]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert not out.exists()
