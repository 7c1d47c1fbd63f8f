"""The certified service runs the offline method objects (dsmooth.certify.methods): a
method registered here, in a test module, is served with its own state machine and its
own request parameters, and one without a look-by-look state is refused at start-up."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from conftest import LinearClassifier
from starlette.testclient import TestClient

from dsmooth import Smooth
from dsmooth.certify.methods import (
    METHODS,
    Certificate,
    Certifier,
    CohenCP,
    Sequential,
    register_method,
)
from dsmooth.certify.resumable import CPCertification
from dsmooth.cli import main
from dsmooth.deploy.service.app import Limits, build_service_app
from dsmooth.deploy.service.policy import CertifySettings, Policy
from dsmooth.deploy.service.scheduler import CertificationService
from dsmooth.errors import UserError

SHAPE = (3, 8, 8)


class HalvedCP(CPCertification):
    """Cohen's CERTIFY look by look, claiming half the radius."""

    def _complete(self, counts):
        super()._complete(counts)
        if self.outcome is not None:
            self.outcome = replace(self.outcome, radius=self.outcome.radius / 2)


@dataclass(frozen=True)
class HalfRadius(CohenCP):
    """Cohen's CERTIFY at half the radius (still sound); a request may only lower alpha."""

    name: ClassVar[str] = "cp-half"
    summary: ClassVar[str] = "cp, half the radius"
    tightens: ClassVar[tuple[str, ...]] = ("alpha",)

    def certify(self, smooth, x, batch_size=64, *, index):
        c = super().certify(smooth, x, batch_size, index=index)
        return Certificate(c.prediction, c.radius / 2)

    def resumable(self, num_classes, sigma):
        return HalvedCP(num_classes, sigma, self.n0, self.n, self.alpha)


@dataclass(frozen=True)
class FixedTolerance(Sequential):
    """Sequential CERTIFY whose tolerance is the server's: a request may not set `tol`."""

    name: ClassVar[str] = "sequential-fixed-tol"
    tightens: ClassVar[tuple[str, ...]] = ("alpha", "n0", "n_max", "radius")


@dataclass(frozen=True)
class OneCall(Certifier):
    """Certifies an image in one call only: no look-by-look state."""

    name: ClassVar[str] = "one-call"
    n0: int
    n: int
    alpha: float

    def certify(self, smooth, x, batch_size=64, *, index):
        return CohenCP(self.n0, self.n, self.alpha).certify(smooth, x, batch_size, index=index)


@pytest.fixture
def registered():
    for cls in (HalfRadius, FixedTolerance, OneCall):
        register_method(cls)
    yield
    for cls in (HalfRadius, FixedTolerance, OneCall):
        del METHODS[cls.name]


@pytest.fixture(scope="module")
def model():
    return LinearClassifier(3 * 8 * 8, 3).eval()


def settings(method: str, **kw) -> CertifySettings:
    values = dict(
        method=method, sigma=0.25, alpha=0.01, n0=20, n=300, n_max=1000, radius=None,
        tol=None, seed=3, noise="gaussian",
    )  # fmt: skip
    return CertifySettings(**{**values, **kw})


def client(model, method: str) -> TestClient:
    service = CertificationService(model, 3, batch_size=64, queue=64)  # public noise
    app = build_service_app(
        service,
        Policy(settings(method), n_cap=20_000),
        name="tiny",
        limits=Limits(max_body_bytes=200_000, max_images=8, max_samples=100_000, timeout=10),
        input_shape=SHAPE,
        grace=1.0,
    )
    return TestClient(app)


