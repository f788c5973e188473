CREATE DATABASE IF NOT EXISTS `otel` ON CLUSTER `meshtrace`;

CREATE TABLE IF NOT EXISTS `otel`.otel_traces_local ON CLUSTER `meshtrace` (
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
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel/otel_traces_local', '{replica}')
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, toStartOfTenMinutes(Timestamp), TraceId)
TTL toDateTime(Timestamp) + toIntervalSecond(604800)
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000,
    min_bytes_for_wide_part = 1000000000000, min_rows_for_wide_part = 1000000000;

CREATE TABLE IF NOT EXISTS `otel`.otel_traces ON CLUSTER `meshtrace` AS `otel`.otel_traces_local
ENGINE = Distributed('meshtrace', 'otel', 'otel_traces_local', cityHash64(TraceId));

CREATE TABLE IF NOT EXISTS `otel`.otel_traces_trace_id_ts_local ON CLUSTER `meshtrace` (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel/otel_traces_trace_id_ts_local', '{replica}')
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
TTL toDateTime(Start) + toIntervalSecond(604800)
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.otel_traces_trace_id_ts ON CLUSTER `meshtrace` AS `otel`.otel_traces_trace_id_ts_local
ENGINE = Distributed('meshtrace', 'otel', 'otel_traces_trace_id_ts_local', cityHash64(TraceId));

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.otel_traces_trace_id_ts_mv ON CLUSTER `meshtrace`
TO `otel`.otel_traces_trace_id_ts_local
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM `otel`.otel_traces_local
WHERE TraceId != ''
GROUP BY TraceId;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_span_index_local ON CLUSTER `meshtrace` (
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String),
    HttpStatusCode LowCardinality(String),
    ResponseFlags LowCardinality(String),
    UpstreamCluster LowCardinality(String),
    CanonicalService LowCardinality(String),
    CanonicalRevision LowCardinality(String),
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_span_index_local', '{replica}')
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, ServiceName, SpanName, toDateTime(Timestamp))
TTL toDateTime(Timestamp) + toIntervalSecond(604800)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_span_index ON CLUSTER `meshtrace` AS `otel`.meshtrace_span_index_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_span_index_local', cityHash64(TraceId));

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_span_index_mv ON CLUSTER `meshtrace`
TO `otel`.meshtrace_span_index_local
AS SELECT
    Tenant, ServiceName, SpanName, SpanKind, Timestamp, TraceId, Duration, StatusCode,
    SpanAttributes['http.status_code'] AS HttpStatusCode,
    SpanAttributes['response_flags'] AS ResponseFlags,
    SpanAttributes['upstream_cluster'] AS UpstreamCluster,
    SpanAttributes['istio.canonical_service'] AS CanonicalService,
    SpanAttributes['istio.canonical_revision'] AS CanonicalRevision
