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
    """DDL for one database. ``retention_s`` becomes the tables' TTL; ``embedded`` tunes part cleanup."""

    database: str = "otel"
    retention_s: int = 7 * 86400
    embedded: bool = True

    @property
    def traces(self) -> str:
        return f"`{self.database}`.otel_traces"

    @property
    def trace_id_ts(self) -> str:
        return f"`{self.database}`.otel_traces_trace_id_ts"

    @property
    def span_index(self) -> str:
        return f"`{self.database}`.meshtrace_span_index"

    @property
    def operations(self) -> str:
        return f"`{self.database}`.meshtrace_operations"

    @property
    def request_ids(self) -> str:
        return f"`{self.database}`.meshtrace_request_ids"

    @property
    def otlp_in(self) -> str:
        return f"`{self.database}`.meshtrace_otlp_in"

    @property
    def span_metrics(self) -> str:
        return f"`{self.database}`.meshtrace_span_metrics"

    @property
    def edge_halves(self) -> str:
        return f"`{self.database}`.meshtrace_edge_halves"

    @property
    def service_graph(self) -> str:
        return f"`{self.database}`.meshtrace_service_graph"

    @property
    def graph_progress(self) -> str:
        return f"`{self.database}`.meshtrace_graph_progress"

    def table_settings(self, granularity: int = 8192) -> str:
        # Deduplication makes a replayed write-ahead-log batch a no-op (the token is the batch id).
        settings = [
            f"index_granularity = {granularity}",
            "ttl_only_drop_parts = 1",
            "non_replicated_deduplication_window = 10000",
        ]
        if self.embedded:
            # Merged-away parts linger 8 minutes by default; on a laptop that is up to 3x the disk.
            settings.append("old_parts_lifetime = 60")
        return ", ".join(settings)

    def ttl(self, column: str) -> str:
        return f"TTL toDateTime({column}) + toIntervalSecond({self.retention_s})"

    def statements(self) -> list[str]:
        """Idempotent DDL, in dependency order."""
        hot_columns = "\n".join(f"    {col} LowCardinality(String)," for col in HOT_ATTRIBUTES.values())
        hot_values = ",\n".join(f"    SpanAttributes['{key}'] AS {col}" for key, col in HOT_ATTRIBUTES.items())
        return [
            f"CREATE DATABASE IF NOT EXISTS `{self.database}`",
            f"""CREATE TABLE IF NOT EXISTS {self.traces} (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
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
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, toStartOfTenMinutes(Timestamp), TraceId)
{self.ttl("Timestamp")}
SETTINGS {self.table_settings(granularity=1024)},
    min_bytes_for_wide_part = 1000000000000, min_rows_for_wide_part = 1000000000""",
            f"""CREATE TABLE IF NOT EXISTS {self.trace_id_ts} (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
{self.ttl("Start")}
SETTINGS {self.table_settings(granularity=1024)}""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.database}`.otel_traces_trace_id_ts_mv
TO {self.trace_id_ts}
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM {self.traces}
WHERE TraceId != ''
GROUP BY TraceId""",
            f"""CREATE TABLE IF NOT EXISTS {self.span_index} (
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String),
{hot_columns}
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, ServiceName, SpanName, toDateTime(Timestamp))
{self.ttl("Timestamp")}
SETTINGS {self.table_settings()}""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.database}`.meshtrace_span_index_mv
TO {self.span_index}
AS SELECT
    Tenant, ServiceName, SpanName, SpanKind, Timestamp, TraceId, Duration, StatusCode,
{hot_values}
FROM {self.traces}""",
            f"""CREATE TABLE IF NOT EXISTS {self.operations} (
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    LastSeen DateTime
) ENGINE = ReplacingMergeTree(LastSeen)
ORDER BY (Tenant, ServiceName, SpanName, SpanKind)
TTL LastSeen + toIntervalSecond({self.retention_s})""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.database}`.meshtrace_operations_mv
TO {self.operations}
AS SELECT Tenant, ServiceName, SpanName, SpanKind, max(toDateTime(Timestamp)) AS LastSeen
FROM {self.traces}
GROUP BY Tenant, ServiceName, SpanName, SpanKind""",
            f"""CREATE TABLE IF NOT EXISTS {self.request_ids} (
    Tenant LowCardinality(String),
    RequestId String CODEC(ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(Start)
ORDER BY (Tenant, RequestId)
{self.ttl("Start")}
SETTINGS {self.table_settings(granularity=1024)}""",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.database}`.meshtrace_request_ids_mv
TO {self.request_ids}
AS SELECT Tenant, SpanAttributes['{REQUEST_ID}'] AS RequestId, TraceId, min(toDateTime(Timestamp)) AS Start
FROM {self.traces}
WHERE RequestId != ''
GROUP BY Tenant, RequestId, TraceId""",
            f"""CREATE TABLE IF NOT EXISTS {self.otlp_in} (
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
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.database}`.meshtrace_otlp_in_mv
TO {self.traces}
AS SELECT
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
            *analytics_schema.statements(self),
        ]

    def retention_statements(self) -> list[str]:
        """Bring an existing database's TTL in line with ``retention_s`` (no-op if equal)."""
        return [
            f"ALTER TABLE {self.traces} MODIFY {self.ttl('Timestamp')}",
            f"ALTER TABLE {self.trace_id_ts} MODIFY {self.ttl('Start')}",
            f"ALTER TABLE {self.span_index} MODIFY {self.ttl('Timestamp')}",
            f"ALTER TABLE {self.operations} MODIFY TTL LastSeen + toIntervalSecond({self.retention_s})",
            f"ALTER TABLE {self.request_ids} MODIFY {self.ttl('Start')}",
            *analytics_schema.retention_statements(self),
        ]
