"""Certify against a real model server process on loopback (`dsmooth serve`, uvicorn).

The server runs in its own process and speaks the Open Inference Protocol v2 and
TensorFlow Serving REST over a real socket; results must equal the local ones on the
same noise, and the log must count the queries spent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from byoc_models import NUM_CLASSES, build  # noqa: E402
from service_helpers import dsmooth_server, wait_ready  # noqa: E402

from dsmooth.certify.smooth import Smooth  # noqa: E402
from dsmooth.cli import main  # noqa: E402
from dsmooth.data.images import ImageSet  # noqa: E402
from dsmooth.runs.local import certify_dataset, predict_dataset  # noqa: E402
from dsmooth.sources import load_model  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "src/dsmooth/assets/cifar10_test_every20.npz"
SIGMA, N0, N, BATCH = 0.25, 8, 48, 24
CERTIFY = {"n0": N0, "n": N, "alpha": 0.01, "batch_size": BATCH, "progress": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`dsmooth serve` on 127.0.0.1 with a free port, serving the small CNN as 'small'."""
    folder = tmp_path_factory.mktemp("serve")
    model_path = folder / "small.pt"
    torch.jit.save(torch.jit.trace(build(), torch.rand(2, 3, 32, 32)), str(model_path))
    args = ["serve", "--classifier", str(model_path), "--name", "small", "--port", "0"]
    with dsmooth_server([*args, "--input-shape", "3,32,32"]) as running:
        wait_ready(running.url)
        yield running.url


@pytest.fixture(scope="module")
def data() -> ImageSet:
    d = np.load(ASSET)
    return ImageSet(d["images"][:3], d["labels"][:3])


def rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [line.split("\t") for line in lines]


def results_without_time(path: Path, ncols: int = 5) -> list[list[str]]:
    table = rows(path)
    return [r[:4] for r in table[1:]] if ncols == 5 else table


def test_metadata_announces_nchw_input(server):
    meta = httpx.get(f"{server}/v2/models/small", timeout=5).json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    remote = load_model(f"{server}/v2/models/small")
    assert remote.contract.layout == "NCHW"
    assert remote.input_name == "input"


@pytest.mark.parametrize("path", ["/v2/models/small", "/v1/models/small"])
def test_certify_over_http_equals_local(server, data, tmp_path, path):
    local = Smooth(build(), NUM_CLASSES, SIGMA, seed=3)
    remote_model = load_model(server + path, request_size=BATCH, concurrency=2)
    remote = Smooth(remote_model, NUM_CLASSES, SIGMA, seed=3)
    certify_dataset(local, data, out=tmp_path / "local.tsv", **CERTIFY)
    certify_dataset(remote, data, out=tmp_path / "remote.tsv", **CERTIFY)
    here, there = rows(tmp_path / "local.tsv"), rows(tmp_path / "remote.tsv")
    assert there[0] == [*here[0], "queries"]
    assert [r[:5] for r in there[1:]] == [r[:5] for r in here[1:]]
    assert [int(r[6]) for r in there[1:]] == [N0 + N] * len(data)
    assert remote_model.queries == (N0 + N) * len(data)
    # the counts themselves agree, not only the decisions
    x = data.image(0)
    assert np.array_equal(
        local.sample_counts(x, 64, 32, index=0), remote.sample_counts(x, 64, 32, index=0)
    )


def test_cli_certify_and_predict_against_server(server, data, tmp_path):
    npz = tmp_path / "d.npz"
    np.savez(npz, images=data.images, labels=data.labels)
    url = f"{server}/v2/models/small"
    common = ["--data", str(npz), "--sigma", str(SIGMA), "--n", str(N), "--seed", "3"]
    common += ["--batch", str(BATCH), "--no-progress", "--alpha", "0.01"]
    args = ["certify", "--classifier", url, *common, "--n0", str(N0), "--request-size", "32"]
    assert main([*args, "--out", str(tmp_path / "c.tsv"), "--concurrency", "3"]) == 0
    local = Smooth(build(), NUM_CLASSES, SIGMA, seed=3, noise="lattice")  # uint8 data: auto
    certify_dataset(local, data, out=tmp_path / "l.tsv", **CERTIFY)
    assert [r[:5] for r in rows(tmp_path / "c.tsv")[1:]] == [
        r[:5] for r in rows(tmp_path / "l.tsv")[1:]
    ]
    pargs = ["predict", "--classifier", url, *common, "--out", str(tmp_path / "p.tsv")]
    assert main(pargs) == 0
    predict_dataset(
        local, data, out=tmp_path / "lp.tsv", n=N, alpha=0.01, batch_size=BATCH, progress=False
    )
    got = rows(tmp_path / "p.tsv")
    assert got[0][-1] == "queries"
    assert [int(r[-1]) for r in got[1:]] == [N] * 3
    assert [r[:4] for r in got[1:]] == [r[:4] for r in rows(tmp_path / "lp.tsv")[1:]]


