"""``meshtrace serve``: the store, the OTLP/gRPC, OTLP/HTTP and query servers, one event loop.

Start order: bind the HTTP ports (alive, not ready), open the store (a ClickHouse server is waited for
up to ``--store-wait``) and replay the write-ahead log, start gRPC, swap the real apps in, announce. Stop order
(SIGTERM/SIGINT): stop taking requests and finish those in flight, insert everything acknowledged,
close the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import orjson

from meshtrace import heap
from meshtrace.api import starting
from meshtrace.api.app import create_app
from meshtrace.config import ServeConfig
from meshtrace.errors import ConfigError, StoreError
from meshtrace.ingest.auth import TokenAuth
from meshtrace.ingest.grpc_server import TraceServiceHandler, create_server
from meshtrace.ingest.http_app import OtlpHttpApp
from meshtrace.ingest.service import IngestService
from meshtrace.listen import Address, RunningHttp, bind, serve_http, shown
from meshtrace.metrics import Metrics
from meshtrace.query.service import QueryService
from meshtrace.store import Store, StoreSize
from meshtrace.store.wal import Record

T = TypeVar("T")

log = logging.getLogger("meshtrace")


@dataclass(frozen=True, slots=True)
class Endpoints:
    grpc: str
    otlp_http: str
    http: str


class _Cached(Generic[T]):
    """A reading of the store, taken at most every few seconds however often Prometheus scrapes."""

    def __init__(self, what: str, read: Callable[[], T], empty: T, ttl: float = 5.0) -> None:
        self.what, self.read, self.ttl = what, read, ttl
        self._value = empty
        self._at = -ttl

    def get(self) -> T:
        if time.monotonic() - self._at >= self.ttl:
            try:
                self._value = self.read()
            except StoreError as exc:
                log.warning("cannot read the store's %s: %s", self.what, exc)
            self._at = time.monotonic()
        return self._value


class Backend:
    """The running backend; ``start`` then ``wait`` then ``stop``."""

    def __init__(self, config: ServeConfig, tokens: dict[str, str]) -> None:
        self.config = config
        self.metrics = Metrics()
        self.auth = TokenAuth(tokens, enabled=not config.no_auth)
        if config.admin_tenant and config.admin_tenant not in self.auth.tenants:
            raise ConfigError(
                f"admin tenant {config.admin_tenant!r} has no token",
                path="admin_tenant",
                fix=f"give it one with --token {config.admin_tenant}=TOKEN, or name a tenant that has one",
            )
        self.store: Store | None = None
        self._grpc: grpc.aio.Server | None = None
        self._servers: list[RunningHttp] = []
        self._stop = asyncio.Event()
        self._started = False
        self._opening = "opening the store"  # what /readyz says until the backend is ready
        self._stored: dict[str, int] = {}  # spans stored per tenant since start

    def _on_commit(self, batch: list[Record], seconds: float) -> None:
        spans = 0
        for record in batch:
            self.metrics.spans_stored.labels(record.label).inc(record.count)
            self._stored[record.label] = self._stored.get(record.label, 0) + record.count
            spans += record.count
        self.metrics.insert_seconds.observe(seconds)
        self.metrics.insert_spans.observe(spans)

    def status(self, tenant: str, ingest: IngestService, size: _Cached[StoreSize]) -> dict[str, Any]:
        """What the console's status page shows a tenant: its own counts, the store's shared health."""
        assert self.store is not None
        writer, graph, stored = self.store.writer, self.store.graph, size.get()
        return {
            "tenant": tenant,
            "time": time.time_ns(),
            "ready": not self.readiness(),
            "problems": self.readiness(),
            "ingest": {
                **ingest.totals.get(tenant, {"received": 0, "accepted": 0, "rejected": 0}),
                "stored": self._stored.get(tenant, 0),
            },
            "store": {
                "engine": self.store.engine.description,
                "spans": stored.spans,
                "bytesOnDisk": stored.bytes_on_disk,
                "parts": stored.parts,
                "pendingSpans": writer.pending_spans,
                "lastInsertSeconds": writer.stats.last_insert_seconds,
                "lastError": writer.stats.last_error,
            },
            "serviceGraph": {"windows": graph.windows, "lastError": graph.last_error, "leading": graph.leading},
            "tenants": self._tenants(ingest) if tenant == self.config.admin_tenant else None,
            "rejections": [
                {
                    "time": str(r.time_ns),
                    "transport": r.transport,
                    "rejected": r.rejected,
                    "accepted": r.accepted,
                    "reasons": r.reasons,
                    "message": r.message,
                }
                for r in ingest.recent_rejections(tenant)
            ],
        }

    def _tenants(self, ingest: IngestService) -> list[dict[str, Any]]:
        """Every tenant's ingest counts since start: what the admin tenant's status page lists."""
        names = sorted(set(self.auth.tenants) | set(ingest.totals) | set(self._stored))
        empty = {"received": 0, "accepted": 0, "rejected": 0}
        return [{"tenant": n, **ingest.totals.get(n, empty), "stored": self._stored.get(n, 0)} for n in names]

    def readiness(self) -> list[str]:
        problems = []
        if not self._started or self.store is None:
            return [self._opening]
        writer = self.store.writer
        if not writer.healthy:
            problems.append(f"store writes failing: {writer.stats.last_error or 'write-ahead log broken'}")
        if writer.refusing():
            problems.append("ingest queue full: refusing writes until the store catches up")
        return problems

    async def start(self) -> Endpoints | None:
        """Bind the ports, open the store, serve; ``None`` when told to stop before the store opened."""
        config = self.config
        # The HTTP ports answer at once (alive, not ready, exports refused as retryable) while the store
        # opens: a ClickHouse server may come up after the backend, a long log may replay.
        socks = {
            "otlp_http": bind(config.address("otlp_http"), "otlp_http"),
            "http": bind(config.address("http"), "http"),
        }
        switches = {
            "otlp_http": starting.Switch(starting.otlp_app(self.readiness)),
            "http": starting.Switch(starting.query_app(self.readiness)),
        }
        for name, switch in switches.items():
            self._servers.append(await serve_http(switch, socks[name]))
        store = self.store = await self._open_store()
        if store is None:
            return None
        log.info("store: %s", store.engine.description)
        self._opening = "replaying the write-ahead log"
        recovery = await store.start()
        if recovery.item_count:
            log.info("store: replayed %d acknowledged spans from the write-ahead log", recovery.item_count)
        writer = store.writer
        self.metrics.gauge(
            "meshtrace_ingest_pending_bytes",
            "Bytes acknowledged but not yet inserted.",
            lambda: writer.pending_bytes,
        )
        self.metrics.gauge(
            "meshtrace_ingest_pending_spans",
            "Spans waiting for the next insert.",
            lambda: writer.pending_spans,
        )
        size = _Cached("size", store.size, StoreSize(0, 0, 0))
        memory: _Cached[dict[str, int]] = _Cached("memory", store.memory, {})
        self.metrics.gauges(
            "meshtrace_heap_bytes",
            "The process heap by glibc's allocator: in_use, and free but held (given back every 30 s past 64 MiB).",
            "kind",
            heap.usage,
        )
        self.metrics.gauges(
            "meshtrace_store_memory_bytes",
            "ClickHouse's memory by kind: tracked (queries, merges, inserts) and its caches. Embedded: part of "
            "this process's RSS, caches bounded by --store-cache.",
            "kind",
            memory.get,
        )
        self.metrics.gauge("meshtrace_store_spans", "Spans in the store (all tenants).", lambda: size.get().spans)
        self.metrics.gauge(
            "meshtrace_store_bytes",
            "Bytes on disk of the store's active parts (all tables).",
            lambda: size.get().bytes_on_disk,
        )
        self.metrics.gauge("meshtrace_store_parts", "Active parts of the store's tables.", lambda: size.get().parts)

        ingest = IngestService(
            writer,
            self.metrics,
            retention_ns=config.retention_s * 1_000_000_000,
            max_request_spans=config.max_request_spans,
        )
        grpc_server = self._grpc = create_server(TraceServiceHandler(ingest, self.auth), config.max_body_bytes)
        grpc_address = config.address("grpc")
        try:
            grpc_port = grpc_server.add_insecure_port(str(grpc_address))
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {grpc_address} for grpc",
                path="grpc",
                fix="choose another port or stop what is using it",
            ) from exc
        await grpc_server.start()

        switches["http"].app = create_app(
            QueryService(store.reader, store.analytics),
            self.auth,
            self.metrics,
            self.readiness,
            status=lambda tenant: self.status(tenant, ingest, size),
        )
        switches["otlp_http"].app = OtlpHttpApp(ingest, self.auth, config.max_body_bytes).app
        self._started = True
        grpc_shown = str(Address(grpc_address.host, grpc_port))
        return Endpoints(grpc_shown, shown(socks["otlp_http"]), shown(socks["http"]))

    async def _open_store(self) -> Store | None:
        """Open the store; a ClickHouse server that does not answer is tried again for ``--store-wait``
        (an embedded store that cannot open will not open by waiting). ``None`` if told to stop first."""
        options = self.config.store_options()
        wait_s = self.config.store_wait_s
        began = time.monotonic()
        delay, attempts = 1.0, 0
        while True:
            try:
                return await asyncio.to_thread(Store.open, options, self._on_commit)
            except StoreError as exc:
                attempts += 1
                waited = time.monotonic() - began
                if options.url is None:
                    raise
                if waited >= wait_s:
                    if attempts == 1:
                        raise
                    gave_up = f"gave up after {attempts} attempts in {waited:.0f}s: --store-wait"
                    raise StoreError(f"{exc} ({gave_up})") from exc
                pause = min(delay, wait_s - waited)
                self._opening = f"waiting for the store: {exc}"
                log.warning(
                    "cannot open the store (attempt %d, %.0fs of --store-wait %s): %s; trying again in %.0fs",
                    attempts,
                    waited,
                    self.config.store_wait,
                    exc,
                    pause,
                )
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
                log.info("stopped while waiting for the store")
                return None
            except TimeoutError:
                delay = min(delay * 2, 10.0)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        log.info("stopping: finishing requests in flight")
        for server in self._servers:
            server.server.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
        await asyncio.gather(*(server.stop() for server in self._servers))
        if self.store is not None:
            pending = self.store.writer.pending_spans
            if pending:
                log.info("stopping: inserting %d acknowledged spans", pending)
            await self.store.close()
        log.info("stopped")


async def _report(backend: Backend, every: float = 60.0) -> None:
    """A line a minute saying what was stored, only when something was."""
    last = 0
    while True:
        await asyncio.sleep(every)
        if backend.store is None:
            continue
        stored = backend.store.writer.stats.committed_spans
        if stored != last:
            log.info("stored %d spans in the last %.0fs (%.0f/s)", stored - last, every, (stored - last) / every)
            last = stored


async def _trim_heap(backend: Backend, every: float = 30.0, threshold: int = 64 << 20) -> None:
    """Give the allocator's free memory back every ``every`` seconds once more than ``threshold`` is held
    (``meshtrace.heap``): RSS then follows what the engine uses instead of the most it ever used."""

    def trim_if_held() -> int:  # both walk every arena under its lock: off the event loop
        return heap.trim() if heap.usage().get("free", 0) >= threshold else 0

    while True:
        await asyncio.sleep(every)
        returned = await asyncio.to_thread(trim_if_held)
        if returned:
            backend.metrics.heap_returned.inc(returned)
            log.debug("returned %.0f MiB of free heap to the system", returned / 2**20)


def _write_ready_file(path: str, endpoints: Endpoints) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(
            orjson.dumps(
                {"pid": os.getpid(), "grpc": endpoints.grpc, "otlp_http": endpoints.otlp_http, "http": endpoints.http}
            )
        )
    os.replace(tmp, path)


async def serve(
    config: ServeConfig,
    tokens: dict[str, str],
    announce: Callable[[Endpoints], None] | None = None,
    ready_file: str | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. ``announce(endpoints)`` is called once every port is open."""
    backend = Backend(config, tokens)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, backend.request_stop)
    try:
        started = time.perf_counter()
        endpoints = await backend.start()
        if endpoints is None:
            return
        log.info("ready in %.1fs", time.perf_counter() - started)
        if announce is not None:
            announce(endpoints)
        if ready_file:
            _write_ready_file(ready_file, endpoints)
        tasks = [asyncio.create_task(_report(backend)), asyncio.create_task(_trim_heap(backend))]
        await backend.wait()
        for task in tasks:
            task.cancel()
    finally:
        await backend.stop()
