"""The walk-through notebooks in notebooks/ run top to bottom and print sane numbers.

Each notebook is executed with nbclient in a kernel of this interpreter (the venv's
ipykernel), in a temporary working folder, with DSMOOTH_NOTEBOOK_QUICK=1 (smaller
settings), DSMOOTH_NOTEBOOK_OUT set to a temporary folder (nothing is written into the
repository) and the engine defaults of tests/conftest.py (DSMOOTH_COMPILE=0,
DSMOOTH_PRECISION=fp32), which the kernel inherits with the rest of the environment.
The last cell of each notebook prints `SUMMARY {json}`; the tests check those numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsmooth.certify import stats

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ASSET = REPO / "src" / "dsmooth" / "assets" / "cifar10_test_every20.npz"
CELL_TIMEOUT = 240  # seconds per cell; each notebook takes ~10-30 s in quick mode

# Appended to each notebook: which interpreter ran it (must be this one).
PROBE = 'import sys\nprint("PYTHON " + sys.prefix)'


def _repo_status() -> str:
    """Untracked and modified files of the work tree (to check nothing is written there),
    except the CIFAR-10 campaign's state, which its own job may be updating meanwhile."""
    out = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            ".",
            ":(exclude)results/cifar10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return out.stdout if out.returncode == 0 else ""


def run_notebook(name: str, tmp_path: Path, monkeypatch) -> dict:
    """Execute notebooks/<name>.ipynb; return the JSON its `SUMMARY` line printed."""
    out = tmp_path / "out"
    work = tmp_path / "work"
    out.mkdir()
    work.mkdir()
    monkeypatch.setenv("DSMOOTH_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("DSMOOTH_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("DSMOOTH_NOTEBOOK_THREADS", "1")
    monkeypatch.setenv("DSMOOTH_COMPILE", "0")  # as conftest.py; explicit for the kernel
    monkeypatch.setenv("DSMOOTH_PRECISION", "fp32")
    before = _repo_status()

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{name}.ipynb is committed with outputs; clear them"
    )
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    text = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )
    lines = text.splitlines()
    prefix = [line.removeprefix("PYTHON ") for line in lines if line.startswith("PYTHON ")]
    elsewhere = (
        f"the notebook ran in {prefix}, not in this interpreter's environment {sys.prefix}; "
        "a 'python3' kernelspec elsewhere overrides ipykernel's own"
    )
    assert prefix, elsewhere
    assert Path(prefix[-1]).resolve() == Path(sys.prefix).resolve(), elsewhere
    summaries = [line.removeprefix("SUMMARY ") for line in lines if line.startswith("SUMMARY ")]
    assert len(summaries) == 1, f"expected one SUMMARY line in {name}, got {len(summaries)}"
    assert _repo_status() == before, "the notebook wrote into the repository"
    assert any(out.iterdir()), "the notebook wrote nothing to DSMOOTH_NOTEBOOK_OUT"
    summary = json.loads(summaries[0])
    assert summary["notebook"] == name
    assert summary["quick"] is True
    return summary


def is_fraction(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def test_01_train_classifier(tmp_path, monkeypatch):
    s = run_notebook("01_train_classifier", tmp_path, monkeypatch)
    assert s["status"] == ["stopped", "done"]  # stopped by max_steps, then resumed to the end
    assert s["epochs"] >= 1
    assert s["train_images"] > 0
    assert s["val_images"] > 0
    for key in ("val_acc_last_epoch", "clean_accuracy", "noisy_accuracy"):
        assert is_fraction(s[key]), (key, s[key])
    # The same model on the same images (one argmax may flip between memory formats).
    assert abs(s["val_acc_last_epoch"] - s["clean_accuracy"]) <= 1.0 / s["val_images"] + 1e-9
    # The shipped third-party ResNet-20 is a real classifier (81% on the full test set).
    assert s["shipped_clean_accuracy"] >= 0.6
    assert is_fraction(s["shipped_noisy_accuracy"])
    ckpt = Path(s["checkpoint"])
    assert (ckpt / "model.safetensors").is_file()
    assert (ckpt / "config.json").is_file()
    assert ckpt.is_relative_to(tmp_path)


def test_02_train_denoiser(tmp_path, monkeypatch):
    s = run_notebook("02_train_denoiser", tmp_path, monkeypatch)
    assert s["status"] == {"mse": "done", "stab": "done"}
    assert s["clean_accuracy"] >= 0.6
    m = s["metrics"]
    assert set(m) == {
        "no denoiser",
        "MSE, trained here",
        "Stab+MSE, trained here",
        "shipped MSE DnCNN",
    }
    for row in m.values():
        assert math.isfinite(row["psnr"])
        assert 5.0 < row["psnr"] < 60.0
        assert is_fraction(row["noisy_acc"])
    # sigma 0.25 noise is ~12-13 dB; any of the trained denoisers removes some of it.
    assert 11.0 < m["no denoiser"]["psnr"] < 14.5
    assert m["MSE, trained here"]["psnr"] > m["no denoiser"]["psnr"] + 1.0
    assert m["shipped MSE DnCNN"]["psnr"] > m["no denoiser"]["psnr"] + 5.0
    assert m["shipped MSE DnCNN"]["noisy_acc"] >= m["no denoiser"]["noisy_acc"]
    assert Path(s["figure"]).is_file()


def test_03_certify(tmp_path, monkeypatch):
    s = run_notebook("03_certify", tmp_path, monkeypatch)
    labels = np.load(ASSET)["labels"]
    sigma, n, alpha = s["sigma"], s["n"], s["alpha"]
    assert sigma == 0.25
    assert n >= 1
    assert 0 < alpha < 0.5
    # With n samples, pA_lower <= alpha^(1/n): the radius can never exceed this bound.
    bound = stats.radius(sigma, stats.lower_confidence_bound(n, n, alpha))
    assert s["max_radius"] == pytest.approx(bound)
    assert set(s["rows"]) == {"no denoiser", "MSE DnCNN"}
    for name, rows in s["rows"].items():
        assert rows, name
        for r in rows:
            assert r["label"] == int(labels[r["idx"]])
            assert -1 <= r["predict"] < 10
            assert r["radius"] >= 0.0
            assert r["radius"] <= bound + 1e-9
            if r["predict"] == -1:
                assert r["radius"] == 0.0
            assert r["correct"] == int(r["predict"] == r["label"])
        acc = s["certified_accuracy"][name]
        radii = sorted(acc, key=float)
        values = [acc[r] for r in radii]
        assert all(is_fraction(v) for v in values)
        assert values == sorted(values, reverse=True)  # non-increasing in the radius
        assert acc["0.0"] == pytest.approx(np.mean([r["correct"] for r in rows]))
        for r in radii:
            expected = np.mean([x["correct"] == 1 and x["radius"] >= float(r) for x in rows])
            assert acc[r] == pytest.approx(expected)
    for p in s["predictions"]:
        assert p["label"] == int(labels[p["idx"]])
        assert all(-1 <= p[name] < 10 for name in s["rows"])
    assert Path(s["curves"]).is_file()
