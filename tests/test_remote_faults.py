"""A misbehaving server on a real loopback socket: the client retries what is transient,
fails clearly on nonsense, and the result log never holds a half or wrong row.

The server (stdlib ThreadingHTTPServer, 127.0.0.1, port chosen by the OS) answers each
inference request according to a script: ok, 500, 429, drop (close the connection
without answering), sleep (past the client's timeout), badjson, wrongshape, 401.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("httpx")

from byoc_models import NUM_CLASSES, build

from dsmooth.certify.smooth import Smooth
from dsmooth.cli import main
from dsmooth.data.images import ImageSet
from dsmooth.errors import UserError
from dsmooth.runs.local import certify_dataset
from dsmooth.sources import load_model

ASSET = Path(__file__).resolve().parents[1] / "src/dsmooth/assets/cifar10_test_every20.npz"
SIGMA, N0, N, BATCH = 0.25, 8, 40, 24
FAST = dict(request_size=BATCH, concurrency=1, timeout=2.0, retries=5, backoff=0.01)


class ScriptedServer:
    """Answers v2 inference requests following `script` (then 'ok' or `default`)."""

    def __init__(self, default: str = "ok", token: str | None = None):
        self.script: list[str] = []
        self.default = default
        self.token = token
        self.seen: list[str] = []
        self.sleep = 3.0
        self.auth_headers: list[str | None] = []
        self.lock = threading.Lock()
        self.model = build()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                self.send_error(404)

            def do_POST(self):
                outer.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v2/models/m"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_action(self) -> str:
        with self.lock:
            action = self.script.pop(0) if self.script else self.default
            self.seen.append(action)
            return action

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        self.auth_headers.append(h.headers.get("Authorization"))
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(h, 401, b'{"error": "unauthorized"}')
        action = self.next_action()
        if action == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if action == "sleep":
            time.sleep(self.sleep)  # past the client's timeout; the reply goes nowhere
            return None
        if action in ("500", "503", "429", "401"):
            headers = {"Retry-After": "0"} if action == "429" else {}
            return self.reply(h, int(action), b'{"error": "scripted"}', headers)
        if action == "badjson":
            return self.reply(h, 200, b'{"outputs": [{"name": "logits", "shape": [')
        request = json.loads(body)["inputs"][0]
        x = torch.tensor(request["data"], dtype=torch.float32).reshape(request["shape"])
        with torch.inference_mode():
            out = self.model(x).numpy()
        if action == "wrongshape":
            out = out[:-1]
        answer = {"outputs": [{"name": "logits", "shape": list(out.shape), "datatype": "FP32"}]}
        answer["outputs"][0]["data"] = out.ravel().tolist()
        return self.reply(h, 200, json.dumps(answer).encode())

    @staticmethod
    def reply(h, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def data() -> ImageSet:
    d = np.load(ASSET)
    return ImageSet(d["images"][:3], d["labels"][:3])


@pytest.fixture(scope="module")
def local_log(data, tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("local") / "local.tsv"
    smooth = Smooth(build(), NUM_CLASSES, SIGMA, seed=5)
    certify_dataset(
        smooth, data, out=path, n0=N0, n=N, alpha=0.01, batch_size=BATCH, progress=False
    )
    return path.read_text().splitlines()


def certify_remote(url, data, out, **options):
    model = load_model(url, **{**FAST, **options})
    smooth = Smooth(model, NUM_CLASSES, SIGMA, seed=5)
    certify_dataset(smooth, data, out=out, n0=N0, n=N, alpha=0.01, batch_size=BATCH, progress=False)
    return model


def decisions(lines: list[str]) -> list[list[str]]:
    return [line.split("\t")[:5] for line in lines[1:]]


def test_transient_faults_are_retried_and_results_equal_local(server, data, tmp_path, local_log):
    server.script = ["500", "429", "drop", "sleep", "503", "ok", "ok", "500"]
    out = tmp_path / "log.tsv"
    model = certify_remote(server.url, data, out)
    lines = out.read_text().splitlines()
    assert decisions(lines) == decisions(local_log)
    requests_needed = len(data) * (1 + -(-N // BATCH))  # n0 fits one request
    assert server.seen.count("ok") == requests_needed
    queries = [int(line.split("\t")[-1]) for line in lines[1:]]
    assert sum(queries) == model.queries
    # image 0: five failed tries of its 8 selection images, one of its last 16 estimation
    # images; every try is counted, since a server may bill a failed request
    assert queries == [N0 + N + 5 * N0 + (N - BATCH), N0 + N, N0 + N]
    assert model.http.requests == len(server.seen)


def test_persistent_5xx_fails_clearly_without_a_half_row(server, data, tmp_path, local_log):
    server.script = ["ok"] * 3  # image 0 needs 3 requests (8 + 24 + 16)
    server.default = "503"
    out = tmp_path / "log.tsv"
    with pytest.raises(UserError, match=r"failed 6 times \(last: HTTP 503\).*rerun to resume"):
        certify_remote(server.url, data, out)
    text = out.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2
    assert decisions(lines) == decisions(local_log)[:1]
    server.default = "ok"  # the server recovers: the rerun resumes and completes
    certify_remote(server.url, data, out)
    assert decisions(out.read_text().splitlines()) == decisions(local_log)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("badjson", "invalid JSON"),
        ("wrongshape", r"shape \[23, 10\] for 24 images"),
        ("401", "refused the request: HTTP 401"),
    ],
)
def test_nonsense_is_a_clear_error_not_a_row(server, data, tmp_path, action, message):
    server.script = ["ok", "ok", "ok", "ok", action]  # fails on image 1's estimation
    out = tmp_path / "log.tsv"
    with pytest.raises(UserError, match=message):
        certify_remote(server.url, data, out)
    assert server.seen.count(action) == 1  # not retried: answering again would not help
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("\tqueries")


def test_timeouts_exhaust_retries_with_a_clear_error(server, data, tmp_path):
    server.default, server.sleep = "sleep", 1.5
    start = time.monotonic()
    with pytest.raises(UserError, match=r"failed 2 times \(last: no answer within 0.3 s\)"):
        certify_remote(server.url, data, tmp_path / "log.tsv", timeout=0.3, retries=1)
    assert time.monotonic() - start < 5


def test_unreachable_server_exits_2_with_one_line(tmp_path, data, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    npz = tmp_path / "d.npz"
    np.savez(npz, images=data.images, labels=data.labels)
    args = ["certify", "--classifier", f"http://127.0.0.1:{port}/v2/models/m"]
    args += ["--data", str(npz), "--sigma", "0.25", "--n0", "4", "--n", "8"]
    args += ["--out", str(tmp_path / "log.tsv"), "--retries", "1", "--retry-backoff", "0.01"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "connection failed" in err
    assert not (tmp_path / "log.tsv").exists()


def test_credentials_from_env_are_sent_and_never_shown(data, tmp_path, monkeypatch):
    server = ScriptedServer(token="s3cret-token")
    try:
        monkeypatch.setenv("MY_API_TOKEN", "s3cret-token")
        model = certify_remote(server.url, data, tmp_path / "ok.tsv", token_env="MY_API_TOKEN")
        assert set(server.auth_headers) == {"Bearer s3cret-token"}
        assert "s3cret" not in repr(model)
        assert "s3cret" not in repr(model.http)
        assert "s3cret" not in (tmp_path / "ok.tsv").read_text()
        token_file = tmp_path / "token"
        token_file.write_text("wrong-token\n")
        with pytest.raises(UserError) as e:
            certify_remote(server.url, data, tmp_path / "bad.tsv", token_file=str(token_file))
        assert "HTTP 401" in str(e.value)
        assert "wrong-token" not in str(e.value)
        monkeypatch.delenv("MY_API_TOKEN")
        with pytest.raises(UserError, match="MY_API_TOKEN is not set"):
            load_model(server.url, token_env="MY_API_TOKEN")
    finally:
        server.close()


def test_label_outputs_and_tf_serving_answers_are_decoded():
    """Servers may answer labels, or rows of named outputs; both become labels."""
    from dsmooth.sources.contract import InputContract
    from dsmooth.sources.remote import RemoteClassifier, parse_url
    from dsmooth.sources.remote_client import ClientOptions

    assert parse_url("http://h:1/v2/models/a/infer") == ("v2", "http://h:1/v2/models/a")
    assert parse_url("https://h/v1/models/a:predict") == ("tfserving", "https://h/v1/models/a")
    with pytest.raises(UserError, match="cannot tell the protocol"):
        parse_url("http://h:1/predict")
    r = RemoteClassifier(
        "http://127.0.0.1:9/v1/models/a",
        "tfserving",
        contract=InputContract(),
        client=ClientOptions(retries=0),
    )
    try:
        rows = {"predictions": [{"classes": 3, "probabilities": [0.1, 0.9]}] * 2}
        assert r._check(r._decode_tfs(rows), 2).tolist() == [[0.1, 0.9]] * 2
        r.output_name = "classes"
        assert r._check(r._decode_tfs(rows), 2).tolist() == [3, 3]
        assert r._check(r._decode_tfs({"predictions": [[4], [7]]}), 2).tolist() == [4, 7]
        with pytest.raises(UserError, match="without 'predictions'"):
            r._decode_tfs({"result": []})
        with pytest.raises(UserError, match=r"shape \[3\] for 2 images"):
            r._check(r._decode_tfs({"predictions": [1, 2, 3]}), 2)
    finally:
        r.close()
