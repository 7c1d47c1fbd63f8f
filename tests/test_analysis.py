"""Reading, checking and summarising result logs (dsmooth.analysis.tables), on hand-made logs."""

from __future__ import annotations

import csv
import io
import json
import re
from fractions import Fraction

import numpy as np
import pytest

from dsmooth.analysis.tables import (
    LogWarning,
    Series,
    analyze,
    envelope_cell,
    parse_radii,
    parse_seconds,
    percent,
    read_log,
)
from dsmooth.errors import UserError

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def write(tmp_path, name: str, rows: list[str], header: str = HEADER, newline: bool = True):
    path = tmp_path / name
    text = "\n".join([header, *rows]) + ("\n" if newline else "")
    path.write_text(text)
    return path


# idx label predict radius correct time: 4 images; certified radii 0.5 and 0.25 when correct
ROWS = [
    "0\t3\t3\t0.5\t1\t0:00:01.5",
    "1\t2\t2\t0.25\t1\t0:00:02.5",
    "2\t1\t0\t0.7\t0\t0:00:01",
    "3\t4\t-1\t0.0\t0\t0:00:03",
]


def test_certified_accuracy_counts_correct_rows_at_or_above_the_radius(tmp_path):
    log = read_log(write(tmp_path, "a.tsv", ROWS))
    assert log.kind == "certify"
    assert len(log) == 4
    assert log.certified_accuracy(0.0) == 0.5
    assert log.certified_accuracy(0.25) == 0.5  # radius == r counts
    assert log.certified_accuracy(0.26) == 0.25
    assert log.certified_accuracy(0.5) == 0.25
    assert log.certified_accuracy(0.51) == 0.0  # the wrong row with radius 0.7 never counts
    assert log.clean_accuracy == 0.5
    assert log.abstain_rate == 0.25
    assert log.acr == pytest.approx((0.5 + 0.25) / 4)
    assert log.seconds_per_image == pytest.approx(2.0)
    np.testing.assert_allclose(log.curve(np.array([0.0, 0.3, 0.6])), [0.5, 0.25, 0.0])


def test_time_as_timedelta_or_plain_seconds():
    assert parse_seconds("0:00:09.862955") == pytest.approx(9.862955)
    assert parse_seconds("1:02:03") == 3723
    assert parse_seconds("1 day, 0:00:01.5") == pytest.approx(86401.5)
    assert parse_seconds("2 days, 1:00:00") == 2 * 86400 + 3600
    assert parse_seconds("12.25") == 12.25
    for bad in ("soon", "1:2", "-3", "nan", ""):
        with pytest.raises(ValueError, match=f"^{re.escape(bad)}$"):
            parse_seconds(bad)


def test_plain_seconds_column(tmp_path):
    rows = [
        r.rsplit("\t", 1)[0] + "\t" + t for r, t in zip(ROWS, ["1.5", "2.5", "1", "3"], strict=True)
    ]
    assert read_log(write(tmp_path, "s.tsv", rows)).seconds_per_image == pytest.approx(2.0)


def test_mixed_time_formats_fall_back_to_careful_parsing(tmp_path):
    rows = [
        *ROWS[:2],
        ROWS[2].replace("0:00:01", "1"),
        ROWS[3].replace("0:00:03", "1 day, 0:00:03"),
    ]
    log = read_log(write(tmp_path, "m.tsv", rows))
    np.testing.assert_allclose(log.seconds, [1.5, 2.5, 1.0, 86403.0])


def test_extra_columns_are_kept_and_n_used_is_averaged(tmp_path):
    header = HEADER + "\tn_used\tnote"
    rows = [r + f"\t{n}\tx{n}" for r, n in zip(ROWS, [100, 300, 1000, 200], strict=True)]
    path = write(tmp_path, "n.tsv", rows, header)
    log = read_log(path)
    assert log.extra_mean("n_used") == 400.0
    assert list(log.extra["note"]) == ["x100", "x300", "x1000", "x200"]
    report = analyze([path], radii=[0.0, 0.5])
    assert report.stats_rows()[0]["mean_n_used"] == 400.0
    assert "mean n_used" in report.markdown()
    assert "400.0" in report.markdown()
    # without the column the statistics do not mention it
    plain = analyze([write(tmp_path, "p.tsv", ROWS)], radii=[0.0])
    assert "n_used" not in plain.markdown()


