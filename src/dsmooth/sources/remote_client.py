"""An HTTP client for prediction APIs that is safe to point a certification run at.

Certifying one image costs n0 + n queries (often 100,100), so the client batches
images into requests (`request_size`), keeps a bounded number in flight
(`concurrency`), times out, retries connection errors, 429 and 5xx with exponential
backoff (honouring Retry-After), stops at a query budget, and counts what it spent.
A query is one image sent in one request; retried requests count again, since a
server may bill a request that failed. Credentials travel in a header and never
appear in messages or logs.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dsmooth.errors import UserError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_DELAY = 30.0


@dataclass
class ClientOptions:
    """How the client talks to a server; every field has a CLI flag (docs/sources.md)."""

    request_size: int = 64
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 0.5
    max_queries: int | None = None
    headers: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("request_size", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be at least 1.")
        if not (self.timeout > 0):
            raise UserError(f"timeout must be positive, got {self.timeout}.")
        if self.retries < 0:
            raise UserError(f"retries must be 0 or more, got {self.retries}.")
        if self.max_queries is not None and self.max_queries < 1:
            raise UserError(f"max queries must be at least 1, got {self.max_queries}.")


def credential_headers(
    token_env: str | None = None, token_file: str | None = None, header: str = "Authorization"
) -> dict:
    """A header carrying a token read from an environment variable or a file.

    For `Authorization` the token is sent as `Bearer <token>` unless it already names a
    scheme; any other header (e.g. `x-api-key`) gets the token as it is.
    """
    if token_env and token_file:
        raise UserError("give the credentials by environment variable or by file, not both.")
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise UserError(f"the environment variable {token_env} is not set or empty.")
    elif token_file:
        path = Path(token_file)
        if not path.is_file():
            raise UserError(f"the credentials file {path} does not exist.")
        token = path.read_text().strip()
        if not token:
            raise UserError(f"the credentials file {path} is empty.")
    if token is None:
        return {}
    if header.lower() == "authorization" and " " not in token:
        token = f"Bearer {token}"
    return {header: token}


class QueryBudget:
    """A thread-safe count of queries spent, with an optional limit."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.spent = 0
        self._lock = threading.Lock()

    def spend(self, n: int) -> None:
        with self._lock:
            if self.limit is not None and self.spent + n > self.limit:
                raise UserError(
                    f"the query budget of {self.limit} images is spent ({self.spent} used, "
                    f"{n} more needed); raise --max-queries and rerun to resume."
                )
            self.spent += n


class ServerAnswerError(UserError):
    """The server answered, but not with what the protocol promises."""


class HttpClient:
    """POST JSON with timeouts, retries and a budget; `map` runs requests concurrently."""

    def __init__(self, url: str, options: ClientOptions):
        try:
            import httpx
        except ImportError:
            raise UserError("remote models need httpx: pip install 'dsmooth[remote]'.") from None
        self.httpx = httpx
        self.url = url
        self.options = options
        self.budget = QueryBudget(options.max_queries)
        self.requests = 0
        self.http = httpx.Client(
            timeout=httpx.Timeout(options.timeout),
            limits=httpx.Limits(max_connections=options.concurrency),
            headers={"Content-Type": "application/json", **options.headers},
            follow_redirects=False,
        )
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:  # never shows the headers (credentials)
        return f"HttpClient({self.url!r})"

    def get_json(self, url: str) -> dict | None:
        """GET a JSON document (model metadata); None when the server has none."""
        try:
            r = self.http.get(url)
        except self.httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        try:
            data = r.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def post_json(self, url: str, payload: dict, queries: int) -> dict:
        """POST `payload`, retrying transient failures; the parsed JSON answer."""
        body = json.dumps(payload).encode()
        attempts = self.options.retries + 1
        last, last_retry_after = "", None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self._delay(attempt, last_retry_after))
            last_retry_after = None
            self.budget.spend(queries)
            self.requests += 1
            try:
                r = self.http.post(url, content=body)
            except self.httpx.TimeoutException:
                last = f"no answer within {self.options.timeout:g} s"
                continue
            except self.httpx.TransportError as e:
                last = f"connection failed: {type(e).__name__}"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}"
                last_retry_after = _retry_after(r.headers.get("retry-after"))
                continue
            if r.status_code != 200:
                raise UserError(
                    f"the model server at {url} refused the request: HTTP {r.status_code} "
                    f"{_snippet(r.text)}."
                )
            try:
                data = r.json()
            except ValueError:
                raise ServerAnswerError(
                    f"the model server at {url} answered with invalid JSON ({_snippet(r.text)})."
                ) from None
            if not isinstance(data, dict):
                raise ServerAnswerError(f"the model server at {url} answered a non-object JSON.")
            return data
        raise UserError(
            f"the model server at {url} failed {attempts} times (last: {last}); completed rows "
            "are kept, rerun to resume."
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(MAX_DELAY, self.options.backoff * 2 ** (attempt - 1))
        delay *= 1 + 0.25 * random.random()  # jitter: concurrent retries do not align
        if retry_after is not None:
            delay = max(delay, min(MAX_DELAY, retry_after))
        return delay

    def map(self, fn: Callable, items: list) -> list:
        """fn over items with at most `concurrency` in flight; results in order."""
        if len(items) <= 1 or self.options.concurrency == 1:
            return [fn(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.concurrency, "dsmooth-remote")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.http.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "...") if len(text) > limit else text
