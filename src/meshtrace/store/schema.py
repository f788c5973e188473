"""The ClickHouse schema: the Collector's ``clickhouseexporter`` tables, plus what meshtrace needs.

``otel_traces`` and ``otel_traces_trace_id_ts`` (with its materialized view) keep the exporter's
column names and types, so the Collector's ClickHouse exporter and Grafana's ClickHouse plugin work on
the same tables. What meshtrace adds:

- ``Tenant`` on every span, first in every sort key, so one tenant's data is contiguous;
- ``otel_traces`` is sorted by (tenant, 10-minute bucket, trace id) in 1024-row granules: a trace's
  spans sit together, so reading one trace decompresses one granule instead of one per service and
  operation (and sorted ids compress well: 30% less disk). The buckets of a trace come from
  ``otel_traces_trace_id_ts``, keyed by trace id. (``toStartOfTenMinutes`` rather than
  ``toStartOfInterval``: only the former is matched against the sort key by ClickHouse's index analysis.)
  Its parts are always Compact (all columns of a granule in one file): reading a trace touches ~20
  columns, and one file instead of dozens made that 30% faster (16 → 11.5 ms at 5M spans). Scans that
  read few columns go to the search table instead;
- ``meshtrace_span_index``: the search table, sorted by (tenant, service, span name, time), with only
  what searches filter on: trace id, kind, duration, status and the hot Istio attributes
  (``http.status_code``, ``response_flags``, ``upstream_cluster``, ``istio.canonical_service``,
  ``istio.canonical_revision``) as ``LowCardinality`` columns. Filtering on them reads a few small
  columns instead of the attribute maps;
- ``meshtrace_operations``: every (tenant, service, span name, kind) once, for the service and
  operation lists;
- ``meshtrace_request_ids``: Istio's ``guid:x-request-id`` → trace id, keyed by request id, so "the
  trace of this request" (the id in an access log) is a key lookup, not a scan of every attribute map;
- ``meshtrace_otlp_in``: a ``Null`` table whose rows are whole OTLP export requests as the sender
  encoded them (decoded by ClickHouse's Protobuf input format with ``otlp_wire.proto``), and a
  materialized view that flattens them into ``otel_traces`` rows. No span is converted in Python.

The index and operations tables are fed by materialized views on ``otel_traces`` itself, so spans the
Collector's own ClickHouse exporter writes there are searchable too.

Attribute values are rendered as the exporter does (``pcommon.Value.AsString``): strings as they are,
numbers and booleans as text, bytes as base64, arrays and maps as JSON.

The same statements run on the embedded engine (chdb) and on a ClickHouse server.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from meshtrace.store import analytics_schema

WIRE_MESSAGE = "Row"
SCHEMA_VERSION = 1

# Istio's request id (Envoy's x-request-id, the same on every span of a request): looked up by key.
REQUEST_ID = "guid:x-request-id"

# Span attribute → its column in the search table. The query layer filters on the column when it can.
HOT_ATTRIBUTES: dict[str, str] = {
    "http.status_code": "HttpStatusCode",
    "response_flags": "ResponseFlags",
    "upstream_cluster": "UpstreamCluster",
    "istio.canonical_service": "CanonicalService",
    "istio.canonical_revision": "CanonicalRevision",
}

_PRESENCE = (
    "Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, "
    "'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7)"
)
_SCALARS = "string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String"
_LEAF = f"Tuple(value {_PRESENCE}, {_SCALARS})"
_VALUE = (
    f"Tuple(value {_PRESENCE}, {_SCALARS}, array_value Tuple(values Array({_LEAF})), "
    f"kvlist_value Tuple(values Array(Tuple(key String, value {_LEAF}))))"
)
_ATTRS = f"Array(Tuple(key String, value {_VALUE}))"


def wire_schema() -> str:
    """The .proto text ClickHouse decodes export requests with (sent with each insert)."""
    return resources.files("meshtrace.store").joinpath("otlp_wire.proto").read_text()


def _leaf_json(v: str) -> str:
    return (
        f"multiIf({v}.value = 'string_value', toJSONString({v}.string_value), "
        f"{v}.value = 'int_value', toString({v}.int_value), "
        f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false'), "
        f"{v}.value = 'double_value', toString({v}.double_value), "
        f"{v}.value = 'bytes_value', toJSONString(base64Encode({v}.bytes_value)), 'null')"
    )


def _value_text(v: str) -> str:
    array_json = f"concat('[', arrayStringConcat(arrayMap(e -> {_leaf_json('e')}, {v}.array_value.values), ','), ']')"
    kvlist_json = (
        "concat('{', arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.key), ':', "
        f"{_leaf_json('kv.value')}), arraySort(kv -> kv.key, {v}.kvlist_value.values)), ','), '}}')"
    )
    return (
        f"multiIf({v}.value = 'string_value', {v}.string_value, "
        f"{v}.value = 'int_value', toString({v}.int_value), "
        f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false'), "
        f"{v}.value = 'double_value', toString({v}.double_value), "
        f"{v}.value = 'bytes_value', base64Encode({v}.bytes_value), "
        f"{v}.value = 'array_value', {array_json}, "
        f"{v}.value = 'kvlist_value', {kvlist_json}, '')"
    )


def _attr_map(attrs: str) -> str:
    return f"mapFromArrays(arrayMap(a -> a.key, {attrs}), arrayMap(a -> {_value_text('a.value')}, {attrs}))"


def _hex_id(expr: str) -> str:
    return f"lower(hex({expr}))"


@dataclass(frozen=True, slots=True)
class Schema:
    """DDL for one database. ``retention_s`` becomes the tables' TTL; ``embedded`` tunes part cleanup.

    With ``cluster`` set, every table that holds spans is a local table (``<name>_local``) on each shard,
    behind a ``Distributed`` table under the plain name, sharded by trace id so a trace stays on one shard;
    materialized views run on the local tables, so each shard indexes and aggregates its own spans.
    ``replicated`` makes the local tables ``Replicated*MergeTree`` and every statement ``ON CLUSTER``
    (both need ClickHouse Keeper); without it, the same layout runs on one server, or in the embedded
    engine with a one-shard cluster in its configuration.
    """

    database: str = "otel"
    retention_s: int = 7 * 86400
    embedded: bool = True
    cluster: str | None = None
    replicated: bool = True
    keeper_path: str = "/clickhouse/tables"

    def _name(self, table: str) -> str:
        return f"`{self.database}`.{table}"

    def local(self, table: str) -> str:
        """Where a sharded table's rows live on each node (the table itself without a cluster)."""
        return self._name(f"{table}_local" if self.cluster else table)

    @property
    def traces(self) -> str:
        return self._name("otel_traces")

    @property
    def trace_id_ts(self) -> str:
        return self._name("otel_traces_trace_id_ts")

    @property
    def span_index(self) -> str:
        return self._name("meshtrace_span_index")

    @property
    def operations(self) -> str:
        return self._name("meshtrace_operations")

    @property
    def request_ids(self) -> str:
        return self._name("meshtrace_request_ids")

    @property
    def otlp_in(self) -> str:
        return self._name("meshtrace_otlp_in")

    @property
    def span_metrics(self) -> str:
        return self._name("meshtrace_span_metrics")

    @property
    def edge_halves(self) -> str:
        return self._name("meshtrace_edge_halves")

    @property
    def service_graph(self) -> str:
        return self._name("meshtrace_service_graph")

    @property
    def graph_progress(self) -> str:
        return self._name("meshtrace_graph_progress")

    @property
    def graph_builders(self) -> str:
        return self._name("meshtrace_graph_builders")

    @property
    def migrations(self) -> str:
        return self._name("meshtrace_schema_migrations")

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER `{self.cluster}`" if self.cluster and self.replicated else ""

    @property
    def session_settings(self) -> dict[str, str | int]:
        """Settings every connection needs: on a cluster, subqueries over Distributed tables run once on
        the node that asked (``GLOBAL IN``) instead of being refused, and an insert returns only once every
        shard has its rows (an acknowledged span is on disk, not in a node's send queue)."""
        if not self.cluster:
            return {}
        return {"distributed_product_mode": "global", "insert_distributed_sync": 1}

    def table_settings(self, granularity: int = 8192) -> str:
        # Deduplication makes a replayed write-ahead-log batch a no-op (the token is the batch id).
        settings = [f"index_granularity = {granularity}", "ttl_only_drop_parts = 1"]
        if self.cluster and self.replicated:
            settings.append("replicated_deduplication_window = 10000")
        else:
            settings.append("non_replicated_deduplication_window = 10000")
        if self.embedded:
            # Merged-away parts linger 8 minutes by default; on a laptop that is up to 3x the disk.
            settings.append("old_parts_lifetime = 60")
        return ", ".join(settings)

    def ttl(self, column: str) -> str:
        return f"TTL toDateTime({column}) + toIntervalSecond({self.retention_s})"

    def _engine(self, engine: str, table: str, sharded: bool) -> str:
        if not (self.cluster and self.replicated):
            return engine
        kind, _, args = engine.partition("(")
        shard = "{shard}" if sharded else "all"  # a table every node holds whole: one path for all
        path = f"'{self.keeper_path}/{shard}/{self.database}/{table}', '{{replica}}'"
        extra = args.rstrip(")")
        return f"Replicated{kind}({path}{', ' + extra if extra else ''})"

    def table(self, table: str, body: str, engine: str, tail: str, shard_key: str | None) -> list[str]:
        """CREATE a table. ``shard_key`` None: a small table every node holds whole (never sharded)."""
        sharded = shard_key is not None
        local = self.local(table) if sharded else self._name(table)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {local}{self.on_cluster} (\n{body}\n) "
            f"ENGINE = {self._engine(engine, f'{table}_local' if self.cluster and sharded else table, sharded)}\n{tail}"
        ]
        if self.cluster and sharded:
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {self._name(table)}{self.on_cluster} AS {local}\n"
                f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{table}_local', {shard_key})"
            )
        return statements

    def view(self, name: str, target: str, select: str) -> str:
        return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self._name(name)}{self.on_cluster}\nTO {target}\nAS {select}"

    def statements(self) -> list[str]:
        """Idempotent DDL, in dependency order."""
        hot_columns = "\n".join(f"    {col} LowCardinality(String)," for col in HOT_ATTRIBUTES.values())
        hot_values = ",\n".join(f"    SpanAttributes['{key}'] AS {col}" for key, col in HOT_ATTRIBUTES.items())
        by_trace = "cityHash64(TraceId)"
        return [
            f"CREATE DATABASE IF NOT EXISTS `{self.database}`{self.on_cluster}",
            *self.table(
                "otel_traces",
                """    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Tenant LowCardinality(String) DEFAULT 'default' CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1""",
                "MergeTree",
                f"""PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, toStartOfTenMinutes(Timestamp), TraceId)
{self.ttl("Timestamp")}
SETTINGS {self.table_settings(granularity=1024)},
    min_bytes_for_wide_part = 1000000000000, min_rows_for_wide_part = 1000000000""",
                by_trace,
            ),
            *self.table(
                "otel_traces_trace_id_ts",
                """    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1""",
                "MergeTree",
                f"""PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
{self.ttl("Start")}
SETTINGS {self.table_settings(granularity=1024)}""",
                by_trace,
            ),
            self.view(
                "otel_traces_trace_id_ts_mv",
                self.local("otel_traces_trace_id_ts"),
                f"""SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM {self.local("otel_traces")}
WHERE TraceId != ''
GROUP BY TraceId""",
            ),
            *self.table(
                "meshtrace_span_index",
                f"""    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String),
{hot_columns}
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1""",
                "MergeTree",
                f"""PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, ServiceName, SpanName, toDateTime(Timestamp))
{self.ttl("Timestamp")}
SETTINGS {self.table_settings()}""",
                by_trace,
            ),
            self.view(
                "meshtrace_span_index_mv",
                self.local("meshtrace_span_index"),
                f"""SELECT
    Tenant, ServiceName, SpanName, SpanKind, Timestamp, TraceId, Duration, StatusCode,
{hot_values}
FROM {self.local("otel_traces")}""",
            ),
            *self.table(
                "meshtrace_operations",
                """    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    LastSeen DateTime""",
                "ReplacingMergeTree(LastSeen)",
                f"""ORDER BY (Tenant, ServiceName, SpanName, SpanKind)
TTL LastSeen + toIntervalSecond({self.retention_s})""",
                "cityHash64(Tenant, ServiceName)",
            ),
            self.view(
                "meshtrace_operations_mv",
                self.local("meshtrace_operations"),
                f"""SELECT Tenant, ServiceName, SpanName, SpanKind, max(toDateTime(Timestamp)) AS LastSeen
FROM {self.local("otel_traces")}
GROUP BY Tenant, ServiceName, SpanName, SpanKind""",
            ),
            *self.table(
                "meshtrace_request_ids",
                """    Tenant LowCardinality(String),
    RequestId String CODEC(ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1))""",
                "MergeTree",
                f"""PARTITION BY toDate(Start)
ORDER BY (Tenant, RequestId)
{self.ttl("Start")}
SETTINGS {self.table_settings(granularity=1024)}""",
                by_trace,
            ),
            self.view(
                "meshtrace_request_ids_mv",
                self.local("meshtrace_request_ids"),
                f"""SELECT Tenant, SpanAttributes['{REQUEST_ID}'] AS RequestId, TraceId,
    min(toDateTime(Timestamp)) AS Start
FROM {self.local("otel_traces")}
WHERE RequestId != ''
GROUP BY Tenant, RequestId, TraceId""",
            ),
            f"""CREATE TABLE IF NOT EXISTS {self.otlp_in}{self.on_cluster} (
    resource_spans Array(Tuple(
        resource Tuple(attributes {_ATTRS}),
        scope_spans Array(Tuple(
            scope Tuple(name String, version String),
            spans Array(Tuple(
                trace_id String, span_id String, trace_state String, parent_span_id String,
                name String, kind Int32, start_time_unix_nano UInt64, end_time_unix_nano UInt64,
                attributes {_ATTRS},
                events Array(Tuple(time_unix_nano UInt64, name String, attributes {_ATTRS})),
                links Array(Tuple(trace_id String, span_id String, trace_state String, attributes {_ATTRS})),
                status Tuple(message String, code Int32)
            ))
        ))
    )),
    tenant String
) ENGINE = Null""",
            self.view(
                "meshtrace_otlp_in_mv",
                self.traces,
                f"""SELECT
    fromUnixTimestamp64Nano(toInt64(s.start_time_unix_nano)) AS Timestamp,
    {_hex_id("s.trace_id")} AS TraceId,
    {_hex_id("s.span_id")} AS SpanId,
    if(s.parent_span_id IN ('', unhex('0000000000000000')), '', {_hex_id("s.parent_span_id")}) AS ParentSpanId,
    s.trace_state AS TraceState,
    s.name AS SpanName,
    if(s.kind BETWEEN 0 AND 5,
       ['Unspecified', 'Internal', 'Server', 'Client', 'Producer', 'Consumer'][s.kind + 1],
       'Unspecified') AS SpanKind,
    {_attr_map("rs.resource.attributes")} AS ResourceAttributes,
    if(ResourceAttributes['service.name'] = '', 'unknown_service', ResourceAttributes['service.name'])
        AS ServiceName,
    ss.scope.name AS ScopeName,
    ss.scope.version AS ScopeVersion,
    {_attr_map("s.attributes")} AS SpanAttributes,
    s.end_time_unix_nano - s.start_time_unix_nano AS Duration,
    if(s.status.code BETWEEN 0 AND 2, ['Unset', 'Ok', 'Error'][s.status.code + 1], 'Unset') AS StatusCode,
    s.status.message AS StatusMessage,
    arrayMap(e -> fromUnixTimestamp64Nano(toInt64(e.time_unix_nano)), s.events) AS `Events.Timestamp`,
    arrayMap(e -> e.name, s.events) AS `Events.Name`,
    arrayMap(e -> {_attr_map("e.attributes")}, s.events) AS `Events.Attributes`,
    arrayMap(l -> {_hex_id("l.trace_id")}, s.links) AS `Links.TraceId`,
    arrayMap(l -> {_hex_id("l.span_id")}, s.links) AS `Links.SpanId`,
    arrayMap(l -> l.trace_state, s.links) AS `Links.TraceState`,
    arrayMap(l -> {_attr_map("l.attributes")}, s.links) AS `Links.Attributes`,
    tenant AS Tenant
FROM {self.otlp_in}
ARRAY JOIN resource_spans AS rs
ARRAY JOIN rs.scope_spans AS ss
ARRAY JOIN ss.spans AS s
WHERE length(s.trace_id) = 16 AND length(s.span_id) = 8""",
            ),
            *analytics_schema.statements(self),
        ]

    def retention_statements(self) -> list[str]:
        """Bring an existing database's TTL in line with ``retention_s`` (no-op if equal)."""
        return [
            self.alter("otel_traces", f"MODIFY {self.ttl('Timestamp')}"),
            self.alter("otel_traces_trace_id_ts", f"MODIFY {self.ttl('Start')}"),
            self.alter("meshtrace_span_index", f"MODIFY {self.ttl('Timestamp')}"),
            self.alter("meshtrace_operations", f"MODIFY TTL LastSeen + toIntervalSecond({self.retention_s})"),
            self.alter("meshtrace_request_ids", f"MODIFY {self.ttl('Start')}"),
            *analytics_schema.retention_statements(self),
        ]

    def alter(self, table: str, change: str) -> str:
        """ALTER a sharded table where its rows live (every node's local table on a cluster)."""
        return f"ALTER TABLE {self.local(table)}{self.on_cluster} {change}"
