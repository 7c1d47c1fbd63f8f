"""CertifyJob: one frozen, picklable value that the CLI, the local loop and Ray all run.

The job run from Python gives the rows `dsmooth certify` writes for the same flags, its
build changes nothing, and nothing below the CLI imports it (issue 13, acceptance 1).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest
from helpers import read_rows, without_time

import dsmooth
from dsmooth import CertifyJob
from dsmooth.cli import main
from dsmooth.methods import CohenCP, Sequential

SRC = Path(__file__).resolve().parents[1] / "src" / "dsmooth"
DATA = SRC / "assets" / "cifar10_test_every20.npz"
CLASSIFIER = "cifar10-resnet20-akamaster"
FLAGS = ["--n0", "10", "--n", "40", "--alpha", "0.01", "--batch", "20", "--max", "3"]


def rows(path: Path) -> list[list[str]]:
    """The log's rows without the time column."""
    header, body = read_rows(path)
    return without_time(header, [header, *body])


def test_a_job_is_frozen_picklable_and_keyword_only():
    job = CertifyJob(CLASSIFIER, str(DATA), sigma=0.25, method=CohenCP(10, 40, 0.01))
    assert pickle.loads(pickle.dumps(job)) == job
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.sigma = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        CertifyJob(CLASSIFIER, str(DATA), 0.25)  # type: ignore[misc]
    assert dsmooth.certify_dataset is dsmooth.jobs.certify_dataset


def test_options_give_the_flags_job():
    job = CertifyJob.from_options(
        {"classifier": CLASSIFIER, "data": DATA, "sigma": 0.5, "out": "x.tsv", "n": 300,
         "method": "sequential", "n_max": 900, "radius": [0.1], "request_size": 8}
    )  # fmt: skip
    assert job.method == Sequential(100, 0.001, 900, (0.1,), None)
    assert (job.n, job.n_estimate, job.level, job.batch) == (300, 300, 0.001, 64)
    assert dict(job.model_options) == {"request_size": 8}
    predict = CertifyJob.from_options(
        {"classifier": CLASSIFIER, "data": DATA, "sigma": 0.5, "out": "x.tsv"}, predict=True
    )
    assert predict.method is None
    assert predict.command == "predict"


def test_the_job_from_python_writes_the_rows_certify_writes(tmp_path):
    cli_log, job_log = tmp_path / "cli.tsv", tmp_path / "job.tsv"
    argv = ["certify", "--classifier", CLASSIFIER, "--data", str(DATA), "--sigma", "0.25"]
    assert main([*argv, *FLAGS, "--out", str(cli_log), "--no-progress"]) == 0
    job = CertifyJob(
        CLASSIFIER, str(DATA), sigma=0.25, method=CohenCP(10, 40, 0.01), n=40, batch=20,
        max=3, out=str(job_log),
    )  # fmt: skip
    before = dataclasses.replace(job)
    built = job.build()
    assert job == before  # nothing mutated
    assert built.batch == 20
    assert built.columns[:6] == ("idx", "label", "predict", "radius", "correct", "time")
    assert dsmooth.certify_dataset(job, progress=False) == 3
    assert rows(job_log) == rows(cli_log)
    assert dsmooth.certify_dataset(job, progress=False) == 0  # resumed: nothing left


def test_nothing_below_the_cli_imports_it():
    pattern = re.compile(r"dsmooth\.cli|dsmooth\.commands|from dsmooth import cli")
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "cli" not in path.relative_to(SRC).parts[:1] and pattern.search(path.read_text())
    ]
    assert offenders == []
    assert not (SRC / "commands").exists()
