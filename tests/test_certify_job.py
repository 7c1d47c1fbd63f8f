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
from dsmooth.certify.methods import CohenCP, Sequential
from dsmooth.cli import main
from dsmooth.errors import UserError

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
    assert dsmooth.certify_dataset is dsmooth.runs.local.certify_dataset


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
    # what is left decides whether compiling or measuring backends pays (engine.for_work)
    assert job.planned_samples(500) == 0
    assert dataclasses.replace(job, max=5).planned_samples(500) == 2 * (10 + 40)
    assert dataclasses.replace(job, out=str(tmp_path / "new.tsv")).planned_samples(500) == 150


def test_nothing_below_the_cli_imports_it():
    pattern = re.compile(r"dsmooth\.cli|dsmooth\.commands|from dsmooth import cli")
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "cli" not in path.relative_to(SRC).parts[:1] and pattern.search(path.read_text())
    ]
    assert offenders == []
    assert not (SRC / "commands").exists()


def test_nothing_inside_the_package_imports_its_root():
    """`dsmooth/__init__` imports the library; a module importing it back would import
    everything (and cycle), so the version lives in `dsmooth._version`."""
    root = re.compile(r"^\s*(from dsmooth import|import dsmooth\s*$)", re.M)
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if root.search(p.read_text())]
    assert offenders == []


def test_imports_run_one_way():
    """The layers in pyproject's import-linter contract (docs/design.md) hold."""
    pytest.importorskip("importlinter")
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), str(SRC.parents[1] / "pyproject.toml"), "--no-cache"],
        cwd=SRC.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_module_imports_itself_back():
    """No import cycles, not even inside functions (imports for type checking only do
    not run, so they may point back)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("dsmooth", cache_dir=None, exclude_type_checking_imports=True)
    cycles = sorted(
        {
            tuple(sorted((module, imported)))
            for module in graph.modules
            for imported in graph.find_modules_directly_imported_by(module)
            if graph.chain_exists(imported, module)
        }
    )
    assert cycles == []


def test_a_job_whose_settings_contradict_its_method_is_refused(tmp_path):
    """Its record would state the job's n and alpha, not those the method certified with."""
    job = CertifyJob(
        CLASSIFIER, str(DATA), sigma=0.25, method=CohenCP(10, 100, 0.001), n=40,
        alpha=0.01, out=str(tmp_path / "x.tsv"),
    )  # fmt: skip
    with pytest.raises(UserError, match="differs from its method"):
        job.check()
    same = dataclasses.replace(job, n=100, alpha=0.001)
    same.check()
