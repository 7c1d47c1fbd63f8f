"""The certification service over HTTP: routes, limits, policy, token, client, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import LinearClassifier  # noqa: E402
from service_helpers import LiveServer  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from dsmooth import Smooth  # noqa: E402
from dsmooth.deploy.client import CertifiedClient, ServerBusy, ServiceError  # noqa: E402
from dsmooth.deploy.service.app import Limits, build_service_app  # noqa: E402
from dsmooth.deploy.service.policy import CertifySettings, Policy  # noqa: E402
from dsmooth.deploy.service.scheduler import CertificationService  # noqa: E402
from dsmooth.deploy.service.server import check_binding, is_loopback, read_token  # noqa: E402
from dsmooth.errors import UserError  # noqa: E402

SHAPE = (3, 8, 8)
TOKEN = "a-test-token-of-some-length"


def server_settings(method: str = "sequential", **kw) -> CertifySettings:
    values = dict(
        method=method,
        sigma=0.25,
        alpha=0.01,
        n0=20,
        n=200,
        n_max=1000,
        radius=None,
        tol=None,
        seed=0,
        noise="gaussian",
    )
    values.update(kw)
    return CertifySettings(**values)


@pytest.fixture(scope="module")
def model():
    return LinearClassifier(3 * 8 * 8, 3).eval()


def make_app(model, method="sequential", queue=64, token=None, limits=None, **kw):
    service = CertificationService(model, 3, batch_size=64, queue=queue)
    policy = Policy(server_settings(method, **kw), n_cap=20_000)
    limits = limits or Limits(max_body_bytes=200_000, max_images=8, max_samples=100_000, timeout=10)
    app = build_service_app(
        service, policy, name="tiny", limits=limits, token=token, input_shape=SHAPE, grace=1.0
    )
    return app, service


def batch(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, *SHAPE)) / 255.0).astype(np.float32)


def v2_body(images: np.ndarray, **params) -> dict:
    return {
        "id": "r1",
        "parameters": params,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ],
    }


@pytest.fixture
def client(model):
    app, _ = make_app(model)
    with TestClient(app) as c:
        yield c


def test_v2_infer_equals_offline(client, model):
    images = batch(3)
    r = client.post("/v2/models/tiny/infer", json=v2_body(images, seed=4, index=10, radius=[0.2]))
    assert r.status_code == 200, r.text
    doc = r.json()
    out = {t["name"]: t["data"] for t in doc["outputs"]}
    assert doc["parameters"]["alpha"] == 0.01
    assert doc["parameters"]["seed"] == 4
    assert out["index"] == [10, 11, 12]
    smooth = Smooth(model, 3, 0.25, seed=4)
    for i, x in enumerate(images):
        label, radius = smooth.certify(
            torch.from_numpy(x),
            20,
            200,
            0.01,
            50,
            index=10 + i,
            method="sequential",
            radius=[0.2],
            n_max=1000,
        )
        assert (out["prediction"][i], out["radius"][i]) == (label, radius)


def test_json_route_and_metadata(client):
    r = client.post("/v1/certify", json={"images": batch(2).tolist(), "alpha": 0.001})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["guarantee"]["alpha"] == 0.001
    assert doc["guarantee"]["method"] == "sequential"
    assert [c["index"] for c in doc["certificates"]] == [0, 1]
    assert {"prediction", "radius", "pA_lower", "n_used", "reason"} <= set(doc["certificates"][0])
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 8, 8]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"alpha": 0.05}, 400, "'alpha'"),
        ({"n_max": 10}, 400, "'n_max'"),
        ({"n_max": 10**6}, 400, "'n_max'"),
        ({"sigma": 0.5}, 400, "'sigma'"),
        ({"method": "cp"}, 400, "'method'"),
        ({"n": 500}, 400, "'n'"),
        ({"tol": 1.0}, 400, "'tol'"),
        ({"radius": [-1]}, 400, "'radius'"),
        ({"seed": "x"}, 400, "'seed'"),
        ({"bogus": 1}, 400, "'bogus'"),
        ({"timeout": 100}, 400, "'timeout'"),
        ({"index": -1}, 400, "'index'"),
    ],
)
def test_a_request_may_not_loosen_the_settings(client, body, status, words):
    r = client.post("/v1/certify", json={"images": batch(1).tolist(), **body})
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.text


def test_tightening_is_accepted(client):
    r = client.post(
        "/v1/certify",
        json={"images": batch(1).tolist(), "alpha": 0.001, "n_max": 2000, "n0": 50, "tol": 0.01},
    )
    assert r.status_code == 200, r.text
    g = r.json()["guarantee"]
    assert (g["alpha"], g["n_max"], g["n0"], g["tol"]) == (0.001, 2000, 50, 0.01)


def test_bad_input_gets_a_4xx_naming_the_problem(client):
    def infer(doc, path="/v2/models/tiny/infer"):
        return (
            client.post(path, json=doc)
            if not isinstance(doc, bytes)
            else client.post(path, content=doc)
        )

    images = batch(1)
    cases = [
        (infer(v2_body(images), "/v2/models/other/infer"), 404, "unknown model"),
        (infer(b"{not json"), 400, "not valid JSON"),
        (infer({"inputs": []}), 400, "exactly one tensor"),
        (infer(v2_body(batch(1)[:, :, :4])), 400, "shape"),
        (infer(v2_body(images * 2)), 400, "[0, 1]"),
        (infer(json.dumps(v2_body(np.full((1, *SHAPE), np.nan, np.float32))).encode()), 400, "NaN"),
        (
            infer(
                {
                    **v2_body(images),
                    "inputs": [{**v2_body(images)["inputs"][0], "datatype": "FP16"}],
                }
            ),
            400,
            "datatype",
        ),
        (infer({"inputs": [{"shape": [1, 3, 8, 8], "data": [0.5] * 10}]}), 400, "do not fill"),
        (infer({"inputs": [{"shape": [1, 3, 8, 8], "data": ["a"] * 192}]}), 400, "numbers"),
        (infer(v2_body(batch(9))), 413, "limit is 8"),
        (infer(b"[" + b"0," * 200_000 + b"0]"), 413, "exceeds"),
        (
            client.post("/v1/certify", json={"images": batch(8).tolist(), "n_max": 20_000}),
            413,
            "noise samples",
        ),
        (client.post("/v1/certify", json={"images": [1, 2]}), 400, "N x C x H x W"),
        (
            client.post("/v1/certify", json={"images": batch(1).tolist(), "noise": "lattice"}),
            400,
            "'noise'",
        ),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (status, r.text)
        assert words in r.json()["error"], (status, r.text)


def test_uint8_input_and_lattice_noise(model):
    app, _ = make_app(model, method="cp", noise="lattice")
    levels = np.random.default_rng(0).integers(0, 256, (1, *SHAPE))
    with TestClient(app) as c:
        r = c.post("/v1/certify", json={"images": levels.tolist(), "datatype": "UINT8"})
        assert r.status_code == 200, r.text
        x = torch.from_numpy(levels[0].astype(np.uint8)).float().div_(255.0)
        label, radius = Smooth(model, 3, 0.25, noise="lattice").certify(x, 20, 200, 0.01, index=0)
        cert = r.json()["certificates"][0]
        assert (cert["prediction"], cert["radius"]) == (label, radius)
        off_grid = c.post("/v1/certify", json={"images": (batch(1) + 1e-3).clip(0, 1).tolist()})
        assert off_grid.status_code == 400
        assert "8-bit" in off_grid.json()["error"]


def test_token_is_required_except_for_probes(model):
    app, _ = make_app(model, token=TOKEN)
    with TestClient(app) as c:
        body = {"images": batch(1).tolist()}
        assert c.post("/v1/certify", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/v1/certify", json=body, headers=wrong).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        ok = c.post("/v1/certify", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_health_and_metrics(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    client.post("/v1/certify", json={"images": batch(2).tolist()})
    client.post("/v1/certify", json={"images": batch(1).tolist(), "alpha": 0.9})
    text = client.get("/metrics").text
    for name in (
        'dsmooth_requests_total{route="/v1/certify",code="200"} 1',
        'dsmooth_requests_total{route="/v1/certify",code="400"} 1',
        "dsmooth_certificates_total 2",
        "dsmooth_samples_per_second",
        "dsmooth_queue_images 0",
        "dsmooth_abstain_rate",
        'dsmooth_request_seconds_bucket{le="+Inf"} 1',
    ):
        assert name in text, name


def test_binding_rule_and_token_sources(tmp_path):
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.2")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(UserError, match="without a bearer token"):
        check_binding("0.0.0.0", None)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_token(str(path), {}) == TOKEN
    assert read_token(None, {"DSMOOTH_SERVE_TOKEN": TOKEN}) == TOKEN
    assert read_token(None, {}) is None
    path.write_text("short")
    with pytest.raises(UserError, match="16 characters"):
        read_token(str(path), {})


def test_client_flood_and_shutdown_on_a_real_server(model):
    before = set(threading.enumerate())
    app, service = make_app(model, queue=2, token=TOKEN, n_max=1000)
    live = LiveServer(app)
    try:
        with CertifiedClient(live.url, token=TOKEN, timeout=30) as client:
            certs = client.certify(batch(2), seed=1, index=3, radius=[0.25])
            assert [c.index for c in certs] == [3, 4]
            assert certs[0].guarantee["seed"] == 1
            with pytest.raises(ServiceError, match="'alpha'") as e:
                client.certify(batch(1), alpha=0.5)
            assert e.value.status == 400
        with pytest.raises(ServiceError) as e:
            CertifiedClient(live.url, timeout=5).certify(batch(1))
        assert e.value.status == 401

        slow = {"images": batch(2).tolist(), "n_max": 20_000, "tol": 1e-6, "timeout": 3}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        results = []

        def post():
            results.append(
                httpx.post(f"{live.url}/v1/certify", json=slow, headers=headers, timeout=30)
            )

        hogs = [threading.Thread(target=post) for _ in range(4)]
        for t in hogs:
            t.start()
        for t in hogs:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert 200 in codes, codes
        assert 429 in codes, codes
        busy = next(r for r in results if r.status_code == 429)
        assert int(busy.headers["Retry-After"]) >= 1
        service.submit(list(batch(2)), server_settings(n_max=20_000, tol=1e-6))  # fills it
        with pytest.raises(ServerBusy) as e, CertifiedClient(live.url, token=TOKEN) as client:
            client.certify(batch(1))
        assert e.value.retry_after >= 1
    finally:
        live.stop()
    assert not service.ready
    time.sleep(0.1)
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, leaked


def test_disconnected_client_frees_its_slots(model):
    def slow(x):  # about 30 s for this request, unless its client goes away
        time.sleep(0.05)
        return model(x)

    app, service = make_app(slow, n_max=20_000, tol=1e-6)
    live = LiveServer(app)
    try:
        body = {"images": batch(2).tolist(), "n_max": 20_000}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{live.url}/v1/certify", json=body, timeout=0.5)
        end = time.monotonic() + 5
        while service.in_flight and time.monotonic() < end:
            time.sleep(0.05)
        assert service.in_flight == 0
    finally:
        live.stop()


def test_malformed_bodies_get_400_not_500(client):
    """Empty dimensions, integers beyond float range and deep nesting name the problem."""

    def tensor(shape, data):
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]}

    cases = [
        (client.post("/v2/models/tiny/infer", json=tensor([1, 0, 8, 8], [])), "empty dimension"),
        (client.post("/v1/certify", json={"images": [[[[]]]]}), "empty dimension"),
        (
            client.post(
                "/v2/models/tiny/infer", content=json.dumps(tensor([1], [10**400])).encode()
            ),
            "numbers",
        ),
        (client.post("/v1/certify", content=b"[" * 100_000 + b"]" * 100_000), "nested"),
    ]
    for r, words in cases:
        assert r.status_code == 400, r.text
        assert words in r.json()["error"], r.text


def test_tightened_parameters_are_the_ones_used(model):
    """A request's own alpha, n0, n / n_max, radii, tol, seed and index are the ones the
    certificate is computed with, not only the ones reported: the answers equal offline
    certification with the request's parameters (and differ from the server's own)."""
    from dsmooth.certify.sequential import certify_sequential

    images = batch(4, seed=5)
    requests = [
        ("sequential", {"alpha": 0.002, "n0": 30, "n_max": 2500, "radius": [0.15, 0.4]}),
        ("sequential", {"alpha": 0.001, "n_max": 3000, "tol": 0.01}),
        ("cp", {"alpha": 0.003, "n0": 25, "n": 400}),
    ]
    for method, params in requests:
        app, _ = make_app(model, method=method)
        with TestClient(app) as c:
            body = {"images": images.tolist(), "seed": 8, "index": 20, **params}
            r = c.post("/v1/certify", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        for key, value in params.items():
            assert doc["guarantee"][key] == value, (key, doc["guarantee"])
        smooth = Smooth(model, 3, 0.25, seed=8)
        n0 = params.get("n0", 20)
        for i, (x, cert) in enumerate(zip(images, doc["certificates"], strict=True)):
            x = torch.from_numpy(x)
            if method == "cp":
                want = smooth.certify(x, n0, params["n"], params["alpha"], 50, index=20 + i)
                assert (cert["prediction"], cert["radius"]) == want
                continue
            out = certify_sequential(
                smooth, x, n0=n0, alpha=params["alpha"], n_max=params["n_max"],
                radius=params.get("radius"), batch_size=50, index=20 + i, tol=params.get("tol"),
            )  # fmt: skip
            got = (cert["prediction"], cert["radius"], cert["n_used"], cert["pA_lower"])
            assert got == (out.prediction, out.radius, out.n_used, out.p_lower)


def test_v2_target_radii_round_trip_in_full_precision(client, model):
    """OIP v2 parameters are scalars: radii go in and come back as a comma-separated
    string, unrounded (the radii decide when sampling stops, so a rounded echo would
    not reproduce the answer)."""
    images = batch(1, seed=2)
    r = client.post("/v2/models/tiny/infer", json=v2_body(images, radius="0.2,0.123456789"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["parameters"]["radius"] == "0.2,0.123456789"
    out = {t["name"]: t["data"] for t in doc["outputs"]}
    label, radius = Smooth(model, 3, 0.25).certify(
        torch.from_numpy(images[0]), 20, 200, 0.01, 50, index=0, method="sequential",
        radius=[0.2, 0.123456789], n_max=1000,
    )  # fmt: skip
    assert (out["prediction"][0], out["radius"][0]) == (label, radius)
    bad = client.post("/v2/models/tiny/infer", json=v2_body(images, radius="0.2,x"))
    assert bad.status_code == 400
    assert "'radius'" in bad.json()["error"]


def test_seed_and_index_stay_below_2_to_the_32(client):
    """Noise keys are hashed as 32-bit words: beyond 2^32 distinct (seed, index, stage)
    keys can share noise, so such seeds and indices are refused."""
    from dsmooth.certify.noise import philox_key

    assert (philox_key(0, 2**32, 0) == philox_key(0, 0, 1)).all()  # why the limit exists
    one, two = batch(1).tolist(), batch(2).tolist()
    for body in (
        {"images": one, "seed": 2**32},
        {"images": one, "index": 2**32},
        {"images": two, "index": 2**32 - 1},
    ):
        r = client.post("/v1/certify", json=body)
        assert r.status_code == 400, r.text
        assert "2^32" in r.json()["error"], r.text
    ok = client.post("/v1/certify", json={"images": two, "index": 2**32 - 2, "seed": None})
    assert ok.status_code == 200
    assert ok.json()["certificates"][1]["index"] == 2**32 - 1
    default = client.post("/v1/certify", json={"images": one, "index": None, "timeout": None})
    assert default.status_code == 200
    assert default.json()["certificates"][0]["index"] == 0
    with pytest.raises(UserError, match="seed"):
        Policy(server_settings(seed=-1), n_cap=20_000)


def test_bound_address_is_checked_after_resolution():
    """'localhost' passes the name check; the address actually bound is checked too."""
    import socket

    from dsmooth.deploy.service.server import check_bound

    loop = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    loop.bind(("127.0.0.1", 0))
    check_bound(loop, None)
    loop.close()
    anywhere = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    anywhere.bind(("0.0.0.0", 0))  # bound, never listening
    with pytest.raises(UserError, match="not loopback"):
        check_bound(anywhere, None)
    assert anywhere.fileno() == -1, "the refused socket is closed"


def test_shutdown_gives_in_flight_requests_the_grace_period_not_their_deadline(model):
    """uvicorn waits for in-flight requests before the app's lifespan shutdown; the
    service must start closing when shutdown begins, or a request runs on to its own
    deadline (here 10 s) instead of being answered after the grace period."""

    def slow(x):
        time.sleep(0.05)
        return model(x)

    app, service = make_app(slow, n_max=20_000, tol=1e-6)
    answers = []
    with LiveServer(app, 15, on_shutdown=lambda: service.close(0.5)) as live:
        end = time.monotonic() + 10
        body = {"images": batch(1).tolist(), "n_max": 20_000, "timeout": 10}
        poster = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{live.url}/v1/certify", json=body, timeout=30)
            )
        )
        poster.start()
        while not service.in_flight and time.monotonic() < end:
            time.sleep(0.01)
        stopped = time.monotonic()
        live.server.should_exit = True
        poster.join(20)
        elapsed = time.monotonic() - stopped
    assert answers, answers
    assert answers[0].status_code == 200, answers
    cert = answers[0].json()["certificates"][0]
    assert cert["reason"] == "shutdown", cert
    assert cert["stopped_early"], cert
    assert elapsed < 5, elapsed


# --- backpressure before work, at the ASGI level (what the app reads, and when) -----------


async def asgi_call(app, path: str, headers: dict, receive) -> tuple[int, dict, bytes]:
    """Call `app` with one POST whose body comes from `receive`; (status, headers, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), str(v).encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def asgi_post(app, path: str, headers: dict, receive) -> tuple[int, dict, bytes]:
    return asyncio.run(asgi_call(app, path, headers, receive))


