"""The certification service's core: state machines and the cross-request scheduler.

The central property (acceptance 2 of the service): for the same image, index, seed,
parameters and noise mode, the service's certificate equals offline `Smooth.certify`'s,
however its samples are split across batches and interleaved with other requests.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from helpers import recording_compiler

from dsmooth import Smooth
from dsmooth.certify.noise import BLOCK, STAGE_ESTIMATE, NoiseStream, sequential_stage
from dsmooth.certify.sequential import SequentialPlan, certify_sequential, cp_lower, radius_of
from dsmooth.deploy.service.certification import ABSTAIN, make_certification
from dsmooth.deploy.service.policy import CertifySettings
from dsmooth.deploy.service.samples import ImageSamples
from dsmooth.deploy.service.scheduler import CertificationService, QueueFull, ShuttingDown

SHAPE = (3, 8, 8)
CLASSES = 3
SIGMA = 0.25


@pytest.fixture(scope="module")
def model():
    return LinearClassifier(3 * 8 * 8, CLASSES).eval()


def images(count: int, seed: int = 0) -> list[torch.Tensor]:
    """8-bit images (so both noise modes apply), some easy, some near a boundary."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        base = rng.integers(0, 256, SHAPE) if i % 2 else np.full(SHAPE, rng.integers(0, 256))
        out.append(torch.from_numpy(base.astype(np.uint8)).float().div_(255.0))
    return out


def settings(method: str, noise: str, seed: int, **kw) -> CertifySettings:
    values = dict(
        method=method,
        sigma=SIGMA,
        alpha=0.01,
        n0=20,
        n=300,
        n_max=3000,
        radius=None,
        tol=None,
        seed=seed,
        noise=noise,
    )
    values.update(kw)
    return CertifySettings(**values)


def offline(model, x, s: CertifySettings, index: int) -> tuple[int, float, int]:
    smooth = Smooth(model, CLASSES, s.sigma, seed=s.seed, noise=s.noise)
    if s.method == "cp":
        label, radius = smooth.certify(x, s.n0, s.n, s.alpha, 50, index=index)
        return label, radius, s.n0 + s.n
    r = certify_sequential(
        smooth, x, n0=s.n0, alpha=s.alpha, n_max=s.n_max, radius=s.radius, batch_size=50,
        index=index, tol=s.tol,
    )  # fmt: skip
    return r.prediction, r.radius, r.n_used


def drive(model, x, s: CertifySettings, index: int, rng) -> tuple[int, float, int]:
    """Run one state machine alone, feeding it chunks of random sizes."""
    cert = make_certification(CLASSES, s)
    samples = ImageSamples(x, s.sigma, seed=s.seed, index=index, noise=s.noise, device="cpu")
    while not cert.done:
        m = int(min(cert.pending, rng.integers(1, 700)))
        batch = samples.take(cert.need.stage, cert.received, m)
        with torch.inference_mode():
            labels = model(batch).argmax(1)
        cert.feed(torch.bincount(labels, minlength=CLASSES).numpy())
    o = cert.outcome
    return o.prediction, o.radius, o.n_used


# --- noise streams ------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["gaussian", "lattice"])
def test_chunked_samples_equal_one_draw(noise):
    x = images(2)[1]
    one = ImageSamples(x, SIGMA, seed=3, index=7, noise=noise, device="cpu").take(
        STAGE_ESTIMATE, 0, 3 * BLOCK + 5
    )
    parts, offset = [], 0
    samples = ImageSamples(x, SIGMA, seed=3, index=7, noise=noise, device="cpu")
    for m in (1, 255, 2, 300, 10, 205):
        parts.append(samples.take(STAGE_ESTIMATE, offset, m))
        offset += m
    assert torch.equal(torch.cat(parts), one)
    if noise == "gaussian":
        stream = NoiseStream(SHAPE, SIGMA, seed=3, index=7, stage=STAGE_ESTIMATE)
        assert torch.equal(stream.take(3 * BLOCK + 5).add_(x), one)


def test_samples_refuse_out_of_order_reads():
    samples = ImageSamples(images(1)[0], SIGMA, seed=0, index=0, noise="gaussian", device="cpu")
    samples.take(STAGE_ESTIMATE, 0, 5)
    with pytest.raises(RuntimeError):
        samples.take(STAGE_ESTIMATE, 3, 5)


# --- state machines == offline (acceptance 2's core) ----------------------------------