def test_windows_line_endings_and_a_bom_are_fine(tmp_path):
    path = tmp_path / "crlf.tsv"
    path.write_bytes(("\ufeff" + "\r\n".join([HEADER, *ROWS]) + "\r\n").encode("utf-8"))
    log = read_log(path)
    assert len(log) == 4
    assert log.certified_accuracy(0.25) == 0.5


def test_columns_may_come_in_any_order(tmp_path):
    header = "time\tcorrect\tradius\tpredict\tlabel\tidx"
    rows = ["\t".join(reversed(r.split("\t"))) for r in ROWS]
    log = read_log(write(tmp_path, "r.tsv", rows, header))
    assert log.certified_accuracy(0.25) == 0.5
    assert list(log.idx) == [0, 1, 2, 3]


def test_predict_logs(tmp_path):
    header = "idx\tlabel\tpredict\tcorrect\ttime"
    rows = ["0\t1\t1\t1\t0:00:01", "1\t0\t-1\t0\t0:00:01", "2\t2\t2\t1\t0:00:01"]
    path = write(tmp_path, "p.tsv", rows, header)
    log = read_log(path)
    assert log.kind == "predict"
    assert log.radius is None
    assert log.clean_accuracy == pytest.approx(2 / 3)
    assert log.abstain_rate == pytest.approx(1 / 3)
    with pytest.warns(LogWarning, match="no certified radii"):
        report = analyze([path], radii=[0.0, 0.5])
    ((_, cells),) = report.certified_rows()
    assert cells[0].certified == Fraction(2, 3)
    assert cells[1].certified is None
    assert "| 67 | - |" in report.markdown()


