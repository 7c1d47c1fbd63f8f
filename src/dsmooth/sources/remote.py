"""Classifiers behind a prediction API (query access): black-box, over HTTP/JSON.

Two protocols, chosen from the URL (or `protocol=`):
- Open Inference Protocol v2 (KServe, Triton, MLServer, `dsmooth serve`):
  `http://host:port/v2/models/NAME` -> `POST .../v2/models/NAME/infer`;
- TensorFlow Serving REST: `http://host:port/v1/models/NAME` ->
  `POST .../v1/models/NAME:predict`.
Model metadata, when the server offers it, gives the input name, dtype and layout.
The answer may be scores (N, K) or labels (N,); anything else is a clear error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch

from dsmooth.errors import UserError
from dsmooth.sources.contract import InputContract, contract_from_options, detect_layout
from dsmooth.sources.options import SourceOptions
from dsmooth.sources.outputs import pick_output
from dsmooth.sources.remote_client import (
    ClientOptions,
    HttpClient,
    ServerAnswerError,
    credential_headers,
)

PROTOCOLS = ("v2", "tfserving")
_V2 = re.compile(r"^(?P<base>.*?/v2/models/[^/:]+(?:/versions/[^/:]+)?)(?:/infer)?/?$")
_TFS = re.compile(r"^(?P<base>.*?/v1/models/[^/:]+(?:/versions/[^/:]+)?)(?::predict)?/?$")
_V2_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8}
_NUMPY_TO_V2 = {np.dtype(v): k for k, v in _V2_TYPES.items()}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """(protocol, model base URL) for a model URL; UserError for anything else."""
    if protocol and protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    for name, pattern in (("v2", _V2), ("tfserving", _TFS)):
        m = pattern.match(url)
        if m and protocol in (None, name):
            return name, m.group("base")
    if protocol:
        return protocol, url.rstrip("/")
    raise UserError(
        f"cannot tell the protocol of {url}: use http://HOST:PORT/v2/models/NAME (Open "
        "Inference Protocol) or http://HOST:PORT/v1/models/NAME (TensorFlow Serving), or "
        "pass --protocol."
    )


class RemoteClassifier:
    """Callable: [0, 1] NCHW torch batch -> scores or labels (numpy) from a server.

    `queries` is the number of images sent so far (the log's `queries` column).
    """

    def __init__(
        self,
        url: str,
        protocol: str,
        *,
        contract: InputContract,
        client: ClientOptions,
        input_name: str | None = None,
        output_name: str | None = None,
    ):
        self.protocol = protocol
        self.base = url
        self.endpoint = f"{url}/infer" if protocol == "v2" else f"{url}:predict"
        self.http = HttpClient(self.endpoint, client)
        self.output_name = output_name
        self.input_name = input_name
        self.device = torch.device("cpu")
        meta = self._metadata()
        self.contract = contract.with_layout(meta.get("layout") or "NCHW")
        if meta.get("dtype") == np.uint8 and self.contract.dtype != "uint8":
            self.contract = replace(self.contract, dtype="uint8", range=255.0)
        self.input_name = input_name or meta.get("input_name") or "input"

    @property
    def queries(self) -> int:
        return self.http.budget.spent

    def __repr__(self) -> str:
        return f"RemoteClassifier({self.protocol}, {self.base!r})"

    def _metadata(self) -> dict:
        if self.protocol == "v2":
            doc = self.http.get_json(self.base)
            inputs = (doc or {}).get("inputs") or []
            if len(inputs) != 1 or not isinstance(inputs[0], dict):
                return {}
            shape = [
                d if isinstance(d, int) and d > 0 else None for d in inputs[0].get("shape", [])
            ]
            return {
                "input_name": inputs[0].get("name"),
                "layout": detect_layout(shape),
                "dtype": _V2_TYPES.get(str(inputs[0].get("datatype", "")).upper()),
            }
        doc = self.http.get_json(f"{self.base}/metadata")
        try:
            sigs = doc["metadata"]["signature_def"]["signature_def"]
            (name, spec), *rest = sigs.get("serving_default", {}).get("inputs", {}).items()
            dims = [int(d.get("size", -1)) for d in spec["tensor_shape"]["dim"]]
        except (TypeError, KeyError, ValueError, AttributeError):
            return {}
        if rest:
            return {}
        return {
            "input_name": name,
            "layout": detect_layout([d if d > 0 else None for d in dims]),
            "dtype": np.uint8 if spec.get("dtype") == "DT_UINT8" else None,
        }

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        array = self.contract.convert(x.detach().to("cpu", torch.float32)).numpy()
        size = self.http.options.request_size
        chunks = [array[i : i + size] for i in range(0, len(array), size)]
        parts = self.http.map(self._infer, chunks)
        widths = {p.shape[1:] for p in parts}
        if len(widths) != 1:
            raise ServerAnswerError(
                f"the model server at {self.endpoint} answered with shapes that change "
                "between requests."
            )
        return np.concatenate(parts)

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        if self.protocol == "v2":
            out = self._decode_v2(
                self.http.post_json(self.endpoint, self._encode_v2(chunk), len(chunk))
            )
        else:
            payload = {"instances": chunk.tolist()}
            out = self._decode_tfs(self.http.post_json(self.endpoint, payload, len(chunk)))
        return self._check(out, len(chunk))

    def _encode_v2(self, chunk: np.ndarray) -> dict:
        request = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": list(chunk.shape),
                    "datatype": _NUMPY_TO_V2.get(chunk.dtype, "FP32"),
                    "data": chunk.ravel().tolist(),
                }
            ]
        }
        if self.output_name:
            request["outputs"] = [{"name": self.output_name}]
        return request

    def _nonsense(self, what: str) -> ServerAnswerError:
        return ServerAnswerError(f"the model server at {self.endpoint} answered {what}.")

    def _decode_v2(self, doc: dict) -> np.ndarray:
        outputs = doc.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            if "error" in doc:
                raise self._nonsense(f"an error: {str(doc['error'])[:200]}")
            raise self._nonsense("without 'outputs' (not an Open Inference Protocol response)")
        named = {}
        for i, o in enumerate(outputs):
            if not isinstance(o, dict) or "data" not in o or "shape" not in o:
                raise self._nonsense("an output without 'data' and 'shape'")
            named[o.get("name", f"output_{i}")] = o
        o = pick_output(named, self.output_name, self.endpoint)
        try:
            shape = [int(d) for d in o["shape"]]
            data = np.asarray(o["data"], dtype=np.float64)
        except (TypeError, ValueError):
            raise self._nonsense("an output with non-numeric data or shape") from None
        if data.ndim != 1 and data.size == math.prod(shape):
            data = data.ravel()
        if data.size != math.prod(shape):
            raise self._nonsense(f"{data.size} values for an output of shape {shape}")
        return data.reshape(shape)

    def _decode_tfs(self, doc: dict) -> np.ndarray:
        if "error" in doc:
            raise self._nonsense(f"an error: {str(doc['error'])[:200]}")
        predictions = doc.get("predictions", doc.get("outputs"))
        if predictions is None:
            raise self._nonsense("without 'predictions' (not a TensorFlow Serving response)")
        if isinstance(predictions, dict):  # columnar format: one list per output name
            predictions = pick_output(predictions, self.output_name, self.endpoint)
        elif predictions and isinstance(predictions[0], dict):  # row format, several outputs
            try:
                predictions = [pick_output(p, self.output_name, self.endpoint) for p in predictions]
            except (TypeError, AttributeError):
                raise self._nonsense("predictions of mixed kinds") from None
        try:
            return np.asarray(predictions, dtype=np.float64)
        except (TypeError, ValueError):
            raise self._nonsense("predictions that are not a numeric array") from None

    def _check(self, out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim == 2 and out.shape[1] == 1 and np.all(out == np.round(out)):
            out = out[:, 0]  # one label per image
        if out.ndim not in (1, 2) or out.shape[0] != n:
            raise self._nonsense(
                f"shape {list(out.shape)} for {n} images (expected ({n},) labels or ({n}, K) "
                "scores)"
            )
        if not np.all(np.isfinite(out)):
            raise self._nonsense("non-finite values")
        if out.ndim == 1 and np.all(out == np.round(out)):
            out = out.astype(np.int64)  # JSON labels decode as floats; to_labels wants ints
        return out

    def close(self) -> None:
        self.http.close()


def client_options(options: SourceOptions | Mapping) -> ClientOptions:
    """The client settings given, ClientOptions' defaults for the rest."""
    options = SourceOptions.of(options)
    headers = credential_headers(
        options.token_env,
        options.token_file,
        options.auth_header or "Authorization",
    )
    defaults = ClientOptions()

    def given(name: str):  # 0 is a value (refused by ClientOptions), not "not given"
        value = getattr(options, name)
        return getattr(defaults, name) if value is None else value

    return ClientOptions(
        request_size=int(given("request_size")),
        concurrency=int(given("concurrency")),
        timeout=float(given("timeout")),
        retries=int(given("retries")),
        backoff=float(given("backoff")),
        max_queries=options.max_queries,
        headers=headers,
    )


def is_remote(spec: str) -> bool:
    """True for a classifier spec that names a model server (an http(s) URL)."""
    return str(spec).startswith(("http://", "https://"))


def resolve(spec: str, options: SourceOptions):
    if not is_remote(spec):
        return None
    if not options.as_classifier:
        raise UserError("a remote model can only be the classifier; the denoiser runs locally.")
    protocol, base = parse_url(spec, options.protocol)
    return RemoteClassifier(
        base,
        protocol,
        contract=contract_from_options(options),
        client=client_options(options),
        input_name=options.input_name,
        output_name=options.output_name,
    )