def body_receiver(body: bytes, calls: list, gate: asyncio.Event | None = None):
    """An ASGI receive that hands out `body` once (after `gate`, if given), recording each
    call; later calls wait (no disconnect) until cancelled."""

    async def receive():
        calls.append("receive")
        if len(calls) > 1:
            await asyncio.Event().wait()
        if gate is not None:
            await gate.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_a_full_queue_answers_429_before_the_body_is_read(model):
    app, service = make_app(model, queue=2)
    try:
        hog = service.submit(list(batch(2)), server_settings(n_max=20_000, tol=1e-6))
        body = json.dumps({"images": batch(1).tolist()}).encode()
        calls: list = []
        status, headers, answer = asgi_post(
            app, "/v1/certify", {"content-length": len(body)}, body_receiver(body, calls)
        )
        assert status == 429, answer
        assert int(headers["retry-after"]) >= 1, answer
        assert "2 of 2 image slots" in json.loads(answer)["error"]
        assert calls == [], "the body was read before the queue was checked"
        service.cancel(hog)
        hog.future.result(timeout=30)
        status, _, answer = asgi_post(
            app, "/v1/certify", {"content-length": len(body)}, body_receiver(body, [])
        )
        assert status == 200, answer
    finally:
        service.close()


def test_a_request_whose_body_is_being_read_holds_a_queue_slot(model):
    """A flood of bodies is not read all at once: each request being read holds one of
    the queue's slots, so with one slot a second request is refused while the first is
    still sending, and the first is answered once its body arrives."""
    app, service = make_app(model, queue=1)
    body = json.dumps({"images": batch(1).tolist()}).encode()
    headers = {"content-length": len(body)}

    async def main():
        gate, first_calls, second_calls = asyncio.Event(), [], []
        first = asyncio.create_task(
            asgi_call(app, "/v1/certify", headers, body_receiver(body, first_calls, gate))
        )
        while not first_calls:  # the first request is reading its body
            await asyncio.sleep(0.01)
        second = await asgi_call(app, "/v1/certify", headers, body_receiver(body, second_calls))
        gate.set()
        return await first, second, second_calls

    try:
        first, second, second_calls = asyncio.run(main())
    finally:
        service.close()
    assert second[0] == 429, second
    assert "retry-after" in second[1], second
    assert second_calls == [], second
    assert first[0] == 200, first