def easy_images(count: int) -> np.ndarray:
    """Flat images, which the linear model classifies with a margin, and random ones."""
    rng = np.random.default_rng(1)
    flat = np.full((count, *SHAPE), 1.0) * rng.random((count, 1, 1, 1))
    flat[1::2] = rng.random((count // 2, *SHAPE))
    return flat.astype(np.float32)


@pytest.mark.usefixtures("registered")
def test_a_method_registered_once_is_served_with_its_own_state_machine(model):
    images = easy_images(4)
    with client(model, "cp-half") as c:
        r = c.post("/v1/certify", json={"images": images.tolist(), "index": 5, "seed": 7})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["guarantee"]["method"] == "cp-half"
    assert doc["guarantee"]["n"] == 300  # it decides the certificate, though fixed
    smooth = Smooth(model, 3, 0.25, seed=7)
    method = HalfRadius(20, 300, 0.01)
    radii = []
    for i, cert in enumerate(doc["certificates"]):
        x = torch.from_numpy(images[i])
        offline = method.certify(smooth, x, 50, index=5 + i)  # `dsmooth certify`'s answer
        assert (cert["prediction"], cert["radius"]) == (offline.prediction, offline.radius)
        full = CohenCP(20, 300, 0.01).certify(smooth, x, 50, index=5 + i).radius
        assert cert["radius"] == full / 2
        radii.append(cert["radius"])
    assert max(radii) > 0  # so the halving is seen


@pytest.mark.usefixtures("registered")
def test_the_request_parameters_are_the_method_objects(model):
    """A request may set only what the server's method lets it: the same `tol` that a
    sequential server accepts is a 400 for a method that fixes its tolerance, and a
    method that only lets alpha tighten refuses more samples."""
    one = easy_images(2)[:1].tolist()
    with client(model, "sequential") as c:
        assert c.post("/v1/certify", json={"images": one, "tol": 0.01}).status_code == 200
    with client(model, "sequential-fixed-tol") as c:
        r = c.post("/v1/certify", json={"images": one, "tol": 0.01})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "parameter 'tol': only for the sequential method."
        ok = c.post("/v1/certify", json={"images": one, "n_max": 2000, "alpha": 0.001})
        assert ok.status_code == 200, ok.text
        assert (ok.json()["guarantee"]["n_max"], ok.json()["guarantee"]["alpha"]) == (2000, 0.001)
    with client(model, "cp-half") as c:
        r = c.post("/v1/certify", json={"images": one, "n": 500})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "parameter 'n': not a parameter of the cp-half method."
        assert c.post("/v1/certify", json={"images": one, "alpha": 0.005}).status_code == 200
    policy = Policy(settings("cp-half"), n_cap=20_000)
    assert policy.resolve({"alpha": 0.001}).certifier == HalfRadius(20, 300, 0.001)


@pytest.mark.usefixtures("registered")
def test_a_method_without_a_resumable_state_is_refused_at_start_up(tiny_classifier_file, capsys):
    assert not OneCall.servable()
    assert HalfRadius.servable()
    sentence = "the certified service cannot serve the 'one-call' method"
    with pytest.raises(UserError, match=sentence):
        settings("one-call")
    argv = ["serve", "--smoothed", "--classifier", str(tiny_classifier_file), "--sigma",
            "0.25", "--input-shape", "3,8,8", "--method", "one-call"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert sentence in err, err
    assert len(err.splitlines()) == 1, err


def test_a_method_lets_requests_set_only_what_it_is_built_from():
    """A `tightens` entry the method does not read would reach no certificate: refused."""

    @dataclass(frozen=True)
    class Loose(CohenCP):
        name: ClassVar[str] = "loose"
        tightens: ClassVar[tuple[str, ...]] = ("alpha", "tol")

    with pytest.raises(ValueError, match=r"tightens \['tol'\]"):
        register_method(Loose)
    assert "loose" not in METHODS


def test_a_subclass_that_changes_certify_does_not_inherit_its_parents_state_machine():
    """A method that certifies less than its parent but keeps the parent's `resumable`
    would be served the parent's (larger) radii under its own name: refused instead."""

    @dataclass(frozen=True)
    class Conservative(CohenCP):
        name: ClassVar[str] = "cp-conservative"

        def certify(self, smooth, x, batch_size=64, *, index):
            c = super().certify(smooth, x, batch_size, index=index)
            return Certificate(c.prediction, c.radius / 2)

    @dataclass(frozen=True)
    class Renamed(CohenCP):  # changes nothing the answer depends on: served
        name: ClassVar[str] = "cp-renamed"

    register_method(Conservative)
    try:
        assert not Conservative.servable()
        assert Renamed.servable()
        assert HalfRadius.servable()
        assert CohenCP.servable()
        with pytest.raises(UserError, match="cannot serve the 'cp-conservative' method"):
            settings("cp-conservative")
    finally:
        del METHODS["cp-conservative"]


def test_a_method_may_add_guarantee_entries_but_not_replace_the_services():
    @dataclass(frozen=True)
    class Restating(CohenCP):
        name: ClassVar[str] = "cp-restating"

        def guarantee(self, sigma):
            return {**super().guarantee(sigma), "alpha": 0.5}

    register_method(Restating)
    try:
        with pytest.raises(UserError, match=r"guarantee\(\) names \['alpha'\]"):
            settings("cp-restating")
    finally:
        del METHODS["cp-restating"]


def test_only_a_method_that_spends_n_may_let_requests_raise_it():
    @dataclass(frozen=True)
    class SequentialN(Sequential):
        name: ClassVar[str] = "sequential-n"
        tightens: ClassVar[tuple[str, ...]] = ("alpha", "n")

    with pytest.raises(ValueError, match=r"tightens \['n'\]"):
        register_method(SequentialN)
    assert "sequential-n" not in METHODS
