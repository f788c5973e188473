"""Listening sockets and HTTP servers shared by ``meshtrace serve`` and ``meshtrace collector``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from meshtrace.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, default_host: str = "0.0.0.0") -> Address:
    """``host:port``, ``[::1]:port`` or ``:port``."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port")
    return Address(host.strip("[]") or default_host, int(port))


def in_pod(address: Address) -> Address:
    """Inside a pod of the local mesh (``MESHTRACE_POD_IP`` set), a wildcard address means the pod's IP and
    a loopback address the pod's own loopback, as a pod's network namespace would have it."""
    pod_ip = os.environ.get("MESHTRACE_POD_IP")
    if not pod_ip:
        return address
    if address.host in ("0.0.0.0", "", "::"):
        return Address(pod_ip, address.port)
    if address.host in ("localhost", "127.0.0.1", "::1"):
        return Address(os.environ.get("MESHTRACE_POD_LOCALHOST", pod_ip), address.port)
    return address


def bind(address: Address, what: str) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); ``ConfigError`` naming ``what`` if taken."""
    address = in_pod(address)
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it, a response written in two parts waits for the
    # client's delayed ACK: 40 ms on every request after the first on a kept-alive connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {address} for {what}: {exc.strerror}",
            path=what,
            fix="choose another port or stop what is using it",
        ) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_chooser = random.SystemRandom()  # not the global generator, which test frameworks reseed
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """``preferred`` if it is free on ``host``, else a free port outside the kernel's ephemeral range, for a
    server started later by another process. A port from that range (what binding port 0 gives) can become
    the local end of any outgoing connection before that server binds it, and its start then fails."""
    try:
        low, high = (int(part) for part in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = range(1024, low), range(high + 1, 65536)
    outside = len(below) + len(above)
    picks = (_chooser.randrange(outside) for _ in range(200 if outside else 0))  # drawn only when needed
    randoms = (below[n] if n < len(below) else above[n - len(below)] for n in picks)
    for port in itertools.chain([preferred] if preferred else [], randoms):
        if port in _handed_out and port != preferred:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # every port is in the ephemeral range, or all those tried are taken
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def shown(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return str(Address(host, port))


class HttpServer(uvicorn.Server):
    """uvicorn without signal handlers of its own: the process stops all its servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(app: Any) -> HttpServer:
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, http="httptools", timeout_graceful_shutdown=10
    )
    return HttpServer(config)


@dataclass(slots=True)
class RunningHttp:
    """An HTTP server started by ``serve_http``."""

    server: HttpServer
    task: asyncio.Task[None]
    address: str

    async def stop(self) -> None:
        """Finish requests in flight, then close (safe to call twice)."""
        self.server.should_exit = True
        await asyncio.gather(self.task, return_exceptions=True)


async def serve_http(app: Any, sock: socket.socket) -> RunningHttp:
    """Start an HTTP server on a bound socket; returns once it accepts connections (or raises)."""
    server = http_server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise OSError(f"the HTTP server on {shown(sock)} stopped during start")
        await asyncio.sleep(0.01)
    return RunningHttp(server, task, shown(sock))
