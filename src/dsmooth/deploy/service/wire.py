"""Request bodies to image batches and certificates to response bodies.

Two shapes of the same call: the Open Inference Protocol v2 (`inputs` with one FP32 or
UINT8 NCHW tensor, `parameters`; `outputs` with one tensor per field) and a plain JSON
route (`images` as nested lists, parameters beside them; one object per image). Every
problem with the input is a `BadRequest` whose message says what is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dsmooth.deploy.service.certification import Outcome

#: Top-level keys of the plain JSON route that are not certification parameters.
JSON_RESERVED = ("images", "id", "datatype")

#: Bytes one pixel value may take in a request body: a float32 in full precision as
#: Python's json writes it ("0.0039215688593685627", 21 characters), its separator, and
#: room for brackets and some whitespace. UINT8 values ("255, ") take far less.
BYTES_PER_VALUE = 32

#: Bytes of a request body besides its pixel values: keys, parameters, id.
BODY_OVERHEAD = 64 * 2**10


def body_limit(input_shape: tuple[int, int, int], max_images: int) -> int:
    """The largest request body to accept: what `max_images` images of `input_shape` take
    as JSON. Bodies beyond it are refused with 413 before they are read, so the limit
    follows the model and the per-request image limit rather than a fixed constant."""
    return int(max_images) * math.prod(input_shape) * BYTES_PER_VALUE + BODY_OVERHEAD


class BadRequest(Exception):
    """A malformed or out-of-range request; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def images_from_v2(doc) -> tuple[np.ndarray, dict, str]:
    """(images (N, C, H, W) float32 in [0, 1], parameters, id) from an OIP v2 infer body."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object with 'inputs'.")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must hold exactly one tensor (the images, NCHW).")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadRequest("the input tensor needs 'shape', a list of non-negative integers.")
    datatype = tensor.get("datatype", "FP32")
    if datatype not in ("FP32", "UINT8"):
        raise BadRequest(f"datatype must be FP32 (pixels in [0, 1]) or UINT8, got {datatype!r}.")
    data = _array(tensor.get("data"), "the input tensor's 'data'")
    if data.size != math.prod(shape):
        raise BadRequest(f"{data.size} values do not fill shape {shape}.")
    images = to_pixels(data.reshape(shape), datatype)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object.")
    return images, params, str(doc.get("id", ""))


def images_from_json(doc) -> tuple[np.ndarray, dict, str]:
    """(images, parameters, id) from the plain route: {"images": N x C x H x W, ...}."""
    if not isinstance(doc, dict) or "images" not in doc:
        raise BadRequest("the body must be a JSON object with 'images' (N x C x H x W).")
    data = _array(doc["images"], "'images'")
    params = {k: v for k, v in doc.items() if k not in JSON_RESERVED}
    return to_pixels(data, doc.get("datatype", "FP32")), params, str(doc.get("id", ""))


def _array(data, what: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"{what} must be a list of numbers.")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond 1e308
        raise BadRequest(
            f"{what} must be a regular list of numbers (no strings, no ragged rows)."
        ) from None
    if array.dtype != np.float64:
        raise BadRequest(f"{what} must hold numbers.")
    return array


def to_pixels(array: np.ndarray, datatype: str) -> np.ndarray:
    """float32 images in [0, 1] (UINT8 values m become m / 255), or a BadRequest."""
    if array.ndim != 4:
        raise BadRequest(f"images must be a batch N x C x H x W, got shape {list(array.shape)}.")
    if array.shape[0] == 0:
        raise BadRequest("the request holds no images.")
    if array.size == 0:
        raise BadRequest(f"images must not have an empty dimension, got shape {list(array.shape)}.")
    if np.isnan(array).any():
        raise BadRequest("the images contain NaN values.")
    if not np.isfinite(array).all():
        raise BadRequest("the images contain infinite values.")
    if datatype == "UINT8":
        if (array != np.round(array)).any() or array.min() < 0 or array.max() > 255:
            raise BadRequest("UINT8 images must hold integers in 0..255.")
        return torch.from_numpy(array.astype(np.uint8)).float().div_(255.0).numpy()
    if datatype != "FP32":
        raise BadRequest(f"datatype must be FP32 or UINT8, got {datatype!r}.")
    pixels = array.astype(np.float32)
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0:
        raise BadRequest(
            f"pixel values must lie in [0, 1], got [{lo:g}, {hi:g}]; divide 0-255 data by 255 "
            "or send datatype UINT8."
        )
    return pixels


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def certificate_json(outcome: Outcome, index: int) -> dict:
    """One image's certificate in the plain route's response."""
    return {
        "index": index,
        "prediction": int(outcome.prediction),
        "abstained": outcome.prediction < 0,
        "radius": float(outcome.radius),
        "pA_lower": float(outcome.p_lower),
        "n_used": int(outcome.n_used),
        "reason": outcome.reason,
        "stopped_early": bool(outcome.stopped_early),
    }


def v2_parameters(guarantee: dict) -> dict:
    """The guarantee as OIP v2 parameters, which are scalars: target radii become one
    comma-separated string in full (repr) precision, since they decide when sampling stops."""
    return {
        k: (",".join(repr(float(r)) for r in v) if isinstance(v, list) else v)
        for k, v in guarantee.items()
    }


def v2_response(name: str, request_id: str, outcomes: list[Outcome], first: int, guarantee: dict):
    """The OIP v2 infer response: one output tensor per certificate field."""
    n = len(outcomes)

    def tensor(key: str, datatype: str, values: list) -> dict:
        return {"name": key, "datatype": datatype, "shape": [n], "data": values}

    return {
        "model_name": name,
        "id": request_id,
        "parameters": v2_parameters(guarantee),
        "outputs": [
            tensor("prediction", "INT64", [int(o.prediction) for o in outcomes]),
            tensor("radius", "FP64", [float(o.radius) for o in outcomes]),
            tensor("pA_lower", "FP64", [float(o.p_lower) for o in outcomes]),
            tensor("n_used", "INT64", [int(o.n_used) for o in outcomes]),
            tensor("stopped_early", "BOOL", [bool(o.stopped_early) for o in outcomes]),
            tensor("reason", "BYTES", [o.reason for o in outcomes]),
            tensor("index", "INT64", list(range(first, first + n))),
        ],
    }
