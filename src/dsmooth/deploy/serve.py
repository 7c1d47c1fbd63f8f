"""A small model server speaking the Open Inference Protocol v2 and TensorFlow Serving REST.

`dsmooth serve` puts any model dsmooth can load (typically the robust pipeline
classifier(denoiser(x))) behind the same HTTP APIs as KServe/Triton/MLServer and
TensorFlow Serving, so clients that already speak them can use it. Inputs are float
[0, 1] images, NCHW, as everywhere in dsmooth; the output is the model's scores.
Built on Starlette (served by uvicorn); inference runs one request at a time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import torch

from dsmooth._version import __version__
from dsmooth.errors import UserError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class Predictor:
    """Runs the model on numpy batches, one request at a time (torch uses all cores)."""

    def __init__(self, model: Callable, input_shape: tuple | None, max_batch: int):
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.input_shape = input_shape
        self.max_batch = max_batch
        self.lock = threading.Lock()

    def check(self, array: np.ndarray) -> None:
        if array.ndim != 4:
            raise ValueError(f"input must be a batch (N, C, H, W), got shape {list(array.shape)}")
        if self.input_shape and tuple(array.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"input images must have shape {list(self.input_shape)}, "
                f"got {list(array.shape[1:])}"
            )
        if len(array) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} images per request, got {len(array)}")
        if not np.all(np.isfinite(array)):
            raise ValueError("input contains non-finite values")

    def __call__(self, array: np.ndarray) -> np.ndarray:
        self.check(array)
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        with self.lock, torch.inference_mode():
            out = self.model(x)
        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


def build_app(predictor: Predictor, name: str):
    """The Starlette application serving `predictor` as model `name`."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    handlers = _Handlers(predictor, name)
    routes = [
        Route("/v2", handlers.server_meta),
        Route("/v2/health/live", handlers.live),
        Route("/v2/health/ready", handlers.ready),
        Route("/v2/models/{model}", handlers.model_meta),
        Route("/v2/models/{model}/ready", handlers.model_ready),
        Route("/v2/models/{model}/infer", handlers.infer, methods=["POST"]),
        Route("/v1/models/{model}", handlers.tfs_status),
        Route("/v1/models/{model}/metadata", handlers.tfs_metadata),
        Route("/v1/models/{target}", handlers.tfs_predict, methods=["POST"]),
    ]
    return Starlette(routes=routes)


class _Handlers:
    """The routes of one model server (`build_app`)."""

    def __init__(self, predictor: Predictor, name: str):
        self.predictor = predictor
        self.name = name
        self.shape = [-1, *(predictor.input_shape or (-1, -1, -1))]

    def unknown(self, request):
        if request.path_params["model"] != self.name:
            return _error(404, f"unknown model {request.path_params['model']!r}")
        return None

    def live(self, _request):
        return _json({"live": True})

    def ready(self, _request):
        return _json({"ready": True})

    def server_meta(self, _request):
        return _json({"name": "dsmooth", "version": __version__, "extensions": []})

    def model_meta(self, request):
        if (r := self.unknown(request)) is not None:
            return r
        return _json(
            {
                "name": self.name,
                "versions": ["1"],
                "platform": "pytorch_dsmooth",
                "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": self.shape}],
                "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, -1]}],
            }
        )

    def model_ready(self, request):
        if (r := self.unknown(request)) is not None:
            return r
        return _json({"name": self.name, "ready": True})

    async def infer(self, request):
        if (r := self.unknown(request)) is not None:
            return r
        answer = await self._predict(request, _v2_array)
        if not isinstance(answer, tuple):
            return answer
        doc, out = answer
        return _json(
            {
                "model_name": self.name,
                "id": doc.get("id", ""),
                "outputs": [
                    {
                        "name": OUTPUT_NAME,
                        "shape": list(out.shape),
                        "datatype": "FP32",
                        "data": out.ravel().tolist(),
                    }
                ],
            }
        )

    def tfs_status(self, request):
        if (r := self.unknown(request)) is not None:
            return r
        return _json(
            {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]}
        )

    def tfs_metadata(self, request):
        if (r := self.unknown(request)) is not None:
            return r
        dims = [{"size": str(d)} for d in self.shape]
        sig = {
            "inputs": {INPUT_NAME: {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims}}},
            "outputs": {OUTPUT_NAME: {"dtype": "DT_FLOAT"}},
            "method_name": "tensorflow/serving/predict",
        }
        return _json(
            {
                "model_spec": {"name": self.name, "version": "1"},
                "metadata": {"signature_def": {"signature_def": {"serving_default": sig}}},
            }
        )

    async def tfs_predict(self, request):
        model, _, verb = request.path_params["target"].partition(":")
        if model != self.name or verb != "predict":
            return _error(404, f"unknown model or verb {request.path_params['target']!r}")
        answer = await self._predict(request, _tfs_array)
        if not isinstance(answer, tuple):
            return answer
        return _json({"predictions": answer[1].tolist()})

    async def _predict(self, request, parse):
        """(body, output) of the predictor on the array `parse(body)` reads, or the 400
        answer to a body that does not parse or an input the predictor refuses."""
        try:
            doc = await request.json()
            array = parse(doc)
        except Exception as e:
            return _error(400, f"bad request: {type(e).__name__}: {e}")
        try:
            out = await _in_thread(self.predictor, array)
        except ValueError as e:
            return _error(400, str(e))
        return doc, out


def _v2_array(doc) -> np.ndarray:
    """The one input tensor of an Open Inference Protocol v2 request."""
    (tensor,) = doc["inputs"]
    dims = [int(d) for d in tensor["shape"]]
    data = np.asarray(tensor["data"], dtype=np.float32).ravel()
    if data.size != math.prod(dims):
        raise ValueError(f"{data.size} values for shape {dims}")
    return data.reshape(dims)


def _tfs_array(doc) -> np.ndarray:
    """The instances (or inputs) of a TensorFlow Serving REST predict request."""
    rows = doc["instances"] if "instances" in doc else doc["inputs"]
    if rows and isinstance(rows[0], dict):
        rows = [r[INPUT_NAME] for r in rows]
    return np.asarray(rows, dtype=np.float32)


def _json(content, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status)


def _error(status: int, message: str):
    return _json({"error": message}, status)


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def serve(
    model: Callable,
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    input_shape: tuple | None = None,
    max_batch: int = 1024,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until interrupted; announces `http://host:port` once the socket is bound."""
    import socket

    try:
        import uvicorn
    except ImportError:
        raise UserError(
            "dsmooth serve needs uvicorn and starlette: pip install 'dsmooth[serve]'."
        ) from None
    app = build_app(Predictor(model, input_shape, max_batch), name)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}).") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving {name} on http://{shown}:{bound}/v2/models/{name} and /v1/models/{name}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])