FROM `otel`.otel_traces_local;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_operations_local ON CLUSTER `meshtrace` (
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    LastSeen DateTime
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_operations_local', '{replica}', LastSeen)
ORDER BY (Tenant, ServiceName, SpanName, SpanKind)
TTL LastSeen + toIntervalSecond(604800);

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_operations ON CLUSTER `meshtrace` AS `otel`.meshtrace_operations_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_operations_local', cityHash64(Tenant, ServiceName));

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_operations_mv ON CLUSTER `meshtrace`
TO `otel`.meshtrace_operations_local
AS SELECT Tenant, ServiceName, SpanName, SpanKind, max(toDateTime(Timestamp)) AS LastSeen
FROM `otel`.otel_traces_local
GROUP BY Tenant, ServiceName, SpanName, SpanKind;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_request_ids_local ON CLUSTER `meshtrace` (
    Tenant LowCardinality(String),
    RequestId String CODEC(ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_request_ids_local', '{replica}')
PARTITION BY toDate(Start)
ORDER BY (Tenant, RequestId)
TTL toDateTime(Start) + toIntervalSecond(604800)
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_request_ids ON CLUSTER `meshtrace` AS `otel`.meshtrace_request_ids_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_request_ids_local', cityHash64(TraceId));

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_request_ids_mv ON CLUSTER `meshtrace`
TO `otel`.meshtrace_request_ids_local
AS SELECT Tenant, SpanAttributes['guid:x-request-id'] AS RequestId, TraceId,
    min(toDateTime(Timestamp)) AS Start
FROM `otel`.otel_traces_local
WHERE RequestId != ''
GROUP BY Tenant, RequestId, TraceId;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_otlp_in ON CLUSTER `meshtrace` (
    resource_spans Array(Tuple(
        resource Tuple(attributes Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String, array_value Tuple(values Array(Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))), kvlist_value Tuple(values Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String)))))))),
        scope_spans Array(Tuple(
            scope Tuple(name String, version String),
            spans Array(Tuple(
                trace_id String, span_id String, trace_state String, parent_span_id String,
                name String, kind Int32, start_time_unix_nano UInt64, end_time_unix_nano UInt64,
                attributes Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String, array_value Tuple(values Array(Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))), kvlist_value Tuple(values Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))))))),
                events Array(Tuple(time_unix_nano UInt64, name String, attributes Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String, array_value Tuple(values Array(Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))), kvlist_value Tuple(values Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))))))))),
                links Array(Tuple(trace_id String, span_id String, trace_state String, attributes Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String, array_value Tuple(values Array(Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))), kvlist_value Tuple(values Array(Tuple(key String, value Tuple(value Enum8('' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7), string_value String, bool_value Bool, int_value Int64, double_value Float64, bytes_value String))))))))),
                status Tuple(message String, code Int32)
            ))
        ))
    )),
    tenant String
) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_otlp_in_mv ON CLUSTER `meshtrace`
TO `otel`.otel_traces
AS SELECT
    fromUnixTimestamp64Nano(toInt64(s.start_time_unix_nano)) AS Timestamp,
    lower(hex(s.trace_id)) AS TraceId,
    lower(hex(s.span_id)) AS SpanId,
    if(s.parent_span_id IN ('', unhex('0000000000000000')), '', lower(hex(s.parent_span_id))) AS ParentSpanId,
    s.trace_state AS TraceState,
    s.name AS SpanName,
    if(s.kind BETWEEN 0 AND 5,
       ['Unspecified', 'Internal', 'Server', 'Client', 'Producer', 'Consumer'][s.kind + 1],
       'Unspecified') AS SpanKind,
    mapFromArrays(arrayMap(a -> a.key, rs.resource.attributes), arrayMap(a -> multiIf(a.value.value = 'string_value', a.value.string_value, a.value.value = 'int_value', toString(a.value.int_value), a.value.value = 'bool_value', if(a.value.bool_value, 'true', 'false'), a.value.value = 'double_value', toString(a.value.double_value), a.value.value = 'bytes_value', base64Encode(a.value.bytes_value), a.value.value = 'array_value', concat('[', arrayStringConcat(arrayMap(e -> multiIf(e.value = 'string_value', toJSONString(e.string_value), e.value = 'int_value', toString(e.int_value), e.value = 'bool_value', if(e.bool_value, 'true', 'false'), e.value = 'double_value', toString(e.double_value), e.value = 'bytes_value', toJSONString(base64Encode(e.bytes_value)), 'null'), a.value.array_value.values), ','), ']'), a.value.value = 'kvlist_value', concat('{', arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.key), ':', multiIf(kv.value.value = 'string_value', toJSONString(kv.value.string_value), kv.value.value = 'int_value', toString(kv.value.int_value), kv.value.value = 'bool_value', if(kv.value.bool_value, 'true', 'false'), kv.value.value = 'double_value', toString(kv.value.double_value), kv.value.value = 'bytes_value', toJSONString(base64Encode(kv.value.bytes_value)), 'null')), arraySort(kv -> kv.key, a.value.kvlist_value.values)), ','), '}'), ''), rs.resource.attributes)) AS ResourceAttributes,
    if(ResourceAttributes['service.name'] = '', 'unknown_service', ResourceAttributes['service.name'])
        AS ServiceName,
    ss.scope.name AS ScopeName,
    ss.scope.version AS ScopeVersion,
    mapFromArrays(arrayMap(a -> a.key, s.attributes), arrayMap(a -> multiIf(a.value.value = 'string_value', a.value.string_value, a.value.value = 'int_value', toString(a.value.int_value), a.value.value = 'bool_value', if(a.value.bool_value, 'true', 'false'), a.value.value = 'double_value', toString(a.value.double_value), a.value.value = 'bytes_value', base64Encode(a.value.bytes_value), a.value.value = 'array_value', concat('[', arrayStringConcat(arrayMap(e -> multiIf(e.value = 'string_value', toJSONString(e.string_value), e.value = 'int_value', toString(e.int_value), e.value = 'bool_value', if(e.bool_value, 'true', 'false'), e.value = 'double_value', toString(e.double_value), e.value = 'bytes_value', toJSONString(base64Encode(e.bytes_value)), 'null'), a.value.array_value.values), ','), ']'), a.value.value = 'kvlist_value', concat('{', arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.key), ':', multiIf(kv.value.value = 'string_value', toJSONString(kv.value.string_value), kv.value.value = 'int_value', toString(kv.value.int_value), kv.value.value = 'bool_value', if(kv.value.bool_value, 'true', 'false'), kv.value.value = 'double_value', toString(kv.value.double_value), kv.value.value = 'bytes_value', toJSONString(base64Encode(kv.value.bytes_value)), 'null')), arraySort(kv -> kv.key, a.value.kvlist_value.values)), ','), '}'), ''), s.attributes)) AS SpanAttributes,
    s.end_time_unix_nano - s.start_time_unix_nano AS Duration,
    if(s.status.code BETWEEN 0 AND 2, ['Unset', 'Ok', 'Error'][s.status.code + 1], 'Unset') AS StatusCode,
    s.status.message AS StatusMessage,
    arrayMap(e -> fromUnixTimestamp64Nano(toInt64(e.time_unix_nano)), s.events) AS `Events.Timestamp`,
    arrayMap(e -> e.name, s.events) AS `Events.Name`,
    arrayMap(e -> mapFromArrays(arrayMap(a -> a.key, e.attributes), arrayMap(a -> multiIf(a.value.value = 'string_value', a.value.string_value, a.value.value = 'int_value', toString(a.value.int_value), a.value.value = 'bool_value', if(a.value.bool_value, 'true', 'false'), a.value.value = 'double_value', toString(a.value.double_value), a.value.value = 'bytes_value', base64Encode(a.value.bytes_value), a.value.value = 'array_value', concat('[', arrayStringConcat(arrayMap(e -> multiIf(e.value = 'string_value', toJSONString(e.string_value), e.value = 'int_value', toString(e.int_value), e.value = 'bool_value', if(e.bool_value, 'true', 'false'), e.value = 'double_value', toString(e.double_value), e.value = 'bytes_value', toJSONString(base64Encode(e.bytes_value)), 'null'), a.value.array_value.values), ','), ']'), a.value.value = 'kvlist_value', concat('{', arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.key), ':', multiIf(kv.value.value = 'string_value', toJSONString(kv.value.string_value), kv.value.value = 'int_value', toString(kv.value.int_value), kv.value.value = 'bool_value', if(kv.value.bool_value, 'true', 'false'), kv.value.value = 'double_value', toString(kv.value.double_value), kv.value.value = 'bytes_value', toJSONString(base64Encode(kv.value.bytes_value)), 'null')), arraySort(kv -> kv.key, a.value.kvlist_value.values)), ','), '}'), ''), e.attributes)), s.events) AS `Events.Attributes`,
    arrayMap(l -> lower(hex(l.trace_id)), s.links) AS `Links.TraceId`,
    arrayMap(l -> lower(hex(l.span_id)), s.links) AS `Links.SpanId`,
    arrayMap(l -> l.trace_state, s.links) AS `Links.TraceState`,
    arrayMap(l -> mapFromArrays(arrayMap(a -> a.key, l.attributes), arrayMap(a -> multiIf(a.value.value = 'string_value', a.value.string_value, a.value.value = 'int_value', toString(a.value.int_value), a.value.value = 'bool_value', if(a.value.bool_value, 'true', 'false'), a.value.value = 'double_value', toString(a.value.double_value), a.value.value = 'bytes_value', base64Encode(a.value.bytes_value), a.value.value = 'array_value', concat('[', arrayStringConcat(arrayMap(e -> multiIf(e.value = 'string_value', toJSONString(e.string_value), e.value = 'int_value', toString(e.int_value), e.value = 'bool_value', if(e.bool_value, 'true', 'false'), e.value = 'double_value', toString(e.double_value), e.value = 'bytes_value', toJSONString(base64Encode(e.bytes_value)), 'null'), a.value.array_value.values), ','), ']'), a.value.value = 'kvlist_value', concat('{', arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.key), ':', multiIf(kv.value.value = 'string_value', toJSONString(kv.value.string_value), kv.value.value = 'int_value', toString(kv.value.int_value), kv.value.value = 'bool_value', if(kv.value.bool_value, 'true', 'false'), kv.value.value = 'double_value', toString(kv.value.double_value), kv.value.value = 'bytes_value', toJSONString(base64Encode(kv.value.bytes_value)), 'null')), arraySort(kv -> kv.key, a.value.kvlist_value.values)), ','), '}'), ''), l.attributes)), s.links) AS `Links.Attributes`,
    tenant AS Tenant
