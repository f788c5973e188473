"""Tables computed at ingest time for the service graph and RED health, so those answers read a few
thousand per-minute rows instead of joining millions of spans.

- ``meshtrace_span_metrics``: per (tenant, service, span name, kind, minute) the calls, errors, summed
  duration and a latency histogram; fed by a materialized view on ``otel_traces``.
- ``meshtrace_edge_halves``: every CLIENT and SERVER span reduced to what an edge needs, stamped with
  the time it was inserted (not the span's time: pairing follows arrival, the way a collector's service
  graph processor does). The pairing key is a 64-bit hash of (trace id, the CLIENT span's id), which a
  SERVER span computes from its parent id: 16 bytes instead of three hex ids. Short-lived.
- ``meshtrace_service_graph``: per (tenant, minute, client, server, versions, connection type, response
  flags) the calls, failures and client/server latency histograms; written by ``ServiceGraphBuilder``
  from the halves: CLIENT spans paired with the SERVER span under them, CLIENT spans left alone (an
  uninstrumented or unreachable destination, named from Istio's ``upstream_cluster`` or the OTel peer
  attributes) and roots (an entry from the virtual ``user`` node).
- ``meshtrace_graph_progress``: how far the builder got (its watermark), so restarts neither skip nor
  repeat a window.

Histograms are sparse maps bucket → count on a log scale of 8 buckets per doubling, anchored at 1 ms:
bucket ``i`` holds durations in [2^(i/8), 2^((i+1)/8)) ms. Any quantile comes out within ±4.5%; every
power of two of milliseconds is a bucket boundary, which the Prometheus ``le`` series use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshtrace.store.schema import Schema

BUCKETS_PER_DOUBLING = 8
HISTOGRAM = "SimpleAggregateFunction(sumMap, Tuple(Array(Int16), Array(UInt64)))"
USER = "user"  # the virtual node entries come from (Tempo's name for it)
UNKNOWN = "unknown"  # the virtual node of a SERVER span whose caller sent no CLIENT span
VIRTUAL = "virtual_node"  # Tempo's connection_type for edges with an uninstrumented side
HALVES_TTL_S = 6 * 3600

_CLIENT_KINDS = "('Client', 'SPAN_KIND_CLIENT')"
_SERVER_KINDS = "('Server', 'SPAN_KIND_SERVER')"
_ERROR = "StatusCode IN ('Error', 'STATUS_CODE_ERROR')"


def bucket_of(duration_ns: str) -> str:
    """SQL: the histogram bucket of a duration in nanoseconds."""
    return f"toInt16(floor({BUCKETS_PER_DOUBLING} * log2(greatest({duration_ns}, 1) / 1e6)))"


def _peer() -> str:
    """SQL: where a CLIENT span went. Istio's ``outbound|port|subset|host`` names the host (a Kubernetes
    FQDN becomes ``name.namespace``, the mesh's service naming); otherwise the OTel peer attributes."""
    cluster = "SpanAttributes['upstream_cluster']"
    host = f"splitByChar('|', {cluster})[4]"
    return f"""multiIf(
        startsWith({cluster}, 'outbound|') AND position({host}, '.svc.') > 0,
            arrayStringConcat(arraySlice(splitByChar('.', {host}), 1, 2), '.'),
        startsWith({cluster}, 'outbound|') AND {host} != '', {host},
        {cluster} != '', {cluster},
        SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
        SpanAttributes['server.address'] != '', SpanAttributes['server.address'],
        SpanAttributes['net.peer.name'] != '', SpanAttributes['net.peer.name'],
        SpanAttributes['db.system'] != '', SpanAttributes['db.system'],
        '')"""