def test_query_budget_stops_cleanly_and_rerun_resumes(server, data, tmp_path, capsys):
    npz = tmp_path / "d.npz"
    np.savez(npz, images=data.images, labels=data.labels)
    out = tmp_path / "budget.tsv"
    args = ["certify", "--classifier", f"{server}/v1/models/small", "--data", str(npz)]
    args += ["--sigma", str(SIGMA), "--n0", str(N0), "--n", str(N), "--seed", "3"]
    args += ["--batch", str(BATCH), "--alpha", "0.01", "--out", str(out), "--no-progress"]
    per_image = N0 + N
    assert main([*args, "--max-queries", str(2 * per_image + 10)]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("dsmooth: engine:")]
    assert "query budget" in err, err
    assert len(lines) == 1, err
    first = out.read_text()
    assert first.endswith("\n")
    assert len(first.splitlines()) == 3  # header + 2 complete rows
    # resumes with the one image left (+1: the probe image that finds the number of classes)
    assert main([*args, "--max-queries", str(per_image + 1)]) == 0
    final = rows(out)
    assert [int(r[0]) for r in final[1:]] == [0, 1, 2]
    local = Smooth(build(), NUM_CLASSES, SIGMA, seed=3, noise="lattice")  # uint8 data: auto
    certify_dataset(local, data, out=tmp_path / "l.tsv", **CERTIFY)
    assert [r[:5] for r in final[1:]] == [r[:5] for r in rows(tmp_path / "l.tsv")[1:]]


def test_server_rejects_bad_requests_with_4xx(server):
    r = httpx.post(f"{server}/v2/models/small/infer", content=b"{", timeout=5)
    assert r.status_code == 400
    body = {"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32"}]}
    body["inputs"][0]["data"] = [0.5] * (3 * 8 * 8)
    r = httpx.post(f"{server}/v2/models/small/infer", json=body, timeout=5)
    assert r.status_code == 400
    assert "shape" in r.json()["error"]
    assert httpx.post(f"{server}/v2/models/other/infer", json=body, timeout=5).status_code == 404
    ok = {"instances": np.full((2, 3, 32, 32), 0.5).tolist()}
    r = httpx.post(f"{server}/v1/models/small:predict", json=ok, timeout=5)
    expected = build()(torch.full((2, 3, 32, 32), 0.5)).detach().numpy()
    assert np.allclose(np.asarray(r.json()["predictions"]), expected, atol=1e-5)
    assert (
        json.loads(httpx.get(f"{server}/v1/models/small", timeout=5).text)["model_version_status"][
            0
        ]["state"]
        == "AVAILABLE"
    )


@pytest.mark.slow
def test_ray_workers_count_queries_like_a_single_process(server, data, tmp_path):
    """`--ray` against a model server: same rows and the same `queries` column."""
    pytest.importorskip("ray")
    from dsmooth.runs.distributed import certify_dataset as certify_on_ray

    npz = tmp_path / "d.npz"
    np.savez(npz, images=data.images, labels=data.labels)
    url = f"{server}/v2/models/small"
    options = {"classifier": url, "data": str(npz), "sigma": SIGMA, "n0": N0, "n": N}
    options.update(batch=BATCH, seed=3, alpha=0.01, request_size=32)
    summary = certify_on_ray(options, tmp_path / "ray.tsv", workers=2, sort=True, progress=False)
    assert summary.images == len(data)
    assert summary.failures == 0
    remote = Smooth(load_model(url, request_size=32), NUM_CLASSES, SIGMA, seed=3, noise="lattice")
    certify_dataset(remote, data, out=tmp_path / "one.tsv", **CERTIFY)
    ray_rows, one_rows = rows(tmp_path / "ray.tsv"), rows(tmp_path / "one.tsv")
    assert ray_rows[0] == one_rows[0]
    assert ray_rows[0][-1] == "queries"
    t = ray_rows[0].index("time")
    assert [r[:t] + r[t + 1 :] for r in ray_rows[1:]] == [r[:t] + r[t + 1 :] for r in one_rows[1:]]
    assert [int(r[-1]) for r in ray_rows[1:]] == [N0 + N] * len(data)
