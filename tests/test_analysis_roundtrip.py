"""Logs written by dsmooth's own certify/predict (and sequential certify) read back exactly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from dsmooth.analysis.tables import analyze, parse_seconds, read_log
from dsmooth.certify.smooth import Smooth
from dsmooth.data.load import load_images
from dsmooth.runs.local import certify_dataset, predict_dataset


def raw_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture
def smooth(tiny_classifier_file):
    model = torch.jit.load(str(tiny_classifier_file)).eval()
    return Smooth(model, 3, 0.25, seed=1)


def test_certify_log_round_trip(tmp_path, smooth, tiny_data_file):
    data = load_images(tiny_data_file)
    out = tmp_path / "certify.tsv"
    certify_dataset(smooth, data, out=out, n0=20, n=200, alpha=0.01, batch_size=50, progress=False)
    log = read_log(out)
    rows = raw_rows(out)
    assert len(log) == len(rows) == len(data)
    radius = np.array([float(r["radius"]) for r in rows])
    correct = np.array([int(r["correct"]) for r in rows])
    for r in (0.0, 0.1, 0.2, 0.3):
        assert log.certified_accuracy(r) == np.mean((correct == 1) & (radius >= r))
    assert log.seconds_per_image == pytest.approx(np.mean([parse_seconds(r["time"]) for r in rows]))
    assert log.abstain_rate == np.mean([r["predict"] == "-1" for r in rows])


def test_sequential_log_reports_mean_n_used(tmp_path, smooth, tiny_data_file):
    data = load_images(tiny_data_file)
    out = tmp_path / "sequential.tsv"
    certify_dataset(
        smooth,
        data,
        out=out,
        n0=20,
        n=0,
        alpha=0.01,
        batch_size=50,
        max_index=6,
        progress=False,
        sequential={"n_max": 400, "radius": 0.1},
    )
    rows = raw_rows(out)
    assert "n_used" in rows[0]
    report = analyze([out], radii=[0.0, 0.1])
    (stats,) = report.stats_rows()
    assert stats["mean_n_used"] == pytest.approx(np.mean([int(r["n_used"]) for r in rows]))
    assert "mean n_used" in report.markdown()


def test_predict_log_round_trip(tmp_path, smooth, tiny_data_file):
    data = load_images(tiny_data_file)
    out = tmp_path / "predict.tsv"
    predict_dataset(smooth, data, out=out, n=100, alpha=0.01, batch_size=50, progress=False)
    log = read_log(out)
    rows = raw_rows(out)
    assert log.kind == "predict"
    assert log.clean_accuracy == np.mean([int(r["correct"]) for r in rows])
