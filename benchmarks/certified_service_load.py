"""Load and fault test of `dsmooth serve --smoothed` against offline certification, in one run.

    python benchmarks/certified_service_load.py --seconds 20 --out REPORT.txt
    python benchmarks/certified_service_load.py --seconds 2 --check 5   # a quick check

1. Offline: `Smooth.certify` on the same model, one image after another, for --seconds:
   samples/s.
2. The server, in its own process on 127.0.0.1 (fp32 eager torch, like the offline run),
   under 1, 8 and 32 concurrent asyncio httpx clients, each for --seconds: requests/s,
   p50/p99 latency, served samples/s and its ratio to offline, status codes, and the
   server's peak RSS (VmHWM).
3. A sample of the 2xx certificates (at least --check) is recomputed offline and must be
   equal (prediction, radius, samples used).
4. Faults, each reported with its status codes, whether every response was well formed,
   and that the server is still alive with its queue drained (no work left behind):
   - clients that disconnect mid-request (half a body sent; or waiting for the answer),
   - a flood of --flood concurrent requests past the queue bound (429s with Retry-After,
     the server's RSS before and after),
   - malformed and oversized bodies (400 / 404 / 413 naming the problem),
   - SIGTERM under load: requests in flight are answered ("shutdown"), a late one is
     refused, and the process exits within the grace period with no child left.
The run exits 1 when a certificate differs from offline or a fault case fails.
The default model is a small CNN on 3x32x32 written to a temporary TorchScript file;
--classifier/--denoiser take any spec `dsmooth serve` takes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmooth import Smooth, load_model
from dsmooth.pipeline.compose import compose

EXACT_ENV = {"DSMOOTH_PRECISION": "fp32", "DSMOOTH_COMPILE": "0", "DSMOOTH_BACKEND": "torch"}

#: Fault-case requests ask for LONG x --n samples, so they are still running when the
#: fault (a disconnect, the flood's queue bound, SIGTERM) reaches them.
LONG = 1000


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default=None, help="default: a small CNN (TorchScript)")
    p.add_argument("--denoiser", default=None)
    p.add_argument("--input-shape", default="3,32,32")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--n0", type=int, default=32)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--queue", type=int, default=64, help="server's bound on images in flight")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    p.add_argument("--check", type=int, default=100, help="2xx certificates to verify")
    p.add_argument(
        "--flood", type=int, default=None, help="concurrent requests of the flood (8 x --queue)"
    )
    p.add_argument("--grace", type=float, default=2.0, help="the server's --grace, seconds")
    p.add_argument("--out", default=None, help="also write the report here")
    return p.parse_args(argv)


class SmallCNN(nn.Module):
    """A fixed random CNN: a few hundred kFLOPs, so sampling and the server both matter."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def pool(count: int, shape) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(count)]


def pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float().div_(255.0)


def offline_rate(smooth: Smooth, images, args) -> float:
    samples, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        smooth.certify(pixels(images[i % len(images)]), args.n0, args.n, args.alpha, args.batch,
                       index=i)  # fmt: skip
        samples += args.n0 + args.n
        i += 1
    return samples / (time.perf_counter() - start)


def start_server(args, model_spec: str):
    cmd = [sys.executable, "-m", "dsmooth.cli", "serve", "--smoothed", "--classifier", model_spec]
    if args.denoiser:
        cmd += ["--denoiser", args.denoiser]
    cmd += ["--sigma", str(args.sigma), "--input-shape", args.input_shape, "--port", "0"]
    cmd += ["--method", "cp", "--n0", str(args.n0), "--n", str(args.n), "--alpha", str(args.alpha)]
    cmd += ["--batch", str(args.batch), "--queue", str(args.queue), "--threads", str(args.threads)]
    cmd += ["--max-images-per-request", "1", "--request-timeout", "300"]
    cmd += ["--grace", str(args.grace), "--n-cap", str(LONG * args.n)]  # long fault requests
    cmd += ["--public-noise"]  # so each answer can be checked against offline certify
    env = {**os.environ, **EXACT_ENV, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(180)
    match = re.search(r"http://127\.0\.0\.1:\d+", box[0] if box else "")
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {proc.stderr.read()[-2000:]}")
    return proc, match.group(0)


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident memory, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (a server should have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def load(url: str, clients: int, seconds: float, images):
    import httpx

    latencies, codes, certs = [], {}, []
    end = time.monotonic() + seconds

    async def one_client(c: int):
        rng = random.Random(c)
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while time.monotonic() < end:
                k = rng.randrange(len(images))
                index = rng.randrange(10**6)
                body = {"images": images[k][None].tolist(), "datatype": "UINT8", "index": index}
                start = time.monotonic()
                r = await http.post("/v1/certify", json=body)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.monotonic() - start)
                    certs.append((k, r.json()["certificates"][0]))
                elif r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) / 10)

    started = time.monotonic()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return time.monotonic() - started, latencies, codes, certs


