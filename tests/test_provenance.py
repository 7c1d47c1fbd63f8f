"""Every log records how it was made (LOG.json) and refuses to resume with settings that
would make other rows; logged radii are rounded down, never up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from helpers import certify_args, read_rows, with_flag

from dsmooth.certify.noise import NOISE_VERSION
from dsmooth.cli import main
from dsmooth.logs.provenance import sidecar
from dsmooth.logs.result_log import format_radius


def test_log_records_what_determines_its_rows(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "4")) == 0
    rec = json.loads(sidecar(out).read_text())
    assert rec["command"] == "certify"
    assert rec["method"] == "cp"
    assert (rec["sigma"], rec["alpha"], rec["n0"], rec["n"], rec["seed"]) == (
        0.25,
        0.001,
        50,
        500,
        0,
    )
    assert rec["noise_version"] == NOISE_VERSION
    assert rec["precision"] == "fp32"
    assert rec["device_type"] == "cpu"
    assert rec["num_classes"] == 3
    assert len(rec["models"]["classifier"]["sha256"]) == 64
    assert rec["data"]["images"] == 12
    assert rec["dsmooth_version"]
    err = capsys.readouterr().err
    assert "dsmooth: engine: torch fp32" in err
    assert "noise v2 lattice" in err
    assert rec["noise"] == "lattice"  # uint8 data: --noise auto draws lattice noise


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--sigma", "0.5"], "--sigma"),
        (["--alpha", "0.01"], "--alpha"),
        (["--n", "400"], "--n "),
        (["--seed", "3"], "--seed"),
        (["--method", "sequential"], "--method"),
        (["--noise", "gaussian"], "--noise"),
    ],
)
def test_resume_with_other_settings_is_refused(
    change, named, tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    """Once a sigma 0.25 / alpha 0.001 log resumed silently at sigma 1.0 / alpha 0.4."""
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "4")) == 0
    before = out.read_text()
    capsys.readouterr()
    args = certify_args(tiny_data_file, tiny_classifier_file, out)
    args = with_flag(args, *change)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "other settings" in err[0], err
    assert named in err[0], err
    assert out.read_text() == before  # nothing appended, nothing truncated
    # the same settings resume and finish the log
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out)) == 0
    assert len(read_rows(out)[1]) == 12


def test_other_weights_are_refused(tiny_data_file, tiny_classifier_file, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "4")) == 0
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(LinearClassifier(3 * 8 * 8, 3, seed=1).eval()), str(other))
    capsys.readouterr()
    assert main(certify_args(tiny_data_file, other, out)) == 2
    assert "the classifier (other weights)" in capsys.readouterr().err


def test_a_log_without_record_resumes_with_a_warning(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    """Logs made before records existed stay resumable (backward compatible)."""
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "4")) == 0
    sidecar(out).unlink()
    capsys.readouterr()
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out)) == 0
    assert "no provenance record" in capsys.readouterr().err
    assert json.loads(sidecar(out).read_text())["rows_before_record"] == 4
    assert len(read_rows(out)[1]) == 12


def test_a_record_from_before_lattice_noise_resumes_only_with_gaussian_noise(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    """Records written before --noise existed have no `noise` key: their rows used float
    noise, so they resume with --noise gaussian and not with lattice noise."""
    out = tmp_path / "log.tsv"
    old = [*certify_args(tiny_data_file, tiny_classifier_file, out), "--noise", "gaussian"]
    assert main([*old, "--max", "4"]) == 0
    record = json.loads(sidecar(out).read_text())
    del record["noise"]
    sidecar(out).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out)) == 2  # auto: lattice
    err = capsys.readouterr().err
    assert "--noise (log: 'gaussian', now: 'lattice')" in err
    assert main(old) == 0
    assert len(read_rows(out)[1]) == 12


def test_lattice_noise_on_float_images_is_refused(tiny_classifier_file, tmp_path, capsys):
    data = tmp_path / "float.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.random((4, 8, 8, 3), dtype=np.float32), labels=np.zeros(4, int))
    out = tmp_path / "log.tsv"
    args = [*certify_args(data, tiny_classifier_file, out), "--noise", "lattice"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "needs 8-bit images" in err[0]
    assert not out.exists()
    assert main(certify_args(data, tiny_classifier_file, out, "--max", "1")) == 0  # auto
    assert json.loads(sidecar(out).read_text())["noise"] == "gaussian"


def test_a_stale_record_of_a_deleted_log_is_replaced(
    tiny_data_file, tiny_classifier_file, tmp_path
):
    out = tmp_path / "log.tsv"
    assert main(certify_args(tiny_data_file, tiny_classifier_file, out, "--max", "2")) == 0
    out.unlink()
    args = with_flag(certify_args(tiny_data_file, tiny_classifier_file, out), "--sigma", "0.5")
    assert main([*args, "--max", "2"]) == 0
    assert json.loads(sidecar(out).read_text())["sigma"] == 0.5


@pytest.mark.parametrize(
    "radius", [0.2499996, 0.25, 1.23456789, 3.9999999, 0.123456449, 12345678.9, 1e-7, 0.0]
)
def test_radii_are_rounded_down(radius):
    text = format_radius(radius)
    assert float(text) <= radius
    assert float(text) == pytest.approx(radius, rel=2e-5, abs=1e-12)


def test_radius_just_below_a_round_number_is_not_logged_as_it():
    assert format_radius(0.2499996) == "0.249999"


def test_decision_mode_logs_report_only_at_their_targets(
    tiny_data_file, tiny_classifier_file, tmp_path, capsys
):
    """The radius column of `--method sequential --radius ...` means "certified at these
    targets"; read as a full radius it once gave an ACR of 0.177 where fixed n gave 0.246."""
    from dsmooth.analysis.tables import read_log

    seq, cp = tmp_path / "seq.tsv", tmp_path / "cp.tsv"
    targets = ["--method", "sequential", "--radius", "0.1", "0.2"]
    assert main(certify_args(tiny_data_file, tiny_classifier_file, seq, *targets)) == 0
    assert main(certify_args(tiny_data_file, tiny_classifier_file, cp)) == 0
    log = read_log(seq)
    assert log.targets == (0.1, 0.2)
    assert read_log(cp).targets is None
    assert log.reports_at(0.2)
    assert log.reports_at(0.0)
    assert not log.reports_at(0.15)
    capsys.readouterr()
    table = tmp_path / "t.csv"
    args = ["analyze", str(seq), str(cp), "--radii", "0", "0.1", "0.15", "0.2"]
    assert (
        main([*args, "--format", "csv", "--out", str(table), "--plot", str(tmp_path / "c.png")])
        == 0
    )
    assert "decision-mode" in capsys.readouterr().err
    cells = {
        tuple(line.split(",")[:2]): line.split(",")[2] for line in table.read_text().splitlines()
    }
    assert cells[("seq.tsv", "0.15")] == ""
    assert cells[("cp.tsv", "0.15")] != ""
    assert cells[("seq.tsv", "0.2")] != ""
    assert cells[("seq.tsv", "0")] != ""
    assert (tmp_path / "c.png").stat().st_size > 0
    assert np.isnan(log.acr)
    assert not np.isnan(read_log(cp).acr)


def test_a_tf32_era_cuda_log_does_not_resume_under_ieee_fp32():
    """fp32 on a GPU became IEEE fp32 (TF32 off): another f, so a GPU log made before
    must not take rows from after; CPU logs, old or new, compare equal."""
    from dsmooth.logs.provenance import differences

    before = {"device_type": "cuda", "precision": "fp32"}
    assert differences(before, {**before, "cuda_fp32": "ieee"}) == ["cuda_fp32"]
    cpu = {"device_type": "cpu", "precision": "fp32"}
    assert differences(cpu, {**cpu, "cuda_fp32": None}) == []