def test_a_stalled_upload_gets_408_and_frees_its_slot(model):
    """A client that never finishes its body is answered after the request timeout, and
    the queue slot it held while being read is free again."""
    limits = Limits(max_body_bytes=200_000, max_images=8, max_samples=100_000, timeout=0.3)
    app, service = make_app(model, queue=1, limits=limits)
    body = json.dumps({"images": batch(1).tolist()}).encode()
    headers = {"content-length": len(body)}

    async def main():
        never = asyncio.Event()  # the body never arrives
        stalled = await asgi_call(app, "/v1/certify", headers, body_receiver(body, [], never))
        after = await asgi_call(app, "/v1/certify", headers, body_receiver(body, []))
        return stalled, after

    try:
        stalled, after = asyncio.run(main())
    finally:
        service.close()
    assert stalled[0] == 408, stalled
    assert "did not arrive within 0.3 s" in stalled[2].decode(), stalled
    assert after[0] == 200, after


def test_the_body_limit_follows_the_input_shape_and_image_limit(model):
    """Derived from the shape and --max-images-per-request: a declared body beyond it is
    refused before it is read, with a 413 that names the limit; the largest request the
    image limit allows, written at full float precision, fits."""
    from dsmooth.deploy.service.wire import body_limit

    assert body_limit((3, 8, 8), 16) > body_limit((3, 8, 8), 8) > body_limit((1, 8, 8), 8)
    limits = Limits(max_images=8, max_samples=100_000, timeout=10)
    assert limits.body_bytes(SHAPE) == body_limit(SHAPE, 8)
    service = CertificationService(model, 3, batch_size=64, queue=64)
    app = build_service_app(
        service,
        Policy(server_settings(), 20_000),
        name="tiny",
        limits=limits,
        token=None,
        input_shape=SHAPE,
        grace=1.0,
    )
    try:
        tiny = np.random.default_rng(0).random((8, *SHAPE)) * 1e-30  # long reprs: 1e-30 scale
        largest = json.dumps(
            {"images": tiny.astype(np.float32).astype(np.float64).tolist()}, indent=1
        ).encode()
        assert len(largest) <= body_limit(SHAPE, 8), (len(largest), body_limit(SHAPE, 8))
        calls: list = []
        declared = {"content-length": body_limit(SHAPE, 8) + 1}
        status, _, answer = asgi_post(app, "/v1/certify", declared, body_receiver(b"", calls))
        message = json.loads(answer)["error"]
        assert status == 413, answer
        assert calls == [], answer
        assert f"{body_limit(SHAPE, 8)} bytes" in message
        assert "8 images of 3x8x8" in message
        status, _, answer = asgi_post(
            app,
            "/v1/certify",
            {"content-length": len(largest)},
            body_receiver(largest, []),
        )
        assert status == 200, answer
    finally:
        service.close()


