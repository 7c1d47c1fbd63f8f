"""`certify --stop-if-misclassified`: images whose selected class is not their label stop
after selection; certified accuracy at every radius equals the full run's."""

from __future__ import annotations

import pytest
from helpers import certify_args, read_rows

from dsmooth.analysis.tables import read_log
from dsmooth.cli import main


@pytest.mark.parametrize("method", [[], ["--method", "sequential", "--radius", "0.1", "0.3"]])
def test_same_certified_accuracy_fewer_samples(
    tiny_data_file, tiny_classifier_file, tmp_path, method
):
    full, short = tmp_path / "full.tsv", tmp_path / "short.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, full, *method)) == 0
    args = certify_args(tiny_data_file, tiny_classifier_file, short, *method)
    assert main([*args, "--stop-if-misclassified"]) == 0
    head_f, rows_f = read_rows(full)
    head_s, rows_s = read_rows(short)
    assert head_s == [*head_f, "selection_only"]
    col = {c: k for k, c in enumerate(head_s)}
    stopped = 0
    for a, b in zip(rows_f, rows_s, strict=True):
        if b[col["selection_only"]] == "1":
            stopped += 1
            assert b[col["correct"]] == "0"
            assert b[col["radius"]] == "0"
            assert b[col["predict"]] != b[col["label"]]
            assert a[col["correct"]] == "0"  # the full run could not certify it either
            if "n_used" in col:
                assert int(b[col["n_used"]]) == 50 < int(a[col["n_used"]])
        else:  # the other rows are the same certificates (same noise)
            for c in ("idx", "label", "predict", "radius", "correct"):
                assert a[col[c]] == b[col[c]], c
    assert 0 < stopped < len(rows_s)
    lf, ls = read_log(full), read_log(short)
    for r in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        assert lf.certified_count(r) == ls.certified_count(r)
