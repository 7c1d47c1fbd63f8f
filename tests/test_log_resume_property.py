"""Property tests of the result log: cut a log anywhere (a killed run) or add a garbage
line, then resume: a resumed log never holds a duplicate, a missing index or a corrupt
row, and a log it cannot trust is refused before anything is changed, with the sentence
`dsmooth analyze` gives for it."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsmooth.analysis.tables import read_log
from dsmooth.errors import UserError
from dsmooth.logs.result_log import CERTIFY_COLUMNS, ResultLog

ROWS = 12


def row(i: int) -> dict:
    return {"idx": i, "label": i % 3, "predict": i % 3, "radius": 0.1 * (i % 4),
            "correct": 1, "time": "0:00:01"}  # fmt: skip


def finish(path) -> None:
    with ResultLog(path, CERTIFY_COLUMNS) as log:
        for i in range(ROWS):
            if i not in log.done:
                log.append(row(i))


def full_log(path) -> bytes:
    path.unlink(missing_ok=True)  # hypothesis replays examples in the same folder
    finish(path)
    return path.read_bytes()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_log_cut_anywhere_resumes_to_the_full_log(tmp_path, cut):
    path = tmp_path / f"log{cut}.tsv"
    data = full_log(path)
    header_end = data.index(b"\n") + 1
    path.write_bytes(data[: max(header_end, cut % (len(data) + 1))])
    read = set(read_log(path, warn=lambda _message: None).idx.tolist())
    with ResultLog(path, CERTIFY_COLUMNS) as log:  # the rows analysis reads are those done
        assert log.done == read
    finish(path)
    log = read_log(path)
    assert sorted(log.idx.tolist()) == list(range(ROWS))  # no duplicate, none missing
    assert path.read_bytes().count(b"\n") == ROWS + 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.integers(min_value=1, max_value=ROWS),
    garbage=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
        max_size=40,
    ).filter(
        lambda t: t.strip() and (len(t.split("\t")) != 6 or not t.split("\t")[0].strip().isdigit())
    ),
)
def test_a_garbage_line_is_refused_and_left_alone(tmp_path, where, garbage):
    path = tmp_path / f"g{abs(hash((where, garbage)))}.tsv"
    lines = full_log(path).decode().split("\n")
    lines.insert(where, garbage)
    bad = "\n".join(lines).encode()
    path.write_bytes(bad)
    try:
        finish(path)
        message = None
    except UserError as e:
        message = str(e)
    assert message is not None, message
    assert re.search(rf", line {where + 1}\D", message), message
    assert path.read_bytes() == bad  # nothing changed
    # and `dsmooth analyze` refuses the same line with the same sentence
    with pytest.raises(UserError) as refused:
        read_log(path)
    assert str(refused.value) == message


def test_a_short_complete_row_is_not_counted_as_done(tmp_path):
    """`1\\t8\\t6` was counted as done by certify and then rejected by analyze."""
    path = tmp_path / "short.tsv"
    path.write_text("\t".join(CERTIFY_COLUMNS) + "\n1\t8\t6\n")
    with pytest.raises(UserError, match="line 2"):  # a short row is not accepted
        finish(path)