# --- token, errors, guarantee, client ---------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER {TOKEN}", 200),
        (f"Bearer   {TOKEN}", 200),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        ("Bearer", 401),
        (f"Bearer {TOKEN}x", 401),
    ],
)
def test_the_bearer_scheme_is_matched_in_any_case(model, header, status):
    """RFC 7235 section 2.1: the auth scheme is case-insensitive; the token is not."""
    app, _ = make_app(model, token=TOKEN)
    auth = {"Authorization": header}
    with TestClient(app) as c:
        r = c.post("/v1/certify", json={"images": batch(1).tolist()}, headers=auth)
        assert r.status_code == status, r.text
        assert c.get("/metrics", headers=auth).status_code == status


def test_a_model_failure_is_a_generic_500_and_the_details_are_logged(model, caplog):
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("weights at /srv/secret/model.pt are corrupt")
        return model(x)

    app, _ = make_app(flaky)
    with TestClient(app) as c, caplog.at_level("ERROR", logger="dsmooth.service"):
        r = c.post("/v1/certify", json={"images": batch(1).tolist()})
        assert r.status_code == 500
        message = r.json()["error"]
        assert "secret" not in message, message
        assert "RuntimeError" not in message, message
        ref = message.split("error id ")[1].rstrip(").")
        logged = [rec for rec in caplog.records if ref in rec.getMessage()]
        assert logged
        assert "corrupt" in str(logged[0].exc_info[1])
        again = c.post("/v1/certify", json={"images": batch(1).tolist()})
        assert again.status_code == 200, again.text  # the worker keeps serving