def statements(schema: Schema) -> list[str]:
    traces = schema.local("otel_traces")
    return [
        *schema.table(
            "meshtrace_span_metrics",
            f"""    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    Minute DateTime CODEC(Delta, ZSTD(1)),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    Calls SimpleAggregateFunction(sum, UInt64),
    Errors SimpleAggregateFunction(sum, UInt64),
    Nanos SimpleAggregateFunction(sum, UInt64),
    Histogram {HISTOGRAM}""",
            "AggregatingMergeTree",
            f"""PARTITION BY toDate(Minute)
ORDER BY (Tenant, ServiceName, Minute, SpanName, SpanKind)
{schema.ttl("Minute")}
SETTINGS {schema.table_settings()}""",
            "cityHash64(Tenant, ServiceName)",
        ),
        schema.view(
            "meshtrace_span_metrics_mv",
            schema.local("meshtrace_span_metrics"),
            f"""SELECT
    Tenant, ServiceName, toStartOfMinute(Timestamp) AS Minute, SpanName,
    multiIf(SpanKind LIKE '%Server' OR SpanKind = 'SPAN_KIND_SERVER', 'Server',
            SpanKind LIKE '%Client' OR SpanKind = 'SPAN_KIND_CLIENT', 'Client',
            SpanKind = 'SPAN_KIND_INTERNAL', 'Internal',
            SpanKind = 'SPAN_KIND_PRODUCER', 'Producer',
            SpanKind = 'SPAN_KIND_CONSUMER', 'Consumer',
            SpanKind = 'SPAN_KIND_UNSPECIFIED', 'Unspecified', SpanKind) AS SpanKind,
    count() AS Calls,
    countIf({_ERROR}) AS Errors,
    sum(Duration) AS Nanos,
    sumMap([{bucket_of("Duration")}], [toUInt64(1)]) AS Histogram
FROM {traces}
GROUP BY Tenant, ServiceName, Minute, SpanName, SpanKind""",
        ),
        *schema.table(
            "meshtrace_edge_halves",
            """    InsertedAt DateTime64(3) CODEC(Delta, ZSTD(1)),
    Tenant LowCardinality(String),
    IsClient Bool,
    IsRoot Bool,
    Key UInt64,
    Service LowCardinality(String),
    Version LowCardinality(String),
    Peer LowCardinality(String),
    Flags LowCardinality(String),
    Start DateTime CODEC(Delta, ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    Failed Bool""",
            "MergeTree",
            f"""PARTITION BY toStartOfHour(InsertedAt)
ORDER BY InsertedAt
TTL toDateTime(InsertedAt) + toIntervalSecond({HALVES_TTL_S})
SETTINGS {schema.table_settings()}""",
            "Key",  # both halves of a call share the key (and the trace, hence the shard)
        ),
        schema.view(
            "meshtrace_edge_halves_mv",
            schema.local("meshtrace_edge_halves"),
            f"""SELECT
    now64(3) AS InsertedAt,
    Tenant,
    SpanKind IN {_CLIENT_KINDS} AS IsClient,
    ParentSpanId = '' AS IsRoot,
    cityHash64(TraceId, if(IsClient, SpanId, ParentSpanId)) AS Key,
    ServiceName AS Service,
    SpanAttributes['istio.canonical_revision'] AS Version,
    if(IsClient, {_peer()}, '') AS Peer,
    if(SpanAttributes['response_flags'] IN ('', '-'), '', SpanAttributes['response_flags']) AS Flags,
    toDateTime(Timestamp) AS Start,
    Duration,
    {_ERROR} AS Failed
FROM {traces}
WHERE SpanKind IN {_CLIENT_KINDS} OR SpanKind IN {_SERVER_KINDS}""",
        ),
        *schema.table(
            "meshtrace_service_graph",
            f"""    Tenant LowCardinality(String),
    Minute DateTime CODEC(Delta, ZSTD(1)),
    Client LowCardinality(String),
    Server LowCardinality(String),
    ClientVersion LowCardinality(String),
    ServerVersion LowCardinality(String),
    ConnectionType LowCardinality(String),
    Flags LowCardinality(String),
    Calls SimpleAggregateFunction(sum, UInt64),
    Failed SimpleAggregateFunction(sum, UInt64),
    ClientNanos SimpleAggregateFunction(sum, UInt64),
    ServerNanos SimpleAggregateFunction(sum, UInt64),
    ClientHistogram {HISTOGRAM},
    ServerHistogram {HISTOGRAM}""",
            "AggregatingMergeTree",
            f"""PARTITION BY toDate(Minute)
ORDER BY (Tenant, Minute, Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags)
{schema.ttl("Minute")}
SETTINGS {schema.table_settings()}""",
            # Deterministic, so two builders that count the same window split it the same way and each
            # shard drops the second copy by its insert token.
            "cityHash64(Tenant, Client, Server)",
        ),
        *schema.table(
            "meshtrace_graph_progress",
            """    Id UInt8,
    Watermark DateTime64(3)""",
            "ReplacingMergeTree(Watermark)",
            "ORDER BY Id",
            None,
        ),
    ]


def retention_statements(schema: Schema) -> list[str]:
    return [
        schema.alter("meshtrace_span_metrics", f"MODIFY {schema.ttl('Minute')}"),
        schema.alter("meshtrace_service_graph", f"MODIFY {schema.ttl('Minute')}"),
    ]
