"""`CertifiedClient`: certificates from a `dsmooth serve --smoothed` server.

This talks to a server of the *smoothed* classifier: each answer is a certificate
(class or abstain, l2 radius, pA lower bound, samples, and the guarantee's parameters).
It is not `dsmooth certify --classifier http://...`, which queries a *base* model server
for labels and certifies locally (docs/service.md, docs/query-access.md).
"""

from __future__ import annotations

import datetime
import email.utils
import time
from dataclasses import dataclass

import numpy as np

from dsmooth.errors import UserError

ABSTAIN = -1


class ServiceError(UserError):
    """The server refused or failed the request; `status` is its HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(f"the certification server answered {status}: {message}")
        self.status = status
        self.reason = message


class ServerBusy(ServiceError):
    """429: the server's queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(429, message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Certificate:
    """One image's answer. With probability >= 1 - alpha over the server's noise, the
    smoothed classifier is constant (= prediction) on the l2 ball of `radius`."""

    index: int
    prediction: int
    radius: float
    p_lower: float
    n_used: int
    reason: str
    stopped_early: bool
    guarantee: dict

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


class CertifiedClient:
    """A client of the plain JSON route (`POST /v1/certify`).

    `url` is the server's base URL (http://HOST:PORT); `token` is the bearer token if
    the server has one; `timeout` (seconds) bounds each request, and must exceed the
    server's own per-request deadline to receive its early-stopped answers.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CertifiedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def certify(self, images, **params) -> list[Certificate]:
        """Certificates for `images`: (N, C, H, W) or (C, H, W), float in [0, 1] or uint8.

        `params` may tighten the server's settings: alpha, n0, n / n_max, radius (target
        radii), tol, timeout; and set seed and index (the first image's index, which keys
        its noise). Do not vary the seed to retry abstentions: the guarantee is per query.
        """
        import httpx

        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise UserError(f"images must be (N, C, H, W) or (C, H, W), got {array.shape}.")
        if array.dtype == np.uint8:
            body = {"images": array.tolist(), "datatype": "UINT8"}
        else:
            body = {"images": array.astype(np.float32).tolist()}
        body.update({k: _plain(v) for k, v in params.items()})
        try:
            response = self._http.post("/v1/certify", json=body)
        except httpx.TimeoutException:
            raise UserError(
                f"the certification server at {self.url} did not answer in time."
            ) from None
        except httpx.HTTPError as e:
            raise UserError(f"cannot reach the certification server at {self.url} ({e}).") from None
        return _certificates(response)


def retry_after(value: str | None, now: float | None = None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header: delay-seconds ("120") or an HTTP-date
    ("Wed, 21 Oct 2026 07:28:00 GMT"), RFC 9110 section 10.2.3; `default` when it is
    missing or unreadable, 0 for a date already past. `now` is a time.time() value."""
    text = (value or "").strip()
    if text.isascii() and text.isdigit():  # "²".isdigit() is True too
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return default
    if when.tzinfo is None:  # "-0000": a date in UTC with no zone information
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _plain(value):
    if isinstance(value, (tuple, np.ndarray)):
        return [float(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _certificates(response) -> list[Certificate]:
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    if response.status_code == 429:
        retry = retry_after(response.headers.get("retry-after"))
        raise ServerBusy(doc.get("error", "busy"), retry)
    if response.status_code != 200:
        raise ServiceError(response.status_code, doc.get("error", response.text[:200]))
    guarantee = doc.get("guarantee", {})
    return [
        Certificate(
            index=int(c["index"]),
            prediction=int(c["prediction"]),
            radius=float(c["radius"]),
            p_lower=float(c["pA_lower"]),
            n_used=int(c["n_used"]),
            reason=str(c["reason"]),
            stopped_early=bool(c["stopped_early"]),
            guarantee=guarantee,
        )
        for c in doc["certificates"]
    ]
