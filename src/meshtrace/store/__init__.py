"""Storage on the ClickHouse engine: embedded (chdb, the default) or a ClickHouse server.

``Store.open`` creates or updates the schema and returns the reader and writer of the contract in
``meshtrace.store.api``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from meshtrace.store.api import SpanBatch, SpanWriter, TimeRange, TraceQuery, TraceReader, TraceSummary
from meshtrace.store.engine import ChdbEngine, Engine, ServerEngine, TimeLimited, parse_server_url
from meshtrace.store.graph import ServiceGraphBuilder
from meshtrace.store.migrations import migrate
from meshtrace.store.reader import MAX_TRACE_SPANS, ClickHouseReader
from meshtrace.store.schema import Schema
from meshtrace.store.wal import Record, Recovery, WriteAheadLog
from meshtrace.store.writer import Writer

__all__ = [
    "SpanBatch",
    "SpanWriter",
    "Store",
    "StoreOptions",
    "StoreSize",
    "TimeRange",
    "TraceQuery",
    "TraceReader",
    "TraceSummary",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How to open the store. ``url`` None means the embedded engine in ``data_dir``."""

    data_dir: str = "./meshtrace-data"
    url: str | None = None
    retention_s: int = 7 * 86400
    wal: bool = True
    wal_fsync: bool = True
    flush_interval: float = 0.2
    flush_spans: int = 10_000
    max_pending_bytes: int = 256 << 20
    inserters: int = 1
    graph_wait_ms: int = 10_000
    query_timeout_s: int = 30
    max_trace_spans: int = MAX_TRACE_SPANS
    cache_bytes: int | None = None  # the embedded engine's caches; None: ClickHouse's own (server) sizes


@dataclass(frozen=True, slots=True)
class StoreSize:
    spans: int
    bytes_on_disk: int
    parts: int


# ClickHouse's memory that grows with the data read (system.metrics), by the name meshtrace reports it under.
MEMORY_METRICS = {
    "MemoryTracking": "tracked",
    "MarkCacheBytes": "mark_cache",
    "PrimaryIndexCacheBytes": "primary_index_cache",
    "IndexMarkCacheBytes": "index_mark_cache",
    "UncompressedCacheBytes": "uncompressed_cache",
    "QueryConditionCacheBytes": "query_condition_cache",
    "CompiledExpressionCacheBytes": "compiled_expression_cache",
    "QueryCacheBytes": "query_cache",
}


class Store:
    """One engine, its schema, and the reader and writer over it."""

    def __init__(
        self,
        engine: Engine,
        schema: Schema,
        writer: Writer,
        *,
        owns_engine: bool = True,
        query_timeout_s: int = 30,
        max_trace_spans: int = MAX_TRACE_SPANS,
    ) -> None:
        self.engine = engine
        self.schema = schema
        self.writer = writer
        self.reader = ClickHouseReader(TimeLimited(engine, query_timeout_s), schema, max_trace_spans=max_trace_spans)
        self.graph = ServiceGraphBuilder(engine, schema)
        self.analytics = self.reader.analytics
        self._owns_engine = owns_engine

    @classmethod
    def open(cls, options: StoreOptions, on_commit: Callable[[list[Record], float], None] | None = None) -> Store:
        """Connect, create or update the schema; raises ``StoreError`` or ``ConfigError``."""
        engine, schema = connect(options.url, options.data_dir, options.retention_s, options.cache_bytes)
        try:
            return cls.create(engine, schema, options, on_commit)
        except Exception:
            engine.close()
            raise

    @classmethod
    def create(
        cls,
        engine: Engine,
        schema: Schema,
        options: StoreOptions,
        on_commit: Callable[[list[Record], float], None] | None = None,
        *,
        owns_engine: bool = True,
    ) -> Store:
        """A store on an engine that is already open (tests share one engine across databases)."""
        if schema.session_settings:
            engine.configure(schema.session_settings)
        apply_schema(engine, schema)
        wal = None
        if options.wal:
            wal = WriteAheadLog(os.path.join(options.data_dir, "wal"), fsync=options.wal_fsync)
        writer = Writer(
            engine,
            schema,
            wal,
            flush_interval=options.flush_interval,
            flush_spans=options.flush_spans,
            max_pending_bytes=options.max_pending_bytes,
            inserters=options.inserters,
            on_commit=on_commit,
        )
        store = cls(
            engine,
            schema,
            writer,
            owns_engine=owns_engine,
            query_timeout_s=options.query_timeout_s,
            max_trace_spans=options.max_trace_spans,
        )
        store.graph.wait_ms = options.graph_wait_ms
        return store

    async def start(self) -> Recovery:
        recovery = await self.writer.start()
        self.graph.start()
        return recovery

    async def close(self) -> None:
        self.graph.stop()
        await self.writer.close()
        if self._owns_engine:
            self.engine.close()

    def memory(self) -> dict[str, int]:
        """The engine's memory by kind (``MEMORY_METRICS``): for the embedded engine, part of this process's
        RSS; for a server, that server's (the one this connection reached)."""
        rows = self.engine.query(
            "SELECT metric, value FROM system.metrics WHERE metric IN {names:Array(String)}",
            {"names": list(MEMORY_METRICS)},
        )
        return {MEMORY_METRICS[str(name)]: int(value) for name, value in rows}

    def size(self) -> StoreSize:
        """Spans, bytes on disk of every table (span, lookup, search, operations) and active parts; on a
        cluster, of every replica of every shard."""
        source = f"clusterAllReplicas('{self.schema.cluster}', system.parts)" if self.schema.cluster else "system.parts"
        traces = "otel_traces_local" if self.schema.cluster else "otel_traces"
        rows = self.engine.query(
            f"SELECT sumIf(rows, table = '{traces}'), sum(bytes_on_disk), count() FROM {source} "
            "WHERE active AND database = {db:String}",
            {"db": self.schema.database},
        )
        spans, size, parts = rows[0] if rows else (0, 0, 0)
        return StoreSize(int(spans or 0), int(size or 0), int(parts or 0))


def connect(url: str | None, data_dir: str, retention_s: int, cache_bytes: int | None = None) -> tuple[Engine, Schema]:
    """The engine (a server for ``url``, else embedded in ``data_dir`` with ``cache_bytes`` of caches) and
    the schema laid out for it."""
    if url:
        address = parse_server_url(url)
        engine: Engine = ServerEngine(address)
        schema = Schema(
            database=address.database,
            retention_s=retention_s,
            embedded=False,
            cluster=address.cluster,
            replicated=address.replicated,
        )
    else:
        engine = ChdbEngine(os.path.join(data_dir, "clickhouse"), cache_bytes=cache_bytes)
        schema = Schema(retention_s=retention_s, embedded=True)
    if schema.session_settings:
        engine.configure(schema.session_settings)
    return engine, schema


def apply_schema(engine: Engine, schema: Schema) -> None:
    """Apply pending migrations (never a destructive one: that takes ``meshtrace schema migrate``);
    change the TTL only if the retention differs (no part rewrite)."""
    applied = migrate(engine, schema)
    if applied:
        log.info("schema of %s at version %d", schema.database, applied[-1].version)
    rows = engine.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        {"db": schema.database, "name": "otel_traces_local" if schema.cluster else "otel_traces"},
    )
    current = re.search(r"toIntervalSecond\((\d+)\)", rows[0][0]) if rows else None
    if current is None or int(current.group(1)) != schema.retention_s:
        log.info("setting retention to %d s", schema.retention_s)
        for statement in schema.retention_statements():
            engine.execute(statement + " SETTINGS materialize_ttl_after_modify = 0")
