"""Image folders get the classifier's labels, or fail loudly; every row names its file.

A folder holding only some classes once gave each image the rank of its subfolder among
those present (cat -> 2 when 5 classes exist), and certified accuracy fell with exit 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import certify_args
from PIL import Image

from dsmooth.analysis.tables import read_log
from dsmooth.cli import main

CLASSES = ("ant", "bee", "cat")  # the tiny classifier's three classes, in label order


def make_folder(root, present, per_class: int = 2):
    rng = np.random.default_rng(0)
    for name in present:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{k}.png")
    return root


SMALL = {"n0": "10", "n": "20", "batch": "10"}  # certify_args(..., **SMALL): a quick run


def rows(out):
    lines = out.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_a_folder_with_some_classes_needs_class_names(tiny_classifier_file, tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", ["ant", "cat"])
    out = tmp_path / "log.tsv"
    assert main(certify_args(folder, tiny_classifier_file, out, **SMALL)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "2 class subfolders but the classifier has 3" in err[0]
    assert "--class-names" in err[0]
    assert not out.exists()

    assert (
        main(
            certify_args(
                folder, tiny_classifier_file, out, "--class-names", ",".join(CLASSES), **SMALL
            )
        )
        == 0
    )
    got = rows(out)
    assert [r["file"] for r in got] == [
        "ant/ant0.png",
        "ant/ant1.png",
        "cat/cat0.png",
        "cat/cat1.png",
    ]
    assert [int(r["label"]) for r in got] == [0, 0, 2, 2]  # cat is label 2, not rank 1
    log = read_log(out)
    assert list(log.extra["file"]) == [r["file"] for r in got]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("ant,bee", "lists 2 classes but the classifier has 3"),
        ("ant,bee,dog", "class subfolder(s) cat are not among --class-names"),
        ("ant,,cat", "empty name"),
        ("ant,ant,cat", "names a class twice"),
    ],
)
def test_class_names_that_do_not_fit_are_refused(
    names, message, tiny_classifier_file, tmp_path, capsys
):
    folder = make_folder(tmp_path / "imgs", ["ant", "cat"])
    out = tmp_path / "log.tsv"
    assert (
        main(certify_args(folder, tiny_classifier_file, out, "--class-names", names, **SMALL)) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0], err
    assert not out.exists(), err


def test_a_complete_folder_keeps_sorted_labels_and_logs_files(tiny_classifier_file, tmp_path):
    folder = make_folder(tmp_path / "imgs", ["cat", "ant", "bee"], per_class=1)
    out = tmp_path / "log.tsv"
    assert main(certify_args(folder, tiny_classifier_file, out, **SMALL)) == 0
    got = rows(out)
    assert [(r["file"], int(r["label"])) for r in got] == [
        ("ant/ant0.png", 0),
        ("bee/bee0.png", 1),
        ("cat/cat0.png", 2),
    ]
    assert main(["analyze", str(out)]) == 0


def test_a_folder_log_from_before_the_file_column_resumes_without_it(
    tiny_classifier_file, tmp_path
):
    folder = make_folder(tmp_path / "imgs", list(CLASSES), per_class=1)
    out = tmp_path / "log.tsv"
    assert main(certify_args(folder, tiny_classifier_file, out, "--max", "1", **SMALL)) == 0
    lines = out.read_text().splitlines()
    old = ["\t".join(line.split("\t")[:-1]) for line in lines]  # the layout before `file`
    out.write_text("\n".join(old) + "\n")
    assert main(certify_args(folder, tiny_classifier_file, out, **SMALL)) == 0
    after = out.read_text().splitlines()
    assert after[0] == old[0]
    assert len(after) == 4


def test_evaluate_refuses_a_partial_folder_too(tiny_classifier_file, tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", ["bee"])
    argv = ["evaluate", "--data", str(folder), "--classifier", str(tiny_classifier_file)]
    assert main([*argv, "--no-progress"]) == 2
    assert "1 class subfolders but the classifier has 3" in capsys.readouterr().err
    assert main([*argv, "--no-progress", "--class-names", "ant,bee,cat", "--json"]) == 0
