"""Run the certification service on a socket (uvicorn), safely by default.

Without a bearer token the server binds to loopback only: a certificate service is
expensive to query (every image costs thousands of forward passes), so an open port on
a network would be a free denial of service. The token comes from a file or from the
environment (`DSMOOTH_SERVE_TOKEN`), never from the command line, where `ps` shows it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path

from dsmooth.errors import UserError

#: Environment variable holding the bearer token, when --token-file is not given.
TOKEN_ENV = "DSMOOTH_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None, environ=os.environ) -> str | None:
    """The bearer token from `token_file` (first line, stripped) or $DSMOOTH_SERVE_TOKEN."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise UserError(f"the token file {token_file} does not exist.")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        token = lines[0].strip() if lines else ""
        if len(token) < 16:
            raise UserError(f"the token in {token_file} must be at least 16 characters.")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise UserError(f"${TOKEN_ENV} must be at least 16 characters.")
    return token or None


def check_binding(host: str, token: str | None) -> None:
    """A UserError for a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise UserError(
            f"refusing to listen on {host} without a bearer token: give --token-file or "
            f"${TOKEN_ENV}, or listen on 127.0.0.1 behind a reverse proxy."
        )


def check_bound(sock: socket.socket, token: str | None) -> None:
    """The binding rule once more on the address actually bound: a name such as
    'localhost' passes `check_binding`, but resolves through /etc/hosts or DNS."""
    address = sock.getsockname()[0]
    if token is None and not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        sock.close()
        raise UserError(
            f"refusing to listen on {address} without a bearer token (it is not loopback)."
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a UserError saying why not. It listens at once,
    so a client that reads the announced URL can connect before the server has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}).") from None
    return sock


def make_server(app, shutdown_timeout: float, on_shutdown: Callable[[], None] | None = None):
    """A uvicorn Server for `app`; `server.run(sockets=[sock])`, with a socket from `bind`,
    serves until SIGTERM/SIGINT, then stops accepting, lets requests finish for up to
    `shutdown_timeout` seconds, and closes the service (the app's lifespan).

    uvicorn waits for in-flight requests *before* the lifespan shutdown, so without
    `on_shutdown` a request would run on to its own deadline. `on_shutdown` (typically
    `service.close(grace)`) runs in a thread as soon as shutdown begins: in-flight
    requests get the grace period, then their answers so far."""
    try:
        import uvicorn
    except ImportError:
        raise UserError(
            "dsmooth serve needs uvicorn and starlette: pip install 'dsmooth[serve]'."
        ) from None

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            if on_shutdown is None:
                return await super().shutdown(sockets)
            closing = asyncio.get_running_loop().run_in_executor(None, on_shutdown)
            try:
                await super().shutdown(sockets)
            finally:
                await closing

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=int(max(1, shutdown_timeout)),
        lifespan="on",
    )
    return Server(config)


def serve_app(
    app,
    host: str,
    *,
    port: int,
    token: str | None,
    shutdown_timeout: float,
    announce: Callable[[str], None] = print,
    path: str = "",
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Check the binding rule, bind, announce the URL, serve until interrupted."""
    check_binding(host, token)
    sock = bind(host, port)
    check_bound(sock, token)
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving certificates on http://{shown}:{sock.getsockname()[1]}{path}")
    make_server(app, shutdown_timeout, on_shutdown).run(sockets=[sock])