# --- fault cases -----------------------------------------------------------------------


def metric_values(url: str) -> dict[str, float]:
    """The server's /metrics as {'name{labels}': value}."""
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def served_codes(before: dict, after: dict) -> dict[int, int]:
    """Status codes the server counted between two /metrics snapshots."""
    codes: dict[int, int] = {}
    for key, value in after.items():
        if key.startswith("dsmooth_requests_total{"):
            code = int(key.split('code="')[1].split('"')[0])
            delta = int(value - before.get(key, 0))
            if delta:
                codes[code] = codes.get(code, 0) + delta
    return dict(sorted(codes.items()))


def well_formed(response) -> bool:
    """A 200 with one complete certificate per image, or an error object that says why."""
    try:
        doc = response.json()
    except ValueError:
        return False
    if response.status_code == 200:
        fields = {"index", "prediction", "radius", "pA_lower", "n_used", "reason"}
        certs = doc.get("certificates")
        return bool(certs) and all(fields <= set(c) for c in certs) and "guarantee" in doc
    return isinstance(doc.get("error"), str) and bool(doc["error"])


def alive_and_drained(proc, url: str, timeout: float = 15.0) -> tuple[bool, str]:
    """Whether the server still runs and its queue empties (no work left behind)."""
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False, f"server exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/v2/health/live", timeout=5).status_code != 200:
                return False, "liveness probe failed"
            m = metric_values(url)
        except httpx.HTTPError as e:
            return False, f"server unreachable ({type(e).__name__})"
        if m["dsmooth_queue_images"] == 0 and m["dsmooth_requests_in_flight"] == 0:
            return True, "alive, queue drained"
        time.sleep(0.1)
    return False, f"queue not drained after {timeout:g} s: {m['dsmooth_queue_images']:g} images"


def long_body(image: np.ndarray, args, **params) -> dict:
    body = {"images": image[None].tolist(), "datatype": "UINT8", "n": LONG * args.n}
    return {**body, **params}


async def disconnects(url: str, images, args, clients: int = 8) -> dict:
    """Half of the clients send half a body and hang up; the others send a long request
    and hang up while it runs. Each must be dropped from the queue (499 on the server)."""
    import json

    import httpx

    host, port = url.removeprefix("http://").split(":")
    outcomes: dict[str, int] = {}

    async def half_body(k: int):
        body = json.dumps(long_body(images[k % len(images)], args)).encode()
        _reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/certify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await writer.wait_closed()
        outcomes["hung up mid-body"] = outcomes.get("hung up mid-body", 0) + 1

    async def waiting(k: int):
        async with httpx.AsyncClient(base_url=url, timeout=0.5) as http:
            try:
                r = await http.post("/v1/certify", json=long_body(images[k % len(images)], args))
                outcomes[f"answered {r.status_code}"] = (
                    outcomes.get(f"answered {r.status_code}", 0) + 1
                )
            except httpx.TimeoutException:
                outcomes["hung up waiting"] = outcomes.get("hung up waiting", 0) + 1

    tasks = [half_body(k) if k % 2 else waiting(k) for k in range(clients)]
    await asyncio.gather(*tasks)
    return outcomes


async def flood(url: str, images, args, count: int) -> tuple[dict, int, int]:
    """`count` requests at once, each long (a 2 s deadline ends the admitted ones):
    (status codes, malformed responses, 429s without Retry-After)."""
    import httpx

    codes: dict = {}
    malformed = no_retry_after = 0
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(k: int):
            nonlocal malformed, no_retry_after
            pixels_ = images[k % len(images)][None].astype(np.float32) / 255.0
            body = {"images": pixels_.tolist(), "n": LONG * args.n, "timeout": 2, "index": k}
            try:
                r = await http.post("/v1/certify", json=body)
            except httpx.HTTPError as e:
                codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
                return
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            malformed += not well_formed(r)
            no_retry_after += r.status_code == 429 and "retry-after" not in r.headers

        await asyncio.gather(*(one(k) for k in range(count)))
    return dict(sorted(codes.items(), key=str)), malformed, no_retry_after