# ----------------------------------------------------------------------------- bad logs


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("idx\tlabel\tpredict\tcorrect", ROWS, "lacks column.*time"),
        ("idx\tlabel\tradius\tcorrect\ttime", ROWS, "lacks column.*predict"),
        ("foo\tbar", ["1\t2"], "lacks column"),
        (HEADER + "\tidx", [r + "\t9" for r in ROWS], "repeats a column"),
        (HEADER, [*ROWS[:1], "1\t2\t2\tbig\t1\t0:00:01"], r"line 3: radius is 'big'"),
        (HEADER, ["0\t3.0\t3\t0.5\t1\t1"], "line 2: label is '3.0', not an integer"),
        (HEADER, ["0\t3\t3\tnan\t1\t1"], "radius is 'nan'"),
        (HEADER, ["0\t3\t3\t-0.5\t1\t1"], "radius is '-0.5'"),
        (HEADER, ["0\t3\t3\t0.5\t1\tyesterday"], "time is 'yesterday'"),
        (HEADER, ["0\t3\t3\t0.5\t2\t1"], "correct is 2"),
        (HEADER, ["0\t3\t4\t0.5\t1\t1"], "correct is 1 but predict 4 vs label 3"),
        (HEADER, ["0\t-2\t-1\t0\t0\t1"], "label is -2"),
        (HEADER, ["0\t3\t-5\t0\t0\t1"], "predict is -5"),
        (HEADER, ["0\t3\t3\t0.5\t1", *ROWS[1:]], r"line 2 is not a complete row \(5 fields"),
    ],
)
def test_malformed_logs_raise_a_user_error(tmp_path, header, rows, message):
    with pytest.raises(UserError, match=message):
        read_log(write(tmp_path, "bad.tsv", rows, header))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_log(tmp_path / "nope.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(UserError, match="empty"):
        read_log(tmp_path / "empty.tsv")
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00idx")
    with pytest.raises(UserError, match="UTF-8"):
        read_log(tmp_path / "bin.tsv")


def test_an_incomplete_last_line_is_ignored_with_a_warning(tmp_path):
    path = write(tmp_path, "cut.tsv", [*ROWS, "4\t1\t1\t0.3"], newline=False)
    with pytest.warns(LogWarning, match="incomplete last line"):
        log = read_log(path)
    assert len(log) == 4


def test_duplicate_indices_warn_and_keep_the_first_row(tmp_path):
    rows = [*ROWS, "1\t2\t-1\t0.0\t0\t0:00:01", "1\t2\t2\t0.9\t1\t0:00:01"]
    with pytest.warns(LogWarning, match=r"2 duplicate row\(s\) for 1 image index"):
        log = read_log(write(tmp_path, "dup.tsv", rows))
    assert len(log) == 4
    assert log.certified_accuracy(0.25) == 0.5  # first row of image 1 (radius 0.25) kept
    assert log.certified_accuracy(0.9) == 0.0


def test_duplicate_indices_with_different_labels_are_an_error(tmp_path):
    rows = [*ROWS, "1\t7\t7\t0.3\t1\t0:00:01"]
    with pytest.raises(UserError, match="index 1 appears with different labels"):
        read_log(write(tmp_path, "clash.tsv", rows))


def test_empty_logs_are_left_out_with_a_warning(tmp_path):
    full = write(tmp_path, "full.tsv", ROWS)
    empty = write(tmp_path, "empty.tsv", [])
    with pytest.warns(LogWarning, match="holds no rows"):
        report = analyze([full, empty], radii=[0.0], envelope=True)
    assert [log.path for log in report.logs] == [full]
    with pytest.warns(LogWarning), pytest.raises(UserError, match="every log is empty"):
        analyze([empty], radii=[0.0])
    with pytest.warns(LogWarning) as record:
        analyze([full], groups=[("E", [empty])], radii=[0.0])
    assert "group 'E' has only empty logs" in str(record[-1].message)


def test_different_image_sets_warn(tmp_path):
    a = write(tmp_path, "a.tsv", ROWS)
    b = write(tmp_path, "b.tsv", ROWS[:3])
    with pytest.warns(LogWarning, match="different image sets") as record:
        analyze([a, b], radii=[0.0])
    assert "1 missing" in str(record[0].message)


def test_warnings_are_collected_in_the_report(tmp_path):
    a = write(tmp_path, "a.tsv", ROWS)
    b = write(tmp_path, "b.tsv", ROWS[:3])
    seen = []
    report = analyze([a, b], radii=[0.0], warn=seen.append)
    assert seen == report.warnings
    assert len(seen) == 1


# ----------------------------------------------------------------------------- envelope


def _log_with(tmp_path, name, n, n_clean, n_certified, radius=1.0):
    """n images: n_clean correct, n_certified of them at `radius`, the others at 0.1."""
    rows = []
    for i in range(n):
        ok = i < n_clean
        r = radius if i < n_certified else 0.1
        rows.append(f"{i}\t1\t{1 if ok else 0}\t{r if ok else 0.0}\t{int(ok)}\t1")
    return read_log(write(tmp_path, name, rows), name=name)


def test_envelope_takes_the_best_and_breaks_ties_by_clean_accuracy(tmp_path):
    a = _log_with(tmp_path, "a", 10, 6, 3)
    b = _log_with(tmp_path, "b", 10, 9, 3)  # same certified at 1.0, higher clean
    c = _log_with(tmp_path, "c", 10, 5, 4)
    cell = envelope_cell([a, b, c], 1.0)
    assert cell.log is c
    assert cell.certified == Fraction(4, 10)
    assert cell.clean == Fraction(5, 10)
    cell = envelope_cell([a, b], 1.0)
    assert cell.log is b
    assert cell.clean == Fraction(9, 10)
    cell = envelope_cell([b, a], 0.5)
    assert cell.log is b
    # a full tie keeps the first log given
    twin = _log_with(tmp_path, "twin", 10, 9, 3)
    assert envelope_cell([twin, b], 1.0).log is twin
    assert envelope_cell([b, twin], 1.0).log is b
    # the curve of an envelope is the pointwise maximum
    s = Series("env", [a, b, c], envelope=True)
    np.testing.assert_allclose(s.curve(np.array([0.0, 0.5, 1.0, 1.5])), [0.9, 0.4, 0.4, 0.0])


def test_envelope_rows_per_group(tmp_path):
    paths = {}
    for name, clean, cert in [("s1", 6, 3), ("s2", 9, 2), ("t1", 4, 4)]:
        _log_with(tmp_path, name, 10, clean, cert)
        paths[name] = tmp_path / name
    report = analyze(
        groups=[("S", [paths["s1"], paths["s2"]]), ("T", [paths["t1"]])],
        radii=[0.5, 1.0],
        envelope=True,
    )
    rows = {s.name: cells for s, cells in report.certified_rows()}
    assert [c.certified for c in rows["S"]] == [Fraction(3, 10), Fraction(3, 10)]
    assert rows["S"][0].log.name == "s1"
    assert "| S | (60)30 | (60)30 |" in report.markdown()
    assert "| T | (40)40 | (40)40 |" in report.markdown()
    # without --envelope each log is a row, named after its group
    flat = analyze(groups=[("S", [paths["s1"], paths["s2"]]), ("T", [paths["t1"]])], radii=[1.0])
    assert [s.name for s in flat.series] == ["S: s1", "S: s2", "T"]


# ----------------------------------------------------------------------------- formatting


def test_percent_rounds_like_the_paper():
    assert percent(Fraction(56, 100)) == "56"
    assert percent(0.568) == "57"  # rounded, not truncated
    assert percent(Fraction(57, 200)) == "28"  # 0.285 is 0.28499.. as a float, as in the paper
    assert percent(Fraction(1, 3), decimals=1) == "33.3"
    assert percent(1.0) == "100"
    assert percent(0.0) == "0"
    assert percent(None) == "-"
    assert percent(float("nan")) == "-"


def test_parse_radii():
    assert parse_radii(["0", "0.25"]) == [0.0, 0.25]
    assert parse_radii(["0:1:0.25"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_radii(["0.1:0.3:0.1"]) == [0.1, 0.2, 0.3]  # exact, no 0.30000000000000004
    for bad in (["x"], ["0:1"], ["1:0:0.5"], ["0:1:0"], ["-1"], ["0:1e9:0.001"]):
        with pytest.raises(UserError):
            parse_radii(bad)


def test_markdown_latex_csv_json_agree(tmp_path):
    paths = [
        write(tmp_path, f"sigma_{s}", ROWS if s == "0.25" else ROWS[:2] + ROWS[3:])
        for s in ("0.25", "0.50")
    ]
    with pytest.warns(LogWarning):  # the logs cover different images
        report = analyze(paths, radii=[0.25, 0.5], envelope=True)
    md = report.render("markdown")
    assert "| envelope | (67)67 | (67)33 |" in md
    tex = report.render("latex")
    assert r"$^{(67)}$67 & $^{(67)}$33 \\" in tex
    assert r"\begin{tabular}" in tex
    assert "sigma\\_0.25" in tex  # underscores escaped
    rows = list(csv.DictReader(io.StringIO(report.render("csv"))))
    assert [
        (r["radius"], float(r["certified_accuracy"]), r["log"].endswith("0.50")) for r in rows
    ] == [
        ("0.25", 2 / 3, True),
        ("0.5", 1 / 3, True),
    ]
    data = json.loads(report.render("json"))
    cells = data["series"][0]["cells"]
    assert cells[0]["certified_accuracy"] == pytest.approx(2 / 3)
    assert cells[0]["clean_accuracy"] == pytest.approx(2 / 3)
    assert cells[1]["log"].endswith("sigma_0.50")
    assert data["logs"][0]["images"] == 4
    assert data["logs"][1]["images"] == 3
    assert len(data["warnings"]) == 1
    with pytest.raises(UserError, match="unknown format"):
        report.render("html")
