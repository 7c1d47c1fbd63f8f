"""`dsmooth certify` / `predict` end to end: logs, resume after kill -9, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import certify_args, read_rows, with_flag, without_time

from dsmooth.cli import main


def test_certify_writes_reference_columns(tiny_data_file, tiny_classifier_file, tmp_path):
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--skip", "2")) == 0
    header, rows = read_rows(out)
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [int(r[0]) for r in rows] == [0, 2, 4, 6, 8, 10]
    labels = np.load(tiny_data_file)["labels"]
    for r in rows:
        idx, label, predict, correct = int(r[0]), int(r[1]), int(r[2]), int(r[4])
        radius = float(r[3])
        assert label == labels[idx]
        assert correct == int(predict == label)
        assert radius >= 0
        assert predict != -1 or radius == 0


def test_a_run_ends_with_a_one_line_summary(tiny_data_file, tiny_classifier_file, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "4")) == 0
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "6")) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    _header, rows = read_rows(out)
    correct = sum(int(r[4]) for r in rows)
    assert last.startswith(f"dsmooth: {out}: 6 images (2 new); ")
    assert f"{100 * correct / 6:.1f}% certified correct, average certified radius" in last
    predict = tmp_path / "predict.tsv"
    argv = certify_args(tiny_data_file, tiny_classifier_file, predict, "--max", "3")
    argv = ["predict"] + [a for a in argv[1:] if a not in ("--n0", "50")]
    assert main(argv) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dsmooth: {predict}: 3 images (3 new); ")
    assert "abstained" in last


def test_rerun_appends_nothing_and_max_limits(tiny_data_file, tiny_classifier_file, tmp_path):
    out = tmp_path / "log.tsv"
    main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "5"))
    first = out.read_text()
    assert len(first.splitlines()) == 6
    main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "5"))
    assert out.read_text() == first
    main(certify_args(tiny_data_file, tiny_classifier_file, out))
    _header, rows = read_rows(out)
    assert [int(r[0]) for r in rows] == list(range(12))
    assert out.read_text().startswith(first)


def test_partial_trailing_row_is_dropped_on_resume(tiny_data_file, tiny_classifier_file, tmp_path):
    full, cut = tmp_path / "full.tsv", tmp_path / "cut.tsv"
    main(certify_args(tiny_data_file, tiny_classifier_file, full))
    text = full.read_text()
    lines = text.splitlines(keepends=True)
    cut.write_text("".join(lines[:5]) + lines[5][:7])  # a killed write mid-row
    main(certify_args(tiny_data_file, tiny_classifier_file, cut))
    header, rows_full = read_rows(full)
    _, rows_cut = read_rows(cut)
    assert without_time(header, rows_cut) == without_time(header, rows_full)


def test_predict_log(tiny_data_file, tiny_classifier_file, tmp_path):
    out = tmp_path / "pred.tsv"
    args = [
        "predict",
        "--data",
        str(tiny_data_file),
        "--classifier",
        str(tiny_classifier_file),
        "--sigma",
        "0.25",
        "--n",
        "200",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    header, rows = read_rows(out)
    assert header == ["idx", "label", "predict", "correct", "time"]
    assert len(rows) == 12


def test_kill_and_resume_equals_uninterrupted_run(tiny_data_file, tiny_classifier_file, tmp_path):
    """kill -9 a real process mid-run, rerun: same rows as one uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    slow = ["--n", "60000", "--batch", "1000"]
    cmd = [sys.executable, "-m", "dsmooth.cli"]
    killed = tmp_path / "killed.tsv"
    proc = subprocess.Popen(
        cmd + certify_args(tiny_data_file, tiny_classifier_file, killed) + slow,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if killed.exists() and len(killed.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(killed.read_text().splitlines()) - 1
    assert 2 <= n_before < 12, "the process should be killed mid-run"
    subprocess.run(
        cmd + certify_args(tiny_data_file, tiny_classifier_file, killed) + slow,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clean = tmp_path / "clean.tsv"
    subprocess.run(
        cmd + certify_args(tiny_data_file, tiny_classifier_file, clean) + slow,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    header, rows_killed = read_rows(killed)
    _, rows_clean = read_rows(clean)
    assert without_time(header, rows_killed) == without_time(header, rows_clean)


# --- bad input: one sentence, exit code 2, nothing written ---------------------------------


def _bad_npz(tmp_path, images, labels=None):
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=np.zeros(len(images), int) if labels is None else labels)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--sigma": "0"}, "sigma must be a positive number"),
        ({"--sigma": "-0.5"}, "sigma must be a positive number"),
        ({"--alpha": "0"}, "alpha must be in (0, 0.5)"),
        ({"--alpha": "1.5"}, "alpha must be in (0, 0.5)"),
        ({"--alpha": "0.5"}, "alpha must be in (0, 0.5)"),
        ({"--n0": "0"}, "n0 must be at least 1"),
        ({"--n": "0"}, "n must be at least 1"),
        ({"--num-classes": "5"}, "returns 3 scores per image but num_classes is 5"),
        ({"--data": "missing.npz"}, "data not found"),
        ({"--classifier": "missing.pt"}, "cannot load a model from"),
        ({"--data": "floats255"}, "must lie in [0, 1]"),
        ({"--data": "nan"}, "contain NaN"),
        ({"--data": "shape"}, "must have shape (N, H, W, C)"),
        ({"--data": "size"}, "the model failed on an image of shape"),
    ],
)
def test_bad_input_one_sentence_exit_2(
    change, message, tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    rng = np.random.default_rng(0)
    special = {
        "floats255": lambda: _bad_npz(tmp_path, rng.uniform(0, 255, (3, 8, 8, 3))),
        "nan": lambda: _bad_npz(tmp_path, np.full((3, 8, 8, 3), np.nan)),
        "shape": lambda: _bad_npz(tmp_path, np.zeros((3, 8, 8, 3, 2), np.uint8)),
        "size": lambda: _bad_npz(tmp_path, np.zeros((3, 16, 16, 3), np.uint8)),
        "missing.npz": lambda: tmp_path / "missing.npz",
        "missing.pt": lambda: tmp_path / "missing.pt",
    }
    out = tmp_path / "out.tsv"
    args = certify_args(tiny_data_file, tiny_classifier_file, out)
    for flag, value in change.items():
        args = with_flag(args, flag, str(special[value]()) if value in special else value)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert not out.exists()


def test_bad_input_exit_code_from_a_real_process(tiny_data_file, tiny_classifier_file, tmp_path):
    out = tmp_path / "out.tsv"
    args = with_flag(certify_args(tiny_data_file, tiny_classifier_file, out), "--sigma", "-1")
    proc = subprocess.run(
        [sys.executable, "-m", "dsmooth.cli", *args], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dsmooth: error: sigma must be a positive number, got -1.0."
    assert not out.exists()


def test_existing_log_with_other_columns_is_refused(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    out = tmp_path / "out.tsv"
    out.write_text("a\tb\n1\t2\n")
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out)) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert out.read_text() == "a\tb\n1\t2\n"


def _image_folder(tmp_path, tiny_data_file):
    """The tiny images as PNGs of mixed sizes in class subfolders, plus a corrupt file."""
    from PIL import Image

    d = np.load(tiny_data_file)
    root = tmp_path / "folder"
    for i, (im, label) in enumerate(zip(d["images"], d["labels"], strict=True)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        w, h = (12, 9) if i % 2 else (10, 10)
        Image.fromarray(im).resize((w, h)).save(root / f"class{label}" / f"{i:02d}.png")
    last = sorted(root.iterdir())[-1]
    (last / "zz_broken.png").write_bytes(b"not a png")  # the folder's last index
    return root


def test_image_folder_is_read_lazily_and_resized(tiny_data_file, tiny_classifier_file, tmp_path):
    from dsmooth.data.datasets import load_dataset

    folder = _image_folder(tmp_path, tiny_data_file)
    # the eager loader (training) on the readable files gives the reference images
    clean = tmp_path / "clean"
    for cls in folder.iterdir():
        (clean / cls.name).mkdir(parents=True)
        for f in cls.glob("[0-9]*.png"):
            (clean / cls.name / f.name).write_bytes(f.read_bytes())
    eager = load_dataset(clean, size=8)
    np.savez(tmp_path / "eager.npz", images=eager.images, labels=eager.labels)
    reference = tmp_path / "reference.tsv"
    assert main(certify_args(tmp_path / "eager.npz", tiny_classifier_file, reference)) == 0

    out = tmp_path / "folder.tsv"
    # --max 12 leaves out the broken file: an eager loader would fail, a lazy one does not
    args = certify_args(folder, tiny_classifier_file, out, "--size", "8")
    assert main([*args, "--max", "12"]) == 0
    header, rows = read_rows(out)
    assert header[-1] == "file"
    assert rows[0][-1].endswith(".png")  # rows name their files
    plain = header[:-1]
    assert without_time(plain, [r[:-1] for r in rows]) == without_time(
        plain, read_rows(reference)[1]
    )
    assert main(args) == 2  # now the broken image is selected: one sentence, rows kept
    assert read_rows(out)[1] == rows
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--size", "8")) == 2
