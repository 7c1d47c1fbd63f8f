"""The HTTP face of the certification service (Starlette).

Routes: POST /v2/models/{name}/infer (Open Inference Protocol v2) and POST /v1/certify
(plain JSON) answer certificates; /v2, /v2/models/{name}[/ready] describe the model;
/v2/health/live and /v2/health/ready are open probes; /metrics is Prometheus text.
With a token, every route but the probes needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass

from dsmooth.errors import UserError
from dsmooth.service import wire
from dsmooth.service.policy import Policy, key_number
from dsmooth.service.scheduler import CertificationService, QueueFull, ShuttingDown

#: How often a waiting request checks whether its client is still there.
DISCONNECT_POLL = 0.1


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 64 * 2**20
    max_images: int = 64
    max_samples: int = 10_000_000
    timeout: float = 60.0  # seconds until a request gets what is certified so far


def build_service_app(
    service: CertificationService,
    policy: Policy,
    name: str = "dsmooth",
    limits: Limits = Limits(),  # noqa: B008 (frozen dataclass)
    token: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    grace: float = 5.0,
):
    """The Starlette application; closing it (lifespan shutdown) closes `service`."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from dsmooth import __version__

    metrics = service.metrics
    expected = f"Bearer {token}".encode() if token else None

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def refused(request) -> JSONResponse | None:
        if expected is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
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

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise wire.BadRequest(f"the body exceeds {limits.max_body_bytes} bytes.", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise wire.BadRequest(f"the body exceeds {limits.max_body_bytes} bytes.", 413)
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

    async def certify(request, route: str):
        started = time.monotonic()
        label = "/v2/models/infer" if route == "v2" else "/v1/certify"
        response = await _certify(request, route)
        latency = time.monotonic() - started if response.status_code == 200 else None
        metrics.request(label, response.status_code, latency)
        return response

    async def _certify(request, route: str):
        if (r := refused(request)) is not None or (r := unknown(request)) is not None:
            return r
        try:
            body = await read_body(request)
            images, params, request_id = await run_in_threadpool(parse, body, route)
            settings, first, timeout = check_request(images, params)
            ticket = await run_in_threadpool(
                service.submit, list(images), settings, first, time.monotonic() + timeout
            )
        except wire.BadRequest as e:
            return error(e.status, str(e))
        except QueueFull as e:
            seconds = max(1, int(round(e.retry_after)))
            return error(429, str(e), {"Retry-After": str(seconds)})
        except ShuttingDown as e:
            return error(503, str(e), {"Retry-After": "5"})
        except UserError as e:
            return error(400, " ".join(str(e).split()))
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
        except Exception as e:
            return error(500, f"the base classifier failed: {type(e).__name__}: {e}")
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
                "parameters": {**policy.settings.guarantee(), "noise_keys": service.noise_keys},
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