GUARANTEE_TYPES = {
    "method": str,
    "sigma": float,
    "alpha": float,
    "n0": int,
    "n": int,
    "n_max": int,
    "radius": list,
    "tol": float,
    "seed": int,
    "noise": str,
    "noise_version": int,
    "noise_keys": str,
}


@pytest.mark.parametrize(
    ("method", "extra", "own"),
    [
        ("cp", {}, {"n"}),
        ("sequential", {}, {"n_max", "tol"}),
        ("sequential", {"radius": (0.25, 0.5)}, {"n_max", "radius"}),
    ],
)
def test_the_guarantee_is_complete_and_typed_on_both_routes(model, method, extra, own):
    """Every parameter that decides the certificate, with its value in effect (no nulls):
    the maximal-radius tolerance is reported even when the server left it at its default."""
    app, _ = make_app(model, method=method, **extra)
    with TestClient(app) as c:
        g = c.post("/v1/certify", json={"images": batch(1).tolist()}).json()["guarantee"]
        v2 = c.post("/v2/models/tiny/infer", json=v2_body(batch(1))).json()["parameters"]
        meta = c.get("/v2/models/tiny").json()["parameters"]
    shared = {"method", "sigma", "alpha", "n0", "seed", "noise", "noise_version", "noise_keys"}
    assert set(g) == shared | own, g
    for key, value in g.items():
        assert type(value) is GUARANTEE_TYPES[key], (key, value)
    if "tol" in g:
        assert g["tol"] == 0.1 * 0.25
    assert v2 == meta
    assert set(v2) == set(g)
    assert all(type(v) in (str, int, float) for v in v2.values()), v2  # v2: scalars only
    if "radius" in g:
        assert g["radius"] == [0.25, 0.5]
        assert v2["radius"] == "0.25,0.5"


def test_the_client_reads_retry_after_as_seconds_or_an_http_date():
    import email.utils

    from dsmooth.deploy.client import _certificates, retry_after

    now = 1_800_000_000.0
    assert retry_after("7", now) == 7.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert retry_after(email.utils.formatdate(now + 30), now) == 30.0  # a numeric zone
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after(None, now) == retry_after("soon", now) == retry_after("", now) == 1.0
    assert retry_after("\u00b2", now) == 1.0  # a superscript digit is no delay-seconds
    date = email.utils.formatdate(time.time() + 60, usegmt=True)
    busy = httpx.Response(429, headers={"Retry-After": date}, json={"error": "full"})
    with pytest.raises(ServerBusy) as e:
        _certificates(busy)
    assert 55 <= e.value.retry_after <= 60
