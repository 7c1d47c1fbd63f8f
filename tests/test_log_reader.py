"""One reader for result logs (dsmooth.logs.result_log.read_rows): a resumed run and `dsmooth
analyze` accept the same rows and refuse the same lines with the same sentence.

The only thing either tolerates is a torn last line (no newline after it), the trace of a
run killed mid-write: resuming drops it and writes that image again, analysis ignores it
with a warning. Everything else that is not a row names the file and the line.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import certify_args

from dsmooth.analysis.tables import LogWarning, read_log
from dsmooth.cli import main
from dsmooth.errors import UserError
from dsmooth.logs.result_log import (
    CERTIFY_COLUMNS,
    SELECTION_ONLY,
    SEQUENTIAL_CERTIFY_COLUMNS,
    ResultLog,
    read_rows,
)

GOOD = ["0\t1\t1\t0.5\t1\t0:00:01.5", "1\t2\t2\t0.25\t1\t0:00:02", "2\t0\t-1\t0.0\t0\t0:00:01"]
SEQ = (*SEQUENTIAL_CERTIFY_COLUMNS, SELECTION_ONLY, "queries", "file")
SEQ_ROW = "3\t1\t1\t0.5\t1\t0:00:01\t1100\t0\t1100\tcat/3.png"

# (columns, rows after the header, the line refused, what the sentence says)
MALFORMED = {
    "short complete row": (CERTIFY_COLUMNS, ["1\t8\t6"], 2, r"not a complete row \(3 fields"),
    "short row mid-log": (CERTIFY_COLUMNS, [*GOOD[:1], "1\t8\t6", *GOOD[1:]], 3, "3 fields"),
    "extra field": (CERTIFY_COLUMNS, [GOOD[0] + "\t7", *GOOD[1:]], 2, r"\(7 fields"),
    "one word": (CERTIFY_COLUMNS, [*GOOD, "oops"], 5, "not a complete row"),
    "idx not a number": (CERTIFY_COLUMNS, ["x\t1\t1\t0.5\t1\t1", *GOOD], 2, "idx is 'x'"),
    "idx with a sign": (CERTIFY_COLUMNS, [*GOOD, "+3\t1\t1\t0.5\t1\t1"], 5, "idx is '[+]3'"),
    "negative idx": (CERTIFY_COLUMNS, ["-1\t1\t1\t0.5\t1\t1"], 2, "idx is -1"),
    "label not an integer": (CERTIFY_COLUMNS, ["0\t1.0\t1\t0.5\t1\t1"], 2, "label is '1.0'"),
    "predict below -1": (CERTIFY_COLUMNS, ["0\t1\t-2\t0\t0\t1"], 2, "predict is -2"),
    "radius not a number": (CERTIFY_COLUMNS, [*GOOD[:2], "2\t0\t0\tbig\t1\t1"], 4, "radius"),
    "radius infinite": (CERTIFY_COLUMNS, ["0\t1\t1\tinf\t1\t1"], 2, "radius is 'inf'"),
    "time unreadable": (CERTIFY_COLUMNS, ["0\t1\t1\t0.5\t1\tsoon"], 2, "time is 'soon'"),
    "correct not 0/1": (CERTIFY_COLUMNS, ["0\t1\t1\t0.5\t2\t1"], 2, "correct is 2"),
    "correct contradicts": (CERTIFY_COLUMNS, [*GOOD, "3\t1\t0\t0.5\t1\t1"], 5, "correct is 1"),
    "one image, two labels": (CERTIFY_COLUMNS, [*GOOD, "1\t0\t0\t0.5\t1\t1"], 5, "index 1"),
    "n_used fractional": (SEQ, [SEQ_ROW.replace("\t1100\t0", "\t1.5e3\t0")], 2, "n_used is"),
    "selection_only 2": (SEQ, [SEQ_ROW.replace("\t1100\t0\t", "\t1100\t2\t")], 2, "selection_only"),
    "queries negative": (SEQ, [SEQ_ROW.replace("\t0\t1100\t", "\t0\t-5\t")], 2, "queries is -5"),
    "bad line before a torn one": (CERTIFY_COLUMNS, ["1\t8\t6"], 2, "3 fields"),
}
#: cases whose file ends with a torn line too (which excuses nothing above it)
TORN_AFTER = {"bad line before a torn one": "2\t0\t0\t0.5"}


def write_log(path, columns, rows, torn: str = "") -> bytes:
    data = ("\t".join(columns) + "\n" + "".join(r + "\n" for r in rows) + torn).encode()
    path.write_bytes(data)
    return data


def cases():
    return pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))


def write_case(path, case: str) -> bytes:
    columns, rows, _, _ = MALFORMED[case]
    return write_log(path, columns, rows, TORN_AFTER.get(case, ""))


@cases()
def test_resume_and_analysis_refuse_the_same_line_with_the_same_sentence(tmp_path, case):
    columns, _, line, says = MALFORMED[case]
    path = tmp_path / "log.tsv"
    data = write_case(path, case)
    with pytest.raises(UserError) as resumed:
        ResultLog(path, columns).open()
    assert path.read_bytes() == data  # refused before anything was changed
    with pytest.raises(UserError) as analyzed:
        read_log(path)
    message = str(resumed.value)
    assert message == str(analyzed.value)
    assert re.match(rf"{re.escape(str(path))}, line {line}\D", message), message
    assert re.search(says, message), message
    assert "\n" not in message


@cases()
def test_analyze_on_a_malformed_log_exits_2_with_one_line(tmp_path, case, capsys):
    path = tmp_path / "log.tsv"
    write_case(path, case)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("dsmooth: error: ")
    assert "Traceback" not in err
    assert f"{path}, line {MALFORMED[case][2]}" in err


def test_analyze_in_a_real_process_prints_no_traceback(tmp_path):
    path = tmp_path / "log.tsv"
    write_log(path, CERTIFY_COLUMNS, ["1\t8\t6"])
    proc = subprocess.run(
        [sys.executable, "-m", "dsmooth.cli", "analyze", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"dsmooth: error: {path}, line 2 is not a complete row (3 fields, the header has 6); "
        "fix or remove that line.\n"
    )


# ----------------------------------------------------------------------------- torn lines

TORN = {
    "cut in a field": "3\t1\t1\t0.3",
    "cut in the last field": "3\t1\t1\t0.3\t1\t0:00:0",  # all fields there, still torn
    "cut after a tab": "3\t1\t1\t0.3\t1\t",
    "carriage return only": "\r",
}


@pytest.mark.parametrize("torn", list(TORN.values()), ids=list(TORN))
def test_a_torn_last_line_is_dropped_by_resume_and_ignored_by_analysis(tmp_path, torn):
    path = tmp_path / "log.tsv"
    write_log(path, CERTIFY_COLUMNS, GOOD, torn)
    if torn.strip():
        with pytest.warns(LogWarning, match="incomplete last line"):
            log = read_log(path)
    else:
        log = read_log(path)
    assert log.idx.tolist() == [0, 1, 2]
    with ResultLog(path, CERTIFY_COLUMNS) as resumed:
        assert resumed.done == {0, 1, 2}
        resumed.append({"idx": 3, "label": 1, "predict": 1, "radius": 0.3, "correct": 1,
                        "time": "0:00:01"})  # fmt: skip
    assert path.read_text().splitlines()[1:] == [*GOOD, "3\t1\t1\t0.3\t1\t0:00:01"]


def test_a_torn_line_cut_inside_a_multibyte_character(tmp_path):
    path = tmp_path / "log.tsv"
    row = "3\t1\t1\t0.5\t1\t0:00:01\t1100\t0\t1100\tchats/é.png"
    data = write_log(path, SEQ, [SEQ_ROW]) + row.encode()[:-5]  # cut inside the é
    path.write_bytes(data)
    with pytest.warns(LogWarning, match="incomplete last line"):
        assert read_log(path).idx.tolist() == [3]
    with ResultLog(path, SEQ) as resumed:
        assert resumed.done == {3}
    assert path.read_bytes() == data[: data.rindex(b"\n") + 1]


def test_a_header_without_its_newline_resumes_below_it(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("\t".join(CERTIFY_COLUMNS))
    assert len(read_log(path)) == 0
    with ResultLog(path, CERTIFY_COLUMNS) as log:
        assert log.done == set()
        log.append({"idx": 0, "label": 1, "predict": 1, "radius": 0.5, "correct": 1,
                    "time": "0:00:01"})  # fmt: skip
    assert read_log(path).idx.tolist() == [0]


def test_read_rows_types_the_known_columns(tmp_path):
    path = tmp_path / "log.tsv"
    write_log(path, SEQ, [SEQ_ROW, SEQ_ROW.replace("3\t", "4\t", 1).replace("cat/3.png", "7")])
    table = read_rows(path, SEQ)
    assert table.kind == "certify"
    assert table.lines.tolist() == [2, 3]
    assert table.torn is None
    assert table.columns["n_used"].dtype.kind == "i"
    assert table.columns["queries"].tolist() == [1100] * 2
    assert table.columns["file"].tolist() == ["cat/3.png", "7"]  # names stay names
    assert table.complete == path.stat().st_size


def test_resume_refuses_a_log_with_other_columns(tmp_path):
    path = tmp_path / "log.tsv"
    data = write_log(path, CERTIFY_COLUMNS, GOOD)
    with pytest.raises(UserError, match="exists with columns"):
        ResultLog(path, SEQUENTIAL_CERTIFY_COLUMNS).open()
    assert path.read_bytes() == data


# ----------------------------------------------------------------------------- certify


@pytest.mark.parametrize(
    "case", ["short complete row", "idx not a number", "bad line before a torn one"]
)
def test_certify_refuses_to_resume_a_malformed_log_and_leaves_it_alone(
    case, tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    _, _, line, says = MALFORMED[case]
    out = tmp_path / "out.tsv"
    data = write_case(out, case)
    argv = certify_args(tiny_data_file, tiny_classifier_file, out, n0="10", n="20", batch=None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [e for e in err.splitlines() if e.startswith("dsmooth: error:")]
    assert len(errors) == 1
    assert f"{out}, line {line}" in errors[0]
    assert re.search(says, errors[0])
    assert out.read_bytes() == data
    assert not list(tmp_path.glob("out.tsv.*"))  # no provenance record, no temp file


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_log_replaced_under_a_running_writer_stops_it_without_losing_rows(tmp_path, how):
    """A git merge or checkout rewrites a tracked log by replacing its file; a writer that
    kept appending would put every later row into the unlinked old file."""
    path = tmp_path / "log.tsv"
    columns = ("idx", "label", "predict", "radius", "correct", "time")
    row = {"idx": 0, "label": 1, "predict": 1, "radius": 0.5, "correct": 1, "time": "0:00:01"}
    with ResultLog(path, columns) as log:
        log.append(row)
        kept = path.read_text()
        if how == "replaced":
            (tmp_path / "new.tsv").write_text(kept)
            (tmp_path / "new.tsv").replace(path)
        else:
            path.unlink()
        with pytest.raises(UserError, match=f"was {how} by another program"):
            log.append({**row, "idx": 1})
    if how == "replaced":
        assert path.read_text() == kept  # nothing lost, nothing half-written
        with ResultLog(path, columns) as log:  # and the same command resumes
            assert log.done == {0}
            log.append({**row, "idx": 1})
        assert len(path.read_text().splitlines()) == 3
