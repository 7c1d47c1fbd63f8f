"""Real servers for the tests: `dsmooth serve` in a child process, or an app on uvicorn in
a thread; both on 127.0.0.1 with a free port, both stopped however the test ends.

One copy, so the service tests, the CLI tests and the remote-classifier tests start and
stop servers the same way (and a fix to how a server is awaited lands everywhere).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: The URL a server announces on its first stdout line.
ANNOUNCED_URL = re.compile(r"http://127\.0\.0\.1:\d+")


def read_line(stream, timeout: float) -> str:
    """The next line of a child's stream, or '' after `timeout` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Poll `url`/v2/health/ready until it answers 200; an AssertionError after `timeout`."""
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {url} never became ready")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT, as announced


@contextmanager
def dsmooth_server(
    args: list[str], start_timeout: float = 120.0, env: dict | None = None
) -> Iterator[ServerProcess]:
    """`python -m dsmooth.cli ARGS` (a serving command with --port 0), one thread, until
    its announced URL; terminated (then killed) on exit if it still runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "dsmooth.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = read_line(proc.stdout, start_timeout)
        match = ANNOUNCED_URL.search(line)
        if not match:
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise AssertionError(f"the server did not start: {line!r} {err[-2000:]}")
        yield ServerProcess(proc, match.group(0))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class LiveServer:
    """An ASGI app on a real uvicorn (dsmooth.deploy.service.server.make_server) in a thread.

    `on_shutdown` runs when shutdown begins, as `dsmooth serve --smoothed` closes its
    service; `stop()` asks uvicorn to exit and joins its thread.
    """

    def __init__(
        self,
        app,
        shutdown_timeout: float = 2,
        on_shutdown: Callable[[], None] | None = None,
    ):
        from dsmooth.deploy.service.server import bind, make_server

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(app, shutdown_timeout, on_shutdown)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.01)

    def stop(self, timeout: float = 15) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
