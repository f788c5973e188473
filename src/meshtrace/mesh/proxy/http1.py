"""The proxy's HTTP/1.1 engine: ``asyncio.Protocol`` + ``httptools`` on uvloop, callback style.

No task or future per request: a downstream connection parses requests into ``Exchange`` objects, a
listener decides where each goes (and traces it), and kept-alive upstream connections from a LIFO pool
carry it. Headers stay bytes. Small responses leave in one ``write``; large bodies stream with
backpressure both ways. Request bodies are buffered (up to ``MAX_REQUEST_BODY``), which keeps retries on
a stale pooled connection possible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final

import httptools

from meshtrace.mesh.proxy import headers
from meshtrace.mesh.proxy.config import Cluster
from meshtrace.mesh.proxy.tracer import Note, Span

log = logging.getLogger("meshtrace.proxy")

MAX_REQUEST_BODY: Final = 32 * 1024 * 1024
MAX_HEADERS: Final = 100
# Envoy's limit on a head (60 KiB by default), here for responses: an upstream's head is held until it ends.
MAX_RESPONSE_HEAD: Final = 60 * 1024
CONNECT_TIMEOUT: Final = 10.0
MAX_ATTEMPTS: Final = 3  # Istio's default route retry policy: 2 retries on connect failure and reset


class Handler:
    """A listener: routes each exchange and finishes its spans. A base class rather than a ``Protocol``:
    compiled (``native``), a call through a base class is a C call through its method table, through a
    ``Protocol`` a Python method call (~800–1,200 instructions per request for ``handle`` and ``complete``)."""

    def handle(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def complete(self, exchange: Exchange) -> None:
        raise NotImplementedError


class Pool:
    """Idle kept-alive upstream connections per endpoint, most recently used first."""

    def __init__(self, source_ip: str | None) -> None:
        self.source_ip = source_ip
        self.idle: dict[str, list[Upstream]] = {}
        self.opened = 0

    def acquire(self, endpoint: str) -> Upstream | None:
        idle = self.idle.get(endpoint)
        while idle:
            upstream = idle.pop()
            if not upstream.closed:
                return upstream
        return None

    def release(self, upstream: Upstream) -> None:
        self.idle.setdefault(upstream.endpoint, []).append(upstream)

    def discard(self, upstream: Upstream) -> None:
        idle = self.idle.get(upstream.endpoint)
        if idle and upstream in idle:
            idle.remove(upstream)

    def close(self) -> None:
        for idle in self.idle.values():
            for upstream in idle:
                if upstream.transport is not None:
                    upstream.transport.close()
        self.idle.clear()

    async def connect(self, endpoint: str) -> Upstream:
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        local = (self.source_ip, 0) if self.source_ip else None
        _, upstream = await asyncio.wait_for(
            loop.create_connection(lambda: Upstream(self, endpoint), host, int(port), local_addr=local),
            CONNECT_TIMEOUT,
        )
        self.opened += 1
        return upstream


class Exchange:
    """One request and its response, with what the listener attached (route, spans, tags)."""

    __slots__ = (
        "attempts",
        "body",
        "cluster",
        "down",
        "endpoint",
        "flags",
        "headers",
        "keep_alive",
        "lines",
        "method",
        "note",
        "response_bytes",
        "response_started",
        "span",
        "started",
        "status",
        "target",
        "upstream",
        "upstream_head",
        "upstream_span",
    )

    def __init__(self, down: Downstream, method: bytes, target: bytes, keep_alive: bool) -> None:
        self.down = down
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.lines: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        # Typed, not Any: the compiled listeners then read them (and call the tracer) as C, not as Python.
        self.cluster: Cluster | None = None
        self.endpoint = ""
        self.upstream_head = b""
        self.span: Span | None = None
        self.upstream_span: Span | None = None
        self.note: Note | None = None
        self.status = 0
        self.flags = "-"
        self.response_bytes = 0
        self.response_started = False
        self.attempts = 0
        self.upstream: Upstream | None = None
        self.started = time.monotonic()

    # -- sending upstream ---------------------------------------------------------------------

    def forward(self, endpoint: str, head: bytes) -> None:
        """Send the request to ``endpoint`` (``head`` ends with the blank line; the body follows)."""
        self.endpoint = endpoint
        self.upstream_head = head
        self._attempt(self.down.pool.acquire(endpoint))

    def _attempt(self, upstream: Upstream | None) -> None:
        self.attempts += 1
        if upstream is not None:
            upstream.send(self)
            return
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            upstream = await self.down.pool.connect(self.endpoint)
        except (TimeoutError, OSError) as exc:
            if self.down.closed:
                return self.down.finish(self)
            if self.attempts < MAX_ATTEMPTS:
                return self._attempt(None)
            reason = getattr(exc, "strerror", None) or "timeout"
            flags = "UF,URX" if self.attempts > 1 else "UF"
            body = (
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
                f"remote connection failure, transport failure reason: delayed connect error: {reason}"
            )
            return self.local_reply(503, body, flags)
        if self.down.closed:
            upstream.transport.close()  # type: ignore[union-attr]
            return self.down.finish(self)
        upstream.send(self)

    def upstream_lost(self, received_any: bool) -> None:
        """The upstream connection closed before the response completed."""
        self.upstream = None
        if self.down.closed:
            return
        if not received_any and self.attempts < MAX_ATTEMPTS:
            return self._attempt(None)
        if not self.response_started:
            return self.local_reply(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                "UC",
            )
        self.flags = "UPE" if self.status else "UC"
        self.down.abort(self)

    # -- responses ----------------------------------------------------------------------------

    def local_reply(self, status: int, body: str, flags: str, extra: bytes = b"") -> None:
        """A response the proxy makes itself (no route, no upstream, connect failure...)."""
        payload = body.encode()
        self.status = status
        self.flags = flags
        self.response_bytes = len(payload)
        head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n" % (
            status,
            headers.REASONS.get(status, b"Unknown"),
            len(payload),
        )
        head += extra + b"date: " + headers.http_date() + b"\r\nserver: istio-envoy\r\n"
        if not self.keep_alive:
            head += b"connection: close\r\n"
        self.down.write(head + b"\r\n" + (payload if self.method != b"HEAD" else b""))
        self.down.finish(self)


class Downstream(asyncio.Protocol):
    """One accepted connection: requests in, responses out, in order (pipelined requests queue up)."""

    def __init__(self, handler: Handler, pool: Pool) -> None:
        self.handler = handler
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.closed = False
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None
        self._building: Exchange | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._lines: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._paused_upstream: Upstream | None = None

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "upgrades are not supported by this proxy")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")
        except _TooLarge as exc:
            self._reject(exc.status, exc.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        current = self.current
        if current is not None:
            current.flags = "DC"
            if current.upstream is not None:
                current.upstream.abandon()
            self.current = None
            self.handler.complete(current)
        self.queue.clear()

    def pause_writing(self) -> None:
        upstream = self.current.upstream if self.current else None
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()
            self._paused_upstream = upstream

    def resume_writing(self) -> None:
        upstream, self._paused_upstream = self._paused_upstream, None
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            upstream.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_size = 0
        self._building = None
        self._lines = []
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._lines) + len(self._headers) > MAX_HEADERS:
            raise _TooLarge(431, "too many request headers")
        lower, kind, _ = headers.header_name(name)
        if kind == headers.KEEP:
            self._headers[lower] = value
        elif kind == headers.HOP:
            return
        else:
            if kind == headers.OBSERVE:
                self._headers[lower] = value
            self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        # Not the HTTP version: httptools formats it with str.format on every call (~2,200 instructions).
        exchange = Exchange(self, parser.get_method(), self._url, parser.should_keep_alive())
        exchange.lines = self._lines
        exchange.headers = self._headers
        self._building = exchange
        expect = self._headers.get(b"expect")  # (a method call such as lower() costs ~250 instructions)
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_REQUEST_BODY:
            raise _TooLarge(413, "request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        exchange = self._building
        if exchange is None:
            return
        self._building = None
        if self._body:
            exchange.body = b"".join(self._body)
        if self.current is None:
            self._start(exchange)
        else:
            self.queue.append(exchange)

    # -- exchanges ----------------------------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        try:
            self.handler.handle(exchange)
        except Exception:
            log.exception("proxy error handling %s %s", exchange.method, exchange.target)
            if self.current is exchange and not exchange.response_started:
                exchange.local_reply(500, "internal proxy error", "-")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def finish(self, exchange: Exchange) -> None:
        """The response is complete: finish its spans, then go on with the next request (or close)."""
        if self.current is not exchange:
            return
        self.current = None
        self.handler.complete(exchange)
        if not exchange.keep_alive or self.closed:
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self._start(self.queue.popleft())

    def abort(self, exchange: Exchange) -> None:
        """The response broke after it started: the client sees the connection close."""
        if self.current is exchange:
            self.current = None
            self.handler.complete(exchange)
        if self.transport is not None:
            self.transport.close()

    def _reject(self, status: int, reason: str) -> None:
        body = reason.encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
            status,
            headers.REASONS.get(status, b"Error"),
            len(body),
        )
        if self.transport is not None:
            self.transport.write(head + body)
            self.transport.close()
        self.closed = True


class _TooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Upstream(asyncio.Protocol):
    """A connection to one endpoint, carrying one exchange at a time."""

    def __init__(self, pool: Pool, endpoint: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self._received = False
        self._head_size = 0  # what arrived of the response's head while it was still to come
        self._head: bytes | None = None
        self._lines: list[bytes] = []
        self._length: bytes | None = None
        self._chunked = False
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is None:
            self.pool.discard(self)
            return
        if exchange.status and self._length is None and not self._chunked:
            self._keep_alive = False
            self.on_message_complete()  # a response without a length ends with its connection
            return
        self.exchange = None
        exchange.upstream_lost(self._received)

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
            exchange = self.exchange
            if exchange is not None and exchange.status == 0:  # the final head is still to come
                self._head_size += len(data)
                if self._head_size > MAX_RESPONSE_HEAD:
                    raise httptools.HttpParserError("response head too large")
        except httptools.HttpParserError:
            exchange, self.exchange = self.exchange, None
            if self.transport is not None:
                self.transport.close()
            if exchange is not None:
                if exchange.response_started:
                    exchange.flags = "UPE"
                    exchange.down.abort(exchange)
                else:
                    exchange.local_reply(502, "upstream sent a malformed response", "UPE")

    def send(self, exchange: Exchange) -> None:
        self.exchange = exchange
        exchange.upstream = self
        self._received = False
        self._head_size = 0
        self._head = None
        self._lines = []
        self._length = None
        self._chunked = False
        self._keep_alive = True
        assert self.transport is not None
        if exchange.body:
            self.transport.write(exchange.upstream_head + exchange.body)
        else:
            self.transport.write(exchange.upstream_head)

    def abandon(self) -> None:
        """The downstream went away mid-exchange: this connection cannot be reused."""
        self.exchange = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in headers.DROPPED_LENGTHS:
            lower, _, dropped = headers.header_name(name)
            if dropped:
                if lower == b"content-length":
                    self._length = value
                elif lower == b"transfer-encoding":
                    self._chunked = b"chunked" in value.lower()
                elif lower == b"connection" and len(value) == 5 and value.lower() == b"close":
                    self._keep_alive = False
                return
        self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            self._lines = []  # informational responses are not forwarded; the final one follows
            return
        if not parser.should_keep_alive():
            self._keep_alive = False
        exchange.status = status
        elapsed = b"%d" % int((time.monotonic() - exchange.started) * 1000)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, headers.REASONS.get(status, b"Unknown")), *self._lines]
        no_body = exchange.method == b"HEAD" or status in (204, 304)
        if self._length is not None:
            head.append(b"content-length: " + self._length + b"\r\n")
        elif not no_body:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"x-envoy-upstream-service-time: " + elapsed + b"\r\n")
        if not exchange.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self._head = b"".join(head)
        if exchange.method == b"HEAD":
            # httptools cannot be told the request was HEAD: finish here, and never reuse this connection.
            self._keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        exchange.response_bytes += len(body)
        if self._length is None:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        head, self._head = self._head, None
        exchange.response_started = True
        exchange.down.write(head + body if head is not None else body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or exchange.status == 0:
            return
        self.exchange = None
        exchange.upstream = None
        head, self._head = self._head, None
        tail = (
            b"0\r\n\r\n"
            if self._length is None and exchange.method != b"HEAD" and exchange.status not in (204, 304)
            else b""
        )
        if head is not None:
            exchange.down.write(head + tail)
        elif tail:
            exchange.down.write(tail)
        exchange.response_started = True
        if self._keep_alive and not self.closed:
            self.reused = True
            self.pool.release(self)
        elif self.transport is not None:
            self.closed = True
            self.transport.close()
        exchange.down.finish(exchange)