def bad_bodies(url: str, shape, limit: int) -> list[tuple[str, int, int, bool]]:
    """(case, expected status, status, well formed) for malformed and oversized bodies."""
    import json

    import httpx

    good = np.full((1, *shape), 0.5, np.float32)
    other = np.full((1, shape[0], shape[1] * 2, shape[2]), 0.5, np.float32)
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *shape]}]}
    v2["inputs"][0]["data"] = good.ravel().tolist()
    big = b'{"images": [' + b"0.5, " * (limit // 5 + 1000) + b"0.5]}"

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    cases = [
        ("not JSON", 400, "/v1/certify", {"content": b"{not json"}),
        ("empty body", 400, "/v1/certify", {"content": b""}),
        ("JSON, not an object", 400, "/v1/certify", {"json": [1, 2, 3]}),
        ("wrong image shape", 400, "/v1/certify", {"json": {"images": other.tolist()}}),
        ("pixels outside [0, 1]", 400, "/v1/certify", {"json": {"images": (good * 3).tolist()}}),
        ("NaN pixels", 400, "/v1/certify",
         {"content": json.dumps({"images": np.full_like(good, np.nan).tolist()}).encode()}),
        ("strings for pixels", 400, "/v1/certify", {"json": {"images": [[[["a"]]]]}}),
        ("unknown datatype", 400, "/v1/certify",
         {"json": {"images": good.tolist(), "datatype": "FP16"}}),
        ("nested too deeply", 400, "/v1/certify", {"content": b"[" * 50_000 + b"]" * 50_000}),
        ("a loosening alpha", 400, "/v1/certify",
         {"json": {"images": good.tolist(), "alpha": 0.5}}),
        ("unknown model (v2)", 404, "/v2/models/nope/infer", {"json": v2}),
        ("values that do not fill the shape (v2)", 400, "/v2/models/dsmooth/infer",
         {"json": {"inputs": [{**v2["inputs"][0], "data": [0.5] * 7}]}}),
        ("2 images, the limit is 1", 413, "/v1/certify",
         {"json": {"images": np.concatenate([good, good]).tolist()}}),
        (f"{len(big)} bytes declared (limit {limit})", 413, "/v1/certify", {"content": big}),
        (f"{len(big)} bytes chunked, undeclared", 413, "/v1/certify", {"content": chunks()}),
    ]  # fmt: skip
    results = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, expected, path, kwargs in cases:
            try:
                r = http.post(path, headers={"Content-Type": "application/json"}, **kwargs)
                results.append((name, expected, r.status_code, well_formed(r)))
            except httpx.HTTPError as e:
                results.append((name, expected, type(e).__name__, False))
    return results


def sigterm_under_load(proc, url: str, images, args, clients: int = 8):
    """`clients` long requests in flight, then SIGTERM: each must be answered ("shutdown"),
    a request sent after the signal refused (503, or no connection), and the process must
    exit within the grace period plus a little, leaving no child process."""
    import signal

    import httpx

    answers: list = []

    def post(k: int):
        try:
            r = httpx.post(
                f"{url}/v1/certify", json=long_body(images[k], args, index=k), timeout=120
            )
            answers.append(r)
        except httpx.HTTPError as e:
            answers.append(type(e).__name__)

    threads = [threading.Thread(target=post, args=(k % len(images),)) for k in range(clients)]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while time.monotonic() < end and metric_values(url)["dsmooth_requests_in_flight"] < clients:
        time.sleep(0.05)
    kids = children(proc.pid)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        late = httpx.post(f"{url}/v1/certify", json=long_body(images[0], args), timeout=30)
        late = late.status_code
    except httpx.HTTPError as e:
        late = type(e).__name__
    for t in threads:
        t.join(60)
    try:
        code = proc.wait(args.grace + 30)
    except subprocess.TimeoutExpired:
        code = None
    exited = time.monotonic() - signalled
    left = [k for k in kids if Path(f"/proc/{k}").exists()]
    return answers, late, code, exited, kids, left


def fault_report(proc, url: str, images, args, shape) -> tuple[list[str], bool]:
    """Run the fault cases on the running server; (report lines, all passed)."""
    from dsmooth.deploy.service.wire import body_limit

    lines, ok = ["faults:"], True

    def verdict(passed: bool) -> str:
        nonlocal ok
        ok &= passed
        return "ok" if passed else "FAIL"

    before = metric_values(url)
    outcomes = asyncio.run(disconnects(url, images, args))
    alive, state = alive_and_drained(proc, url)
    codes = served_codes(before, metric_values(url))
    passed = alive and codes.get(499, 0) == sum(outcomes.values()) and set(codes) == {499}
    lines.append(
        f"  disconnects: clients {outcomes}; server codes {codes}; {state}: {verdict(passed)}"
    )

    count = args.flood or 8 * args.queue
    rss, hwm = peak_rss_mib(proc.pid, "VmRSS"), peak_rss_mib(proc.pid)
    before = metric_values(url)
    codes, malformed, bare = asyncio.run(flood(url, images, args, count))
    alive, state = alive_and_drained(proc, url)
    served = served_codes(before, metric_values(url))
    passed = alive and not malformed and not bare and set(codes) <= {200, 429} and 429 in codes
    passed &= codes.get(200, 0) <= args.queue
    lines.append(
        f"  flood of {count} (queue {args.queue}): {codes}, server codes {served}, "
        f"malformed {malformed}, 429 without Retry-After {bare}; RSS {rss:.0f} -> "
        f"{peak_rss_mib(proc.pid, 'VmRSS'):.0f} MiB, peak {hwm:.0f} -> "
        f"{peak_rss_mib(proc.pid):.0f} MiB; {state}: {verdict(passed)}"
    )

    before = metric_values(url)
    results = bad_bodies(url, shape, body_limit(shape, 1))
    alive, state = alive_and_drained(proc, url)
    served = served_codes(before, metric_values(url))
    lines.append(f"  malformed and oversized bodies (server codes {served}):")
    for name, expected, status, formed in results:
        shown = "" if formed else ", MALFORMED"
        passed = status == expected and formed
        lines.append(f"    {name}: {status} (expected {expected}){shown}: {verdict(passed)}")
    lines.append(f"    then: {state}: {verdict(alive)}")

    answers, late, code, exited, kids, left = sigterm_under_load(proc, url, images, args)
    codes: dict = {}
    for a in answers:
        key = a if isinstance(a, str) else a.status_code
        codes[key] = codes.get(key, 0) + 1
    ok_answers = [a for a in answers if not isinstance(a, str) and a.status_code == 200]
    reasons = sorted({c["reason"] for a in ok_answers for c in a.json()["certificates"]})
    formed = all(not isinstance(a, str) and well_formed(a) for a in answers)
    clean = code in (0, -15) and exited <= args.grace + 10 and not left
    passed = formed and set(codes) == {200} and reasons == ["shutdown"] and clean
    passed &= late in (503, "ConnectError")
    lines.append(
        f"  SIGTERM with {len(answers)} requests in flight: {codes}, reasons {reasons}, "
        f"late request {late}; exit code {code} after {exited:.1f} s (grace {args.grace:g}), "
        f"child processes {len(kids)}, left {len(left)}: {verdict(passed)}"
    )
    return lines, ok


def main(argv=None) -> int:
    args = parse(argv)
    os.environ.update(EXACT_ENV)
    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    folder = tempfile.mkdtemp(prefix="dsmooth-load-")
    spec = args.classifier
    if spec is None:
        spec = str(Path(folder) / "small_cnn.pt")
        torch.jit.save(torch.jit.script(SmallCNN().eval()), spec)
    classifier = load_model(spec, role="classifier")
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    model = compose(classifier, denoiser, sigma=args.sigma)
    with torch.inference_mode():
        classes = int(model(torch.zeros(1, *shape)).shape[1])
    smooth = Smooth(model, classes, args.sigma, seed=0)
    images = pool(16, shape)

    lines = [
        f"host: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {args.threads}",
        f"model: {spec}{' + ' + args.denoiser if args.denoiser else ''}; cp n0={args.n0} "
        f"n={args.n} alpha={args.alpha} sigma={args.sigma} batch={args.batch} "
        f"queue={args.queue}; {args.seconds:g} s per measurement",
    ]
    offline = offline_rate(smooth, images, args)
    lines.append(f"offline certify: {offline:,.0f} samples/s")
    proc, url = start_server(args, spec)
    checked = mismatched = 0
    faults_ok = False
    try:
        lines.append("clients  req/s   p50 s   p99 s  samples/s  vs offline  codes")
        for clients in args.concurrency:
            elapsed, lat, codes, certs = asyncio.run(load(url, clients, args.seconds, images))
            served = sum(c["n_used"] for _, c in certs) / elapsed
            p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"),) * 2
            lines.append(
                f"{clients:7d}  {len(lat) / elapsed:5.1f}  {p50:6.3f}  {p99:6.3f}  "
                f"{served:9,.0f}  {served / offline:9.0%}   {dict(sorted(codes.items()))}"
            )
            share = -(-args.check // len(args.concurrency))  # at least --check in all
            for k, c in random.Random(clients).sample(certs, min(share, len(certs))):
                label, radius = smooth.certify(pixels(images[k]), args.n0, args.n, args.alpha,
                                               args.batch, index=c["index"])  # fmt: skip
                checked += 1
                mismatched += (label, radius, args.n0 + args.n) != (
                    c["prediction"],
                    c["radius"],
                    c["n_used"],
                )
        lines.append(f"server peak RSS: {peak_rss_mib(proc.pid):.0f} MiB")
        lines.append(
            f"2xx certificates checked against offline: {checked}, mismatches: {mismatched}"
        )
        report, faults_ok = fault_report(proc, url, images, args, shape)  # ends with SIGTERM
        lines += report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 1 if mismatched or not faults_ok else 0


if __name__ == "__main__":
    sys.exit(main())