CASES = [
    ("cp", "gaussian", {}),
    ("cp", "lattice", {}),
    ("sequential", "gaussian", {"radius": (0.1, 0.3)}),
    ("sequential", "lattice", {}),
]


@pytest.mark.parametrize(("method", "noise", "extra"), CASES)
def test_state_machine_equals_offline(model, method, noise, extra):
    """26 images x 4 modes = 104 (image, seed) cases, chunked at random sizes."""
    rng = np.random.default_rng(5)
    outcomes = set()
    for i, x in enumerate(images(26, seed=11)):
        s = settings(method, noise, seed=100 + i % 5, **extra)
        got = drive(model, x, s, index=i, rng=rng)
        assert got == offline(model, x, s, i), (method, noise, i)
        outcomes.add(got[0] == ABSTAIN)
    assert outcomes == {True, False}, "the cases should include abstentions and certificates"


# --- the scheduler ------------------------------------------------------------------


@pytest.fixture
def service(model):
    svc = CertificationService(model, CLASSES, batch_size=37, queue=64)
    yield svc
    svc.close()


def test_service_equals_offline_across_concurrent_requests(model, service):
    """Interleaved requests with odd batch splits give the offline certificates."""
    xs = images(12, seed=3)
    modes = [("cp", "gaussian", {}), ("sequential", "lattice", {"radius": (0.2,)})]
    tickets = []
    for r in range(6):
        method, noise, extra = modes[r % 2]
        s = settings(method, noise, seed=r, **extra)
        chunk = xs[2 * r : 2 * r + 2]
        tickets.append((s, 2 * r, chunk, service.submit(chunk, s, first_index=2 * r)))
    for s, first, chunk, ticket in tickets:
        for j, (x, o) in enumerate(zip(chunk, ticket.future.result(timeout=60), strict=True)):
            assert (o.prediction, o.radius, o.n_used) == offline(model, x, s, first + j)
            assert not o.stopped_early


def test_a_noise_secret_keys_the_noise_and_the_operator_can_reproduce_it(model):
    """With a secret, the noise of (seed, index) is not the public stream a client could
    compute; the operator reproduces answers offline with keyed_seed(secret, seed)."""
    from dsmooth.deploy.service.samples import keyed_seed

    secret = b"operator secret, 32 bytes long.."
    assert keyed_seed(secret, 7) != keyed_seed(b"another secret of some length", 7)
    assert keyed_seed(secret, 7) != keyed_seed(secret, 8)
    assert 0 <= keyed_seed(secret, 7) < 2**32
    svc = CertificationService(model, CLASSES, batch_size=37, queue=64, noise_secret=secret)
    try:
        assert svc.noise_keys == "secret"
        xs = images(6, seed=4)
        s = settings("cp", "gaussian", seed=7)
        got = svc.submit(xs, s).future.result(timeout=60)
    finally:
        svc.close()
    keyed = settings("cp", "gaussian", seed=keyed_seed(secret, 7))
    for i, (x, o) in enumerate(zip(xs, got, strict=True)):
        assert (o.prediction, o.radius, o.n_used) == offline(model, x, keyed, i)
    public = [offline(model, x, s, i) for i, x in enumerate(xs)]
    assert [(o.prediction, o.radius, o.n_used) for o in got] != public


def test_small_request_finishes_while_a_huge_one_runs(service):
    huge = settings("sequential", "gaussian", 0, n_max=2_000_000, tol=1e-6)
    big = service.submit(images(8, seed=1), huge)
    small = service.submit(images(1, seed=2), settings("cp", "gaussian", 0))
    small.future.result(timeout=30)
    assert not big.future.done(), "the huge request should still be running"
    service.cancel(big)
    big.future.result(timeout=30)
    assert service.in_flight == 0


def test_deadline_returns_a_valid_early_stop(model, service):
    """At the deadline, a sequential image stops at its last complete look: the bound
    is the offline look's, recomputed here from the same noise streams."""
    x = images(2, seed=4)[0]
    s = settings("sequential", "gaussian", 9, n_max=2_000_000, tol=1e-6)
    (o,) = service.certify([x], s, first_index=5, timeout=0.5)
    assert o.stopped_early
    assert o.reason == "deadline"
    plan = SequentialPlan(SIGMA, s.alpha, n_max=s.n_max, radii=None, tol=s.tol)
    smooth = Smooth(model, CLASSES, SIGMA, seed=9)
    c_hat = int(smooth.sample_counts(x, s.n0, 64, index=5, stage=0).argmax())
    looks = plan.schedule.index(o.n_used - s.n0) + 1 if o.n_used > s.n0 else 0
    successes, previous, bound = 0, 0, 0.0
    for r in range(looks):
        n = plan.schedule[r]
        counts = smooth.sample_counts(x, n - previous, 64, index=5, stage=sequential_stage(r))
        successes += int(counts[c_hat])
        bound = max(bound, float(cp_lower(np.array([successes]), n, plan.levels[r])[0]))
        previous = n
    assert o.p_lower == bound
    assert o.radius == (float(radius_of(bound, SIGMA)) if bound >= 0.5 else 0.0)
    assert o.prediction == (c_hat if bound >= 0.5 else ABSTAIN)


