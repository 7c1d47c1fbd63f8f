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

from dsmooth.deploy.service import wire
from dsmooth.deploy.service.policy import Policy, key_number
from dsmooth.deploy.service.scheduler import CertificationService, QueueFull, ShuttingDown
from dsmooth.errors import UserError

#: How often a waiting request checks whether its client is still there.
DISCONNECT_POLL = 0.1

log = logging.getLogger("dsmooth.deploy.service")


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
    name: str = "dsmooth",
    limits: Limits = Limits(),  # noqa: B008 (frozen dataclass)
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
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from dsmooth._version import __version__

    metrics = service.metrics
    expected = token.encode() if token else None
    max_body = limits.body_bytes(input_shape)
    why = (
        f" ({limits.max_images} images of {'x'.join(map(str, input_shape))} as JSON)"
        if limits.max_body_bytes is None
        else ""
    )
    reading = 0  # requests admitted by check_room whose bodies are being read (event loop only)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def busy(e: QueueFull) -> JSONResponse:
        return error(429, str(e), {"Retry-After": str(max(1, int(round(e.retry_after))))})

    def refused(request) -> JSONResponse | None:
        if expected is None:
            return None
        given = bearer_token(request.headers.get("authorization", ""))
        if given is not None and hmac.compare_digest(given.encode(), expected):
            return None
        return error(
            401,
            "a bearer token is required (Authorization: Bearer TOKEN).",
            {"WWW-Authenticate": "Bearer"},
        )

    def unknown(request) -> JSONResponse | None:
        model = request.path_params.get("model", name)
        if model != name:
            return error(404, f"unknown model {model!r}; this server has {name!r}.")
        return None

    def too_large() -> wire.BadRequest:
        return wire.BadRequest(f"the body exceeds the limit of {max_body} bytes{why}.", 413)

    def declared_too_large(request) -> bool:
        declared = request.headers.get("content-length", "").strip()
        return declared.isdigit() and int(declared) > max_body

    async def read_body(request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:  # a chunked body, or one longer than it declared
                raise too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(body: bytes, route: str):
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise wire.BadRequest("the body is not valid JSON.") from None
        except RecursionError:
            raise wire.BadRequest("the body's JSON is nested too deeply.") from None
        reader = wire.images_from_v2 if route == "v2" else wire.images_from_json
        return reader(doc)

    def check_request(images, params: dict):
        if len(images) > limits.max_images:
            raise wire.BadRequest(
                f"{len(images)} images in one request; the limit is {limits.max_images}.", 413
            )
        if input_shape is not None and tuple(images.shape[1:]) != tuple(input_shape):
            raise wire.BadRequest(
                f"images must have shape {list(input_shape)} (C, H, W), got "
                f"{list(images.shape[1:])}."
            )
        settings = policy.resolve(params)
        samples = len(images) * settings.samples_per_image
        if samples > limits.max_samples:
            raise wire.BadRequest(
                f"the request may need {samples} noise samples; the limit is "
                f"{limits.max_samples} (fewer images or a smaller n/n_max).",
                413,
            )
        index = params.get("index")
        index = 0 if index is None else key_number("index", index, len(images))
        timeout = params.get("timeout")
        timeout = limits.timeout if timeout is None else timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (0 < timeout <= limits.timeout)
        ):
            raise wire.BadRequest(
                f"parameter 'timeout' must be in (0, {limits.timeout:g}] seconds, got {timeout!r}."
            )
        return settings, int(index), float(timeout)

    def failed(what: str, route: str) -> JSONResponse:
        """A 500 whose details go to the server's log, not to the client."""
        ref = secrets.token_hex(4)
        log.exception("%s (%s, error id %s)", what, route, ref)
        return error(500, f"{what}; the server logged the details (error id {ref}).")

    async def certify(request, route: str):
        started = time.monotonic()
        label = "/v2/models/infer" if route == "v2" else "/v1/certify"
        response = await _certify(request, route)
        latency = time.monotonic() - started if response.status_code == 200 else None
        metrics.request(label, response.status_code, latency)
        return response

    async def _certify(request, route: str):
        nonlocal reading
        if (r := refused(request)) is not None or (r := unknown(request)) is not None:
            return r
        # before the body is read: its declared size, then room in the queue
        if declared_too_large(request):
            return error(413, str(too_large()))
        try:
            service.check_room(reading)
        except QueueFull as e:
            return busy(e)
        except ShuttingDown as e:
            return error(503, str(e), {"Retry-After": "5"})
        reading += 1
        try:
            try:  # a stalled upload must not hold its queue slot for ever
                body = await asyncio.wait_for(read_body(request), limits.timeout)
            except TimeoutError:
                return error(408, f"the request body did not arrive within {limits.timeout:g} s.")
            images, params, request_id = await run_in_threadpool(parse, body, route)
            settings, first, timeout = check_request(images, params)
            ticket = await run_in_threadpool(
                service.submit, list(images), settings, first, time.monotonic() + timeout
            )
        except wire.BadRequest as e:
            return error(e.status, str(e))
        except QueueFull as e:
            return busy(e)
        except ShuttingDown as e:
            return error(503, str(e), {"Retry-After": "5"})
        except UserError as e:
            return error(400, " ".join(str(e).split()))
        except ClientDisconnect:  # gone while its body was being read
            return Response(status_code=499)
        except Exception:
            return failed("the server failed to read this request", route)
        finally:
            reading -= 1
        waiting = asyncio.wrap_future(ticket.future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
                if done:
                    break
                if await request.is_disconnected():
                    service.cancel(ticket)
                    return Response(status_code=499)
            outcomes = waiting.result()
        except asyncio.CancelledError:
            service.cancel(ticket)
            raise
        except Exception:
            return failed("the base classifier failed on this request", route)
        if ticket.cancelled:
            return Response(status_code=499)
        guarantee = {**settings.guarantee(), "noise_keys": service.noise_keys}
        if route == "v2":
            return JSONResponse(wire.v2_response(name, request_id, outcomes, first, guarantee))
        certificates = [wire.certificate_json(o, first + i) for i, o in enumerate(outcomes)]
        return JSONResponse(
            {"id": request_id, "guarantee": guarantee, "certificates": certificates}
        )

    async def infer(request):
        return await certify(request, "v2")

    async def plain(request):
        return await certify(request, "json")

    def live(request):
        return JSONResponse({"live": True})

    def ready(request):
        ok = service.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def server_meta(request):
        if (r := refused(request)) is not None:
            return r
        return JSONResponse({"name": "dsmooth", "version": __version__, "extensions": []})

    def model_meta(request):
        if (r := refused(request)) is not None or (r := unknown(request)) is not None:
            return r
        shape = [-1, *(input_shape or (-1, -1, -1))]
        outputs = [
            {"name": "prediction", "datatype": "INT64", "shape": [-1]},
            {"name": "radius", "datatype": "FP64", "shape": [-1]},
            {"name": "pA_lower", "datatype": "FP64", "shape": [-1]},
            {"name": "n_used", "datatype": "INT64", "shape": [-1]},
            {"name": "stopped_early", "datatype": "BOOL", "shape": [-1]},
            {"name": "reason", "datatype": "BYTES", "shape": [-1]},
            {"name": "index", "datatype": "INT64", "shape": [-1]},
        ]
        return JSONResponse(
            {
                "name": name,
                "versions": ["1"],
                "platform": "dsmooth_smoothed",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
                "outputs": outputs,
                "parameters": wire.v2_parameters(
                    {**policy.settings.guarantee(), "noise_keys": service.noise_keys}
                ),
            }
        )

    def model_ready(request):
        if (r := refused(request)) is not None or (r := unknown(request)) is not None:
            return r
        return JSONResponse({"name": name, "ready": service.ready})

    def metrics_page(request):
        if (r := refused(request)) is not None:
            return r
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            await run_in_threadpool(service.close, grace)

    routes = [
        Route("/v2", server_meta),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{model}", model_meta),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v1/certify", plain, methods=["POST"]),
        Route("/metrics", metrics_page),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
