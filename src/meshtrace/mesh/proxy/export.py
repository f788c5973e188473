"""Span export off the request path: one thread per provider, flushing like Envoy's OpenTelemetry tracer
(every 5 s, or as soon as 5 spans wait; at most every 50 ms, so that under load a
busy proxy sends fewer, larger exports). While an export is in flight, spans keep arriving, so under load
each export carries everything that accumulated: batches grow with traffic instead of exports multiplying.
Failed exports are dropped and counted, as Envoy does; the buffer is bounded."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

import orjson

from meshtrace.mesh.proxy import spanwire
from meshtrace.mesh.proxy.config import Provider

log = logging.getLogger("meshtrace.proxy.export")

FLUSH_INTERVAL = 5.0
MIN_FLUSH_SPANS = 5
MAX_BUFFERED = 50_000
MAX_BATCH = 5000
MIN_EXPORT_INTERVAL = 0.05
FAILURE_PAUSE = 1.0
_EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Exporter:
    """Buffers finished spans (OTLP ``Span`` bytes, or Zipkin dicts) and sends them to the provider."""

    def __init__(self, provider: Provider, resource: list[tuple[str, str]]) -> None:
        self.provider = provider
        self.resource = spanwire.resource(resource)
        self._buffer: deque[Any] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._endpoints = itertools.cycle(provider.endpoints) if provider.endpoints else None
        self.stats = {"spans_sent": 0, "spans_dropped": 0, "exports_ok": 0, "exports_failed": 0}
        self.last_error = ""
        self._client: Any = None
        self._channels: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name=f"export-{provider.name}", daemon=True)
        self._thread.start()

    def add(self, span: Any) -> None:
        buffer = self._buffer
        if len(buffer) >= MAX_BUFFERED:
            self.stats["spans_dropped"] += 1
            return
        buffer.append(span)
        if len(buffer) == MIN_FLUSH_SPANS:
            self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (bounded by ``timeout``), then stop."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        for channel in self._channels.values():
            channel.close()
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            stopping = self._stop
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), MAX_BATCH))]
                if not self._send(batch) and not stopping:
                    time.sleep(FAILURE_PAUSE)
                if len(self._buffer) < MAX_BATCH // 10 and not stopping:
                    break
            if stopping:
                return
            # Exports take the GIL from the request path: under load, let spans gather a little.
            time.sleep(MIN_EXPORT_INTERVAL)

    def _send(self, batch: list[Any]) -> bool:
        if self._endpoints is None:
            self.stats["spans_dropped"] += len(batch)
            return False
        endpoint = next(self._endpoints)
        started = time.monotonic()
        try:
            if self.provider.kind == "zipkin":
                self._post(endpoint, orjson.dumps(batch), "application/json")
            elif self.provider.transport == "http":
                self._post(endpoint, spanwire.export_request(self.resource, batch), "application/x-protobuf")
            else:
                self._grpc(endpoint, spanwire.export_request(self.resource, batch))
        except Exception as exc:
            self.stats["exports_failed"] += 1
            self.stats["spans_dropped"] += len(batch)
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.warning(
                    "export of %d spans to %s (%s) failed: %s", len(batch), self.provider.name, endpoint, message
                )
            self.last_error = message
            return False
        self.stats["exports_ok"] += 1
        self.stats["spans_sent"] += len(batch)
        if self.last_error:
            log.info("export to %s (%s) works again", self.provider.name, endpoint)
            self.last_error = ""
        log.debug("exported %d spans in %.1f ms", len(batch), (time.monotonic() - started) * 1000)
        return True

    def _post(self, endpoint: str, body: bytes, content_type: str) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.provider.timeout, trust_env=False)
        headers = {"content-type": content_type, "host": f"{self.provider.service}:{self.provider.port}"}
        for name, value in self.provider.headers:
            headers[name] = value  # OVERWRITE_IF_EXISTS_OR_ADD
        path = "/" + self.provider.path.lstrip("/")
        response = self._client.post(f"http://{endpoint}{path}", content=body, headers=headers)
        if response.status_code >= 300:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

    def _grpc(self, endpoint: str, body: bytes) -> None:
        import grpc

        channel = self._channels.get(endpoint)
        if channel is None:
            # The provider's address is already resolved; never through an HTTP proxy from the environment.
            options = [("grpc.default_authority", self.provider.service), ("grpc.enable_http_proxy", 0)]
            channel = self._channels[endpoint] = grpc.insecure_channel(endpoint, options=options)
        call = channel.unary_unary(_EXPORT_PATH)
        metadata = [(name.lower(), value) for name, value in self.provider.headers] or None
        call(body, timeout=self.provider.timeout, metadata=metadata)
