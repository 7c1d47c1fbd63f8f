"""Certification on Ray: same rows as one process, dead workers replaced, resume, errors.

The Ray tests share one local Ray instance (2 CPUs) for the module; they are marked slow
since starting Ray alone takes seconds. Without Ray installed they are skipped, except
the test of the error `--ray` gives then.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_rows, torch_threads, without_time
from torch import nn

from dsmooth.cli import main
from dsmooth.errors import UserError

SIGMA, N0, N, BATCH = 0.25, 50, 4000, 1000
IMAGES = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A small MLP (TorchScript, ~0.2 s per image at n=4000) and 16 8x8 RGB images."""
    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(),
        nn.Linear(192, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 3),
    )
    torch.jit.save(torch.jit.script(mlp.eval()), str(root / "mlp.pt"))
    rng = np.random.default_rng(0)
    np.savez(
        root / "data.npz",
        images=rng.integers(0, 256, (IMAGES, 8, 8, 3), dtype=np.uint8),
        labels=rng.integers(0, 3, IMAGES),
    )
    return {"root": root, "classifier": str(root / "mlp.pt"), "data": str(root / "data.npz")}


def cli_args(files: dict, out: Path, *extra: str) -> list[str]:
    return [
        "certify",
        "--data",
        files["data"],
        "--classifier",
        files["classifier"],
        "--sigma",
        str(SIGMA),
        "--n0",
        str(N0),
        "--n",
        str(N),
        "--batch",
        str(BATCH),
        "--seed",
        "7",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def options(files: dict) -> dict:
    return {
        "classifier": files["classifier"],
        "data": files["data"],
        "sigma": SIGMA,
        "n0": N0,
        "n": N,
        "batch": BATCH,
        "seed": 7,
    }


@pytest.fixture(scope="module")
def reference(files) -> tuple[list[str], list[list[str]]]:
    """The single-process log (`dsmooth certify` without --ray), rows without time."""
    out = files["root"] / "single.tsv"
    with torch_threads(1):  # the machine is shared; one thread is fastest here
        assert main(cli_args(files, out)) == 0
    header, rows = read_rows(out)
    assert [int(r[0]) for r in rows] == list(range(IMAGES))
    return header, without_time(header, rows)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


def test_ray_missing_gives_one_sentence(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "log.tsv"
    assert main(cli_args(files, out, "--ray")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "pip install 'dsmooth[ray]'" in err, err
    assert not out.exists()


def test_workers_without_ray_is_an_error(files, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    assert main(cli_args(files, out, "--workers", "2")) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_cluster_fails_fast_with_one_sentence(files, tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "log.tsv"
    start = time.monotonic()
    assert main(cli_args(files, out, "--ray", f"127.0.0.1:{free_port()}")) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsmooth: error: cannot reach a Ray cluster at 127.0.0.1:"), err
    assert "\n" not in err
    assert not out.exists()


def test_sort_log_orders_rows_by_index_and_drops_a_partial_row(tmp_path):
    from dsmooth.runs.distributed import sort_log

    log = tmp_path / "log.tsv"
    log.write_text("idx\tlabel\n10\t1\n2\t0\n7\t2\n3\t")
    sort_log(log)
    assert log.read_text() == "idx\tlabel\n2\t0\n7\t2\n10\t1\n"
    assert not (tmp_path / "log.tsv.tmp").exists()


def test_python_options_take_the_cli_defaults(files):
    from dsmooth.certify.methods import CohenCP
    from dsmooth.runs.job import CertifyJob

    job = CertifyJob.from_options({**options(files), "out": "out.tsv"})
    assert (job.n, job.batch, job.out, job.skip) == (N, BATCH, "out.tsv", 1)
    assert job.alpha == 0.001
    assert job.method == CohenCP(job.method.n0, N, 0.001)
    assert pickle.loads(pickle.dumps(job)) == job  # what each Ray worker is sent
    with pytest.raises(UserError, match="unknown certify options \\['nn'\\]"):
        CertifyJob.from_options({**options(files), "nn": 5, "out": "out.tsv"})
    with pytest.raises(UserError, match="'out'"):
        CertifyJob.from_options(options(files))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Non-default ports for one node, so two nodes (and other Ray users) never clash."""
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    ]
    return [arg for flag in flags for arg in (flag, str(free_port()))]


def wait_for_block(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """`ray start --block` prints "--block" once the node runs."""
    while "--block" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ray start failed:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


@pytest.fixture
def two_node_cluster(tmp_path):
    """`ray start --head` on 127.0.0.1 plus a second `ray start --address` node, 1 CPU each.

    Both run with --block, so stopping them is a SIGTERM to the two processes this fixture
    started (not `ray stop`, which stops every Ray process on the machine); whatever of a
    node's process group survives is killed. Token auth with a per-test token.
    """
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        ray_bin = shutil.which("ray") or pytest.skip("the `ray` command is not on PATH")
    temp = tempfile.mkdtemp(prefix="dsray")  # short: Ray's socket paths must stay < 108 chars
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    address = f"127.0.0.1:{free_port()}"
    common = [
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(100 * 2**20),
        "--disable-usage-stats",
        "--temp-dir",
        temp,
        "--block",
    ]
    procs = []

    def start(name: str, *flags: str) -> None:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    [str(ray_bin), "start", *flags, *common, *node_ports()],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        wait_for_block(procs[-1], log, time.monotonic() + 90)

    try:
        start(
            "head",
            "--head",
            "--port",
            address.split(":")[1],
            "--include-dashboard",
            "false",
            "--ray-client-server-port",
            str(free_port()),
        )
        start("node", "--address", address)
        yield address, env
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(40)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the node's own process group only
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_cli_on_a_two_node_cluster(files, reference, two_node_cluster, tmp_path):
    address, env = two_node_cluster
    _header, expected = reference
    out = tmp_path / "cluster.tsv"
    relative = {**files, "data": "data.npz", "classifier": "mlp.pt"}  # nodes run elsewhere
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsmooth.cli",
            *cli_args(relative, out, "--ray", address, "--workers", "2", "--sorted"),
        ],
        cwd=files["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "certified 16 images" in run.stderr
    assert "on 2 Ray workers" in run.stderr
    assert without_time(*read_rows(out)) == expected


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_two_workers_give_the_single_process_rows(files, reference, tmp_path):
    from dsmooth.runs.distributed import certify_dataset

    header, expected = reference
    out = tmp_path / "ray.tsv"
    summary = certify_dataset(options(files), out, workers=2, progress=False)
    assert (summary.images, summary.workers, summary.failures) == (IMAGES, 2, 0)
    got_header, rows = read_rows(out)
    assert got_header == header
    assert sorted(without_time(header, rows), key=lambda r: int(r[0])) == expected

    # Rerunning a complete log starts no workers and appends nothing.
    before = out.read_text()
    assert certify_dataset(options(files), out, progress=False).images == 0
    assert out.read_text() == before


def worker_pids() -> list[int]:
    """Processes of CertifyWorker actors (Ray sets their title to ray::CertifyWorker...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                b"ray::CertifyWorker"
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes in /proc")
@pytest.mark.usefixtures("ray_local")
def test_killed_worker_loses_nothing(files, reference, tmp_path):
    """Resume a log cut mid-row (a killed driver), kill a worker mid-run, sort at the end."""
    from dsmooth.runs.distributed import certify_dataset

    _header, expected = reference
    out = tmp_path / "ray.tsv"
    lines = (files["root"] / "single.tsv").read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:5])  # header, 4 rows, a partial row
    result = {}

    def job():
        try:
            result["summary"] = certify_dataset(
                options(files), out, workers=2, sort=True, progress=False
            )
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=job)
    thread.start()
    # Kill a worker as soon as one is up and a new row is written: 11 images are still to
    # go, so the killed worker holds one. (Waiting for both workers raced on a loaded
    # machine: one actor could start so late that the other had finished everything.)
    deadline = time.monotonic() + 180
    pids = []
    while time.monotonic() < deadline and thread.is_alive():
        if out.read_text().count("\n") >= 6 and (pids := worker_pids()):
            break
        time.sleep(0.01)
    assert pids, f"no busy worker to kill (workers {pids})"
    assert thread.is_alive(), f"no busy worker to kill (workers {pids})"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert (summary.skipped, summary.images, summary.failures) == (4, IMAGES - 4, 1)
    assert summary.rescheduled >= 1
    # every index exactly once, rows as in the single-process run, sorted by index
    assert without_time(*read_rows(out)) == expected


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_bad_model_or_too_many_workers_is_one_sentence_and_writes_nothing(files, tmp_path):
    from dsmooth.runs.distributed import certify_dataset

    out = tmp_path / "log.tsv"
    with pytest.raises(UserError, match="use --workers 2 or fewer"):
        certify_dataset(options(files), out, workers=3, progress=False)
    with pytest.raises(UserError, match="cannot load a model"):
        certify_dataset(
            {**options(files), "classifier": str(tmp_path / "missing.pt")},
            out,
            workers=1,
            progress=False,
        )
    assert not out.exists()