def test_deadline_makes_an_unfinished_cp_image_abstain(service):
    s = settings("cp", "gaussian", 0, n=5_000_000)
    (o,) = service.certify(images(1), s, timeout=0.3)
    assert (o.prediction, o.radius, o.reason, o.stopped_early) == (ABSTAIN, 0.0, "deadline", True)


def test_queue_bound(model):
    svc = CertificationService(model, CLASSES, batch_size=16, queue=3)
    try:
        slow = settings("cp", "gaussian", 0, n=5_000_000)
        first = svc.submit(images(3), slow)
        with pytest.raises(QueueFull) as e:
            svc.submit(images(1), slow)
        assert e.value.retry_after >= 1
        svc.cancel(first)
        first.future.result(timeout=30)
        svc.submit(images(1), settings("cp", "gaussian", 0)).future.result(timeout=30)
    finally:
        svc.close()


def test_close_finishes_or_stops_in_flight_and_joins_the_worker(model):
    before = set(threading.enumerate())
    svc = CertificationService(model, CLASSES, batch_size=16, queue=8)
    quick = svc.submit(images(1), settings("cp", "gaussian", 0))
    slow = svc.submit(images(1), settings("sequential", "gaussian", 0, n_max=2_000_000, tol=1e-6))
    svc.close(grace=0.5)
    assert quick.future.result(timeout=1)[0].reason in ("certified", "abstain")
    assert slow.future.result(timeout=1)[0].reason == "shutdown"
    with pytest.raises(ShuttingDown):
        svc.submit(images(1), settings("cp", "gaussian", 0))
    assert set(threading.enumerate()) <= before


def test_a_failing_model_fails_its_requests_and_the_worker_survives(model):
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return model(batch)

    svc = CertificationService(flaky, CLASSES, batch_size=16, queue=8)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            svc.certify(images(1), settings("cp", "gaussian", 0), timeout=30)
        (o,) = svc.certify(images(1), settings("cp", "gaussian", 0), timeout=30)
        assert not o.stopped_early
        assert svc.in_flight == 0
    finally:
        svc.close()


def test_a_compiled_engine_is_compiled_once_and_padding_leaves_answers_unchanged(monkeypatch):
    """Cross-request batches come in any size up to --batch. The engine compiles one
    static shape (warmed up at --batch, as `serve --smoothed` does) and zero-pads shorter
    batches up to it, dropping the padded rows: one compilation, and the certificates of
    an uncompiled model (here a stand-in compiler; inductor is test_engine's)."""
    from dsmooth.pipeline import engine
    from dsmooth.pipeline.engine import EngineModule, EngineOptions

    calls = []
    monkeypatch.setattr(engine.torch, "compile", recording_compiler(calls))
    eager = LinearClassifier(3 * 8 * 8, CLASSES).eval()
    fast = EngineModule(LinearClassifier(3 * 8 * 8, CLASSES), EngineOptions("fp32", True))
    fast.warm_up(SHAPE, (37,))
    svc = CertificationService(fast, CLASSES, batch_size=37, queue=64)
    try:
        xs = images(6, seed=8)
        cases = [settings("cp", "gaussian", 3), settings("sequential", "gaussian", 4, n_max=700)]
        tickets = [(s, svc.submit(xs[3 * k : 3 * k + 3], s, 3 * k)) for k, s in enumerate(cases)]
        for k, (s, ticket) in enumerate(tickets):
            for j, o in enumerate(ticket.future.result(timeout=60)):
                i = 3 * k + j
                assert (o.prediction, o.radius, o.n_used) == offline(eager, xs[i], s, i)
    finally:
        svc.close()
    assert svc.metrics.samples < 37 * svc.metrics.batches, "some batches should be short"
    assert set(calls) == {(37, *SHAPE)}
    assert list(fast.compile_seconds) == [(37, *SHAPE)]