FROM `otel`.meshtrace_otlp_in
ARRAY JOIN resource_spans AS rs
ARRAY JOIN rs.scope_spans AS ss
ARRAY JOIN ss.spans AS s
WHERE length(s.trace_id) = 16 AND length(s.span_id) = 8;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_span_metrics_local ON CLUSTER `meshtrace` (
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    Minute DateTime CODEC(Delta, ZSTD(1)),
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    Calls SimpleAggregateFunction(sum, UInt64),
    Errors SimpleAggregateFunction(sum, UInt64),
    Nanos SimpleAggregateFunction(sum, UInt64),
    Histogram SimpleAggregateFunction(sumMap, Tuple(Array(Int16), Array(UInt64)))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_span_metrics_local', '{replica}')
PARTITION BY toDate(Minute)
ORDER BY (Tenant, ServiceName, Minute, SpanName, SpanKind)
TTL toDateTime(Minute) + toIntervalSecond(604800)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_span_metrics ON CLUSTER `meshtrace` AS `otel`.meshtrace_span_metrics_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_span_metrics_local', cityHash64(Tenant, ServiceName));

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_span_metrics_mv ON CLUSTER `meshtrace`
TO `otel`.meshtrace_span_metrics_local
AS SELECT
    Tenant, ServiceName, toStartOfMinute(Timestamp) AS Minute, SpanName,
    multiIf(SpanKind LIKE '%Server' OR SpanKind = 'SPAN_KIND_SERVER', 'Server',
            SpanKind LIKE '%Client' OR SpanKind = 'SPAN_KIND_CLIENT', 'Client',
            SpanKind = 'SPAN_KIND_INTERNAL', 'Internal',
            SpanKind = 'SPAN_KIND_PRODUCER', 'Producer',
            SpanKind = 'SPAN_KIND_CONSUMER', 'Consumer',
            SpanKind = 'SPAN_KIND_UNSPECIFIED', 'Unspecified', SpanKind) AS SpanKind,
    count() AS Calls,
    countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR')) AS Errors,
    sum(Duration) AS Nanos,
    sumMap([toInt16(floor(8 * log2(greatest(Duration, 1) / 1e6)))], [toUInt64(1)]) AS Histogram
FROM `otel`.otel_traces_local
GROUP BY Tenant, ServiceName, Minute, SpanName, SpanKind;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_edge_halves_local ON CLUSTER `meshtrace` (
    InsertedAt DateTime64(3) CODEC(Delta, ZSTD(1)),
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
    Failed Bool
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_edge_halves_local', '{replica}')
PARTITION BY toStartOfHour(InsertedAt)
ORDER BY InsertedAt
TTL toDateTime(InsertedAt) + toIntervalSecond(21600)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_edge_halves ON CLUSTER `meshtrace` AS `otel`.meshtrace_edge_halves_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_edge_halves_local', Key);

CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.meshtrace_edge_halves_mv ON CLUSTER `meshtrace`
TO `otel`.meshtrace_edge_halves_local
AS SELECT
    now64(3) AS InsertedAt,
    Tenant,
    SpanKind IN ('Client', 'SPAN_KIND_CLIENT') AS IsClient,
    ParentSpanId = '' AS IsRoot,
    cityHash64(TraceId, if(IsClient, SpanId, ParentSpanId)) AS Key,
    ServiceName AS Service,
    SpanAttributes['istio.canonical_revision'] AS Version,
    if(IsClient, multiIf(
        startsWith(SpanAttributes['upstream_cluster'], 'outbound|') AND position(splitByChar('|', SpanAttributes['upstream_cluster'])[4], '.svc.') > 0,
            arrayStringConcat(arraySlice(splitByChar('.', splitByChar('|', SpanAttributes['upstream_cluster'])[4]), 1, 2), '.'),
        startsWith(SpanAttributes['upstream_cluster'], 'outbound|') AND splitByChar('|', SpanAttributes['upstream_cluster'])[4] != '', splitByChar('|', SpanAttributes['upstream_cluster'])[4],
        SpanAttributes['upstream_cluster'] != '', SpanAttributes['upstream_cluster'],
        SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
        SpanAttributes['server.address'] != '', SpanAttributes['server.address'],
        SpanAttributes['net.peer.name'] != '', SpanAttributes['net.peer.name'],
        SpanAttributes['db.system'] != '', SpanAttributes['db.system'],
        ''), '') AS Peer,
    if(SpanAttributes['response_flags'] IN ('', '-'), '', SpanAttributes['response_flags']) AS Flags,
    toDateTime(Timestamp) AS Start,
    Duration,
    StatusCode IN ('Error', 'STATUS_CODE_ERROR') AS Failed
FROM `otel`.otel_traces_local
WHERE SpanKind IN ('Client', 'SPAN_KIND_CLIENT') OR SpanKind IN ('Server', 'SPAN_KIND_SERVER');

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_service_graph_local ON CLUSTER `meshtrace` (
    Tenant LowCardinality(String),
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
    ClientHistogram SimpleAggregateFunction(sumMap, Tuple(Array(Int16), Array(UInt64))),
    ServerHistogram SimpleAggregateFunction(sumMap, Tuple(Array(Int16), Array(UInt64)))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/otel/meshtrace_service_graph_local', '{replica}')
PARTITION BY toDate(Minute)
ORDER BY (Tenant, Minute, Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags)
TTL toDateTime(Minute) + toIntervalSecond(604800)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_service_graph ON CLUSTER `meshtrace` AS `otel`.meshtrace_service_graph_local
ENGINE = Distributed('meshtrace', 'otel', 'meshtrace_service_graph_local', cityHash64(Tenant, Client, Server));

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_graph_progress ON CLUSTER `meshtrace` (
    Id UInt8,
    Watermark DateTime64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel/meshtrace_graph_progress', '{replica}', Watermark)
ORDER BY Id;

CREATE TABLE IF NOT EXISTS `otel`.meshtrace_graph_builders ON CLUSTER `meshtrace` (
    Id String,
    Seen DateTime64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel/meshtrace_graph_builders', '{replica}', Seen)
ORDER BY Id
TTL toDateTime(Seen) + toIntervalDay(1);

