"""`dsmooth demo`'s table: what each column is called, and radii its n cannot reach.

The end-to-end run on the shipped models is in tests/test_pretrained.py."""

from __future__ import annotations

import json

from dsmooth.analysis.settings import DAGGER
from dsmooth.analysis.tables import analyze
from dsmooth.cli.commands.demo import RADII, table

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def demo_log(path, rows, n=500):
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    record = {"command": "certify", "method": "cp", "sigma": 0.25, "alpha": 0.001, "n": n}
    (path.parent / (path.name + ".json")).write_text(json.dumps(record))
    return path


def test_demo_table_names_its_columns_and_marks_unreachable_radii(tmp_path):
    base = demo_log(
        tmp_path / "certify_no_denoiser.tsv",
        ["0\t3\t3\t0.3\t1\t0:00:02", "1\t8\t-1\t0.0\t0\t0:00:02", "2\t8\t1\t0.1\t0\t0:00:02"],
    )
    stab = demo_log(
        tmp_path / "certify_stab_dncnn.tsv",
        ["0\t3\t3\t0.55\t1\t0:00:04", "1\t8\t8\t0.2\t1\t0:00:04", "2\t8\t8\t0.0\t1\t0:00:04"],
    )
    report = analyze(groups=[("no denoiser", [base]), ("Stab DnCNN", [stab])], radii=RADII)
    text = table(report)
    lines = text.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    # r = 0 is the smoothed classifier's accuracy: named so, not "clean"
    assert head == [
        "denoiser",
        "smoothed acc. %",
        "cert. % r=0.25",
        "cert. % r=0.5",
        f"cert. % r=0.75 {DAGGER}",  # n = 500 caps the radius at 0.551
        "ACR",
        "abstain %",
        "s/image",
    ]
    assert "clean" not in text
    assert lines[2] == "| no denoiser | 33 | 33 | 0 | 0 | 0.100 | 33 | 2.00 |"
    assert lines[3] == "| Stab DnCNN | 100 | 33 | 33 | 0 | 0.250 | 0 | 4.00 |"
    assert f"{DAGGER} above 0.551, the largest radius n = 500 can certify" in text
    assert "abstentions count as wrong" in text


def test_a_larger_n_reaches_every_demo_radius(tmp_path):
    log = demo_log(tmp_path / "a.tsv", ["0\t3\t3\t0.3\t1\t0:00:02"], n=10_000)  # cap 0.80
    assert DAGGER not in table(analyze(groups=[("a", [log])], radii=RADII))
