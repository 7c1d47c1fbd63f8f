"""The HTTP face of the certification service (Starlette).

Routes: POST /v2/models/{name}/infer (Open Inference Protocol v2) and POST /v1/certify
(plain JSON) answer certificates; /v2, /v2/models/{name}[/ready] describe the model;
/v2/health/live and /v2/health/ready are open probes; /metrics is Prometheus text.
With a token, every route but the probes needs `Authorization: Bearer TOKEN` (the scheme
in any case, RFC 7235).

Work is refused as early as it can be: a body larger than what the per-request image
limit allows (413), or a full queue (429), is answered before the body is read or
decoded, and each request whose body is being read holds a queue slot meanwhile, so a
flood costs the server little more than its headers. A model failure is logged here and
answered with a generic 500: the exception text stays in the server's log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsmooth._version import __version__
from dsmooth.deploy.service import wire
from dsmooth.deploy.service.policy import CertifySettings, Policy, key_number
from dsmooth.deploy.service.scheduler import CertificationService, QueueFull, ShuttingDown, Ticket
from dsmooth.errors import UserError

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

#: How often a waiting request checks whether its client is still there.
DISCONNECT_POLL = 0.1

# The logger keeps its name from before the move to deploy/, so logging configs still match.
log = logging.getLogger("dsmooth.service")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server.

    `max_body_bytes`: None (the default) derives it from the input shape and `max_images`
    (`wire.body_limit`).
    """

    max_body_bytes: int | None = None
    max_images: int = 64
    max_samples: int = 10_000_000
    timeout: float = 60.0  # seconds until a request gets what is certified so far

    def body_bytes(self, input_shape: tuple[int, int, int] | None) -> int:
        """The body limit in effect for images of `input_shape`."""
        if self.max_body_bytes is not None:
            return int(self.max_body_bytes)
        if input_shape is None:
            raise ValueError("a body limit needs the input shape or max_body_bytes")
        return wire.body_limit(input_shape, self.max_images)


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None. The scheme is
    matched in any case (RFC 7235 section 2.1: auth schemes are case-insensitive)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def build_service_app(
    service: CertificationService,
    policy: Policy,
    *,
    name: str = "dsmooth",
    limits: Limits = Limits(),
    token: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    grace: float = 5.0,
):
    """The Starlette application; closing it (lifespan shutdown) closes `service`.

    The body limit is `limits.max_body_bytes`, or when that is None (the default) what
    `limits.max_images` images of `input_shape` take as JSON, which then needs the shape.
    """
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Route

    handlers = _Handlers(
        service, policy, name=name, limits=limits, token=token, input_shape=input_shape
    )

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await run_in_threadpool(service.close, grace)

    routes = [
        Route("/v2", handlers.server_meta),
        Route("/v2/health/live", handlers.live),
        Route("/v2/health/ready", handlers.ready),
        Route("/v2/models/{model}", handlers.model_meta),
        Route("/v2/models/{model}/ready", handlers.model_ready),
        Route("/v2/models/{model}/infer", handlers.infer, methods=["POST"]),
        Route("/v1/certify", handlers.plain, methods=["POST"]),
        Route("/metrics", handlers.metrics_page),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


@dataclass(frozen=True)
class _Submitted:
    """A request whose images are in the service's queue."""

    ticket: Ticket
    settings: CertifySettings
    first: int  # the first image's index
    request_id: str


class _Handlers:
    """The routes of one service app (`build_service_app`) and the state they share."""

    def __init__(
        self,
        service: CertificationService,
        policy: Policy,
        *,
        name: str,
        limits: Limits,
        token: str | None,
        input_shape: tuple[int, int, int] | None,
    ):
        self.service = service
        self.metrics = service.metrics
        self.policy = policy
        self.name = name
        self.limits = limits
        self.input_shape = input_shape
        self.expected = token.encode() if token else None
        self.max_body = limits.body_bytes(input_shape)
        self.why = (
            f" ({limits.max_images} images of {'x'.join(map(str, input_shape))} as JSON)"
            if limits.max_body_bytes is None
            else ""
        )
        # requests admitted by check_room whose bodies are being read (event loop only)
        self.reading = 0

    # -- refusals ---------------------------------------------------------------------

    def refused(self, request) -> JSONResponse | None:
        if self.expected is None:
            return None
        given = bearer_token(request.headers.get("authorization", ""))
        if given is not None and hmac.compare_digest(given.encode(), self.expected):
            return None
        return _error(
            401,
            "a bearer token is required (Authorization: Bearer TOKEN).",
            {"WWW-Authenticate": "Bearer"},
        )

    def unknown(self, request) -> JSONResponse | None:
        model = request.path_params.get("model", self.name)
        if model != self.name:
            return _error(404, f"unknown model {model!r}; this server has {self.name!r}.")
        return None

    def too_large(self) -> wire.BadRequest:
        return wire.BadRequest(
            f"the body exceeds the limit of {self.max_body} bytes{self.why}.", 413
        )

    def declared_too_large(self, request) -> bool:
        declared = request.headers.get("content-length", "").strip()
        return declared.isdigit() and int(declared) > self.max_body

    def refused_early(self, request) -> JSONResponse | None:
        """Before the body is read: the token, the model, the declared size, then room in
        the queue."""
        if (r := self.refused(request)) is not None or (r := self.unknown(request)) is not None:
            return r
        if self.declared_too_large(request):
            return _error(413, str(self.too_large()))
        try:
            self.service.check_room(self.reading)
        except QueueFull as e:
            return _busy(e)
        except ShuttingDown as e:
            return _shutting_down(e)
        return None

    # -- reading a request ------------------------------------------------------------

    async def read_body(self, request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:  # a chunked body, or one longer than it declared
                raise self.too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def check_request(self, images, params: dict):
        limits = self.limits
        if len(images) > limits.max_images:
            raise wire.BadRequest(
                f"{len(images)} images in one request; the limit is {limits.max_images}.", 413
            )
        shape = self.input_shape
        if shape is not None and tuple(images.shape[1:]) != tuple(shape):
            raise wire.BadRequest(
                f"images must have shape {list(shape)} (C, H, W), got {list(images.shape[1:])}."
            )
        settings = self.policy.resolve(params)
        samples = len(images) * settings.samples_per_image
        if samples > limits.max_samples:
            raise wire.BadRequest(
                f"the request may need {samples} noise samples; the limit is "
                f"{limits.max_samples} (fewer images or a smaller n/n_max).",
                413,
            )
        index = params.get("index")
        index = 0 if index is None else key_number("index", index, len(images))
        return settings, int(index), self.timeout(params)

    def timeout(self, params: dict) -> float:
        """The request's `timeout` parameter, at most the server's (its default)."""
        limit = self.limits.timeout
        timeout = params.get("timeout")
        timeout = limit if timeout is None else timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (0 < timeout <= limit)
        ):
            raise wire.BadRequest(
                f"parameter 'timeout' must be in (0, {limit:g}] seconds, got {timeout!r}."
            )
        return float(timeout)

    async def submit(self, request, route: str) -> _Submitted:
        """Read, check and queue the request's images; a wire.BadRequest says why not."""
        from starlette.concurrency import run_in_threadpool

        try:  # a stalled upload must not hold its queue slot for ever
            body = await asyncio.wait_for(self.read_body(request), self.limits.timeout)
        except TimeoutError:
            raise wire.BadRequest(
                f"the request body did not arrive within {self.limits.timeout:g} s.", 408
            ) from None
        images, params, request_id = await run_in_threadpool(_parse, body, route)
        settings, first, timeout = self.check_request(images, params)
        ticket = await run_in_threadpool(
            self.service.submit, list(images), settings, first, time.monotonic() + timeout
        )
        return _Submitted(ticket, settings, first, request_id)

    # -- certifying -------------------------------------------------------------------

    async def certify(self, request, route: str):
        started = time.monotonic()
        label = "/v2/models/infer" if route == "v2" else "/v1/certify"
        response = await self._certify(request, route)
        latency = time.monotonic() - started if response.status_code == 200 else None
        self.metrics.request(label, response.status_code, latency)
        return response

    async def _certify(self, request, route: str):
        from starlette.requests import ClientDisconnect

        if (r := self.refused_early(request)) is not None:
            return r
        self.reading += 1
        try:
            submitted = await self.submit(request, route)
        except wire.BadRequest as e:
            return _error(e.status, str(e))
        except QueueFull as e:
            return _busy(e)
        except ShuttingDown as e:
            return _shutting_down(e)
        except UserError as e:
            return _error(400, " ".join(str(e).split()))
        except ClientDisconnect:  # gone while its body was being read
            return _gone()
        except Exception:
            return _failed("the server failed to read this request", route)
        finally:
            self.reading -= 1
        return await self.answer(request, route, submitted)

    async def answer(self, request, route: str, submitted: _Submitted):
        """The certificates once the service has them; 499 when the client has left."""
        ticket = submitted.ticket
        waiting = asyncio.wrap_future(ticket.future)
        try:
            if not await _until_done(waiting, request):
                self.service.cancel(ticket)
                return _gone()
            outcomes = waiting.result()
        except asyncio.CancelledError:
            self.service.cancel(ticket)
            raise
        except Exception:
            return _failed("the base classifier failed on this request", route)
        if ticket.cancelled:
            return _gone()
        first, request_id = submitted.first, submitted.request_id
        guarantee = {**submitted.settings.guarantee(), "noise_keys": self.service.noise_keys}
        if route == "v2":
            return _json(wire.v2_response(self.name, request_id, outcomes, first, guarantee))
        certificates = [wire.certificate_json(o, first + i) for i, o in enumerate(outcomes)]
        return _json({"id": request_id, "guarantee": guarantee, "certificates": certificates})

    # -- routes -----------------------------------------------------------------------

    async def infer(self, request):
        return await self.certify(request, "v2")

    async def plain(self, request):
        return await self.certify(request, "json")

    def live(self, _request):
        return _json({"live": True})

    def ready(self, _request):
        ok = self.service.ready
        return _json({"ready": ok}, 200 if ok else 503)

    def server_meta(self, request):
        if (r := self.refused(request)) is not None:
            return r
        return _json({"name": "dsmooth", "version": __version__, "extensions": []})

    def model_meta(self, request):
        if (r := self.refused(request)) is not None or (r := self.unknown(request)) is not None:
            return r
        shape = [-1, *(self.input_shape or (-1, -1, -1))]
        outputs = [
            {"name": "prediction", "datatype": "INT64", "shape": [-1]},
            {"name": "radius", "datatype": "FP64", "shape": [-1]},
            {"name": "pA_lower", "datatype": "FP64", "shape": [-1]},
            {"name": "n_used", "datatype": "INT64", "shape": [-1]},
            {"name": "stopped_early", "datatype": "BOOL", "shape": [-1]},
            {"name": "reason", "datatype": "BYTES", "shape": [-1]},
            {"name": "index", "datatype": "INT64", "shape": [-1]},
        ]
        return _json(
            {
                "name": self.name,
                "versions": ["1"],
                "platform": "dsmooth_smoothed",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
                "outputs": outputs,
                "parameters": wire.v2_parameters(
                    {**self.policy.settings.guarantee(), "noise_keys": self.service.noise_keys}
                ),
            }
        )

    def model_ready(self, request):
        if (r := self.refused(request)) is not None or (r := self.unknown(request)) is not None:
            return r
        return _json({"name": self.name, "ready": self.service.ready})

    def metrics_page(self, request):
        from starlette.responses import PlainTextResponse

        if (r := self.refused(request)) is not None:
            return r
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


def _json(content, status: int = 200, headers: dict | None = None) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status, headers=headers)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return _json({"error": message}, status, headers)


def _busy(e: QueueFull) -> JSONResponse:
    return _error(429, str(e), {"Retry-After": str(max(1, round(e.retry_after)))})


def _shutting_down(e: ShuttingDown) -> JSONResponse:
    return _error(503, str(e), {"Retry-After": "5"})


def _gone():
    """499: the client closed the connection before its answer."""
    from starlette.responses import Response

    return Response(status_code=499)


def _failed(what: str, route: str) -> JSONResponse:
    """A 500 whose details go to the server's log, not to the client."""
    ref = secrets.token_hex(4)
    log.exception("%s (%s, error id %s)", what, route, ref)
    return _error(500, f"{what}; the server logged the details (error id {ref}).")


def _parse(body: bytes, route: str):
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise wire.BadRequest("the body is not valid JSON.") from None
    except RecursionError:
        raise wire.BadRequest("the body's JSON is nested too deeply.") from None
    reader = wire.images_from_v2 if route == "v2" else wire.images_from_json
    return reader(doc)


async def _until_done(waiting: asyncio.Future, request) -> bool:
    """Wait for `waiting`: True once it is done, False as soon as the client has left."""
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
        if done:
            return True
        if await request.is_disconnected():
            return False
