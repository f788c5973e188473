"""Reads the ingest-time analytics tables (and the search table for errors and outliers).

Windows are whole minutes, the tables' resolution: a window is widened to the minutes it touches.
Every statement filters on ``Tenant`` first, like the span reader.
"""

from __future__ import annotations

from typing import Any

from meshtrace.model.analytics import (
    AttributeSkew,
    ErrorGroup,
    GraphEdge,
    Histogram,
    OperationStats,
    Outlier,
    Series,
    SeriesPoint,
)
from meshtrace.store.analytics_schema import UNKNOWN, USER
from meshtrace.store.api import TimeRange
from meshtrace.store.engine import Engine
from meshtrace.store.schema import HOT_ATTRIBUTES, Schema

_NS = 1_000_000_000
_LAST_MINUTE = (2**32 - 1) // 60 * 60  # DateTime's range
_KINDS = {
    "server": "Server",
    "client": "Client",
    "internal": "Internal",
    "producer": "Producer",
    "consumer": "Consumer",
    "unspecified": "Unspecified",
}


def minutes(time: TimeRange) -> dict[str, int]:
    """The window as whole minutes: ``m0`` inclusive, ``m1`` exclusive, in seconds."""
    start = max(0, time.start_ns // _NS // 60 * 60)
    end = min(-(-time.end_ns // _NS // 60) * 60, _LAST_MINUTE)
    return {"m0": start, "m1": max(end, start + 60)}


_WINDOW = "Minute >= toDateTime({m0:UInt32}) AND Minute < toDateTime({m1:UInt32})"


class AnalyticsReader:
    """Service graph, RED series, operation totals, error groups and outliers of one tenant."""

    def __init__(self, engine: Engine, schema: Schema) -> None:
        self.engine = engine
        self.schema = schema

    def _query(self, sql: str, params: dict[str, Any]) -> list[list[Any]]:
        return self.engine.query(sql, params)

    # -- service graph ----------------------------------------------------------------------------

    def edges(self, tenant: str, time: TimeRange) -> list[GraphEdge]:
        rows = self._query(
            f"""SELECT Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags,
                sum(Calls), sum(Failed), sum(ClientNanos), sum(ServerNanos),
                sumMap(ClientHistogram), sumMap(ServerHistogram)
            FROM {self.schema.service_graph}
            WHERE Tenant = {{tenant:String}} AND {_WINDOW}
            GROUP BY Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags
            ORDER BY Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags""",
            {"tenant": tenant, **minutes(time)},
        )
        return [
            GraphEdge(
                c,
                s,
                cv,
                sv,
                ct,
                fl,
                int(n),
                int(f),
                int(cn),
                int(sn),
                Histogram.from_sum_map(ch),
                Histogram.from_sum_map(sh),
            )
            for c, s, cv, sv, ct, fl, n, f, cn, sn, ch, sh in rows
        ]

    def dependencies(self, tenant: str, time: TimeRange) -> list[tuple[str, str, int]]:
        """Service → service call counts, without the virtual callers (Jaeger's dependencies)."""
        rows = self._query(
            f"""SELECT Client, Server, sum(Calls) FROM {self.schema.service_graph}
            WHERE Tenant = {{tenant:String}} AND {_WINDOW} AND Client NOT IN ('{USER}', '{UNKNOWN}')
                AND Client != Server
            GROUP BY Client, Server ORDER BY Client, Server""",
            {"tenant": tenant, **minutes(time)},
        )
        return [(c, s, int(n)) for c, s, n in rows]

    def edge_series(
        self, tenant: str, time: TimeRange, step_s: int, client: str, server: str, connection: str | None = None
    ) -> Series:
        """Calls, failures and client latency of one edge per step (a multiple of 60 s); ``connection``
        ("" or ``virtual_node``) tells a real destination from an unanswered one of the same name."""
        step = max(60, step_s // 60 * 60)
        rows = self._query(
            f"""SELECT toUnixTimestamp(toStartOfInterval(Minute, toIntervalSecond({{step:UInt32}}),
                    toDateTime({{m0:UInt32}}))) AS t,
                sum(Calls), sum(Failed), sum(ClientNanos), sumMap(ClientHistogram)
            FROM {self.schema.service_graph}
            WHERE Tenant = {{tenant:String}} AND {_WINDOW} AND Client = {{client:String}} AND Server = {{server:String}}
                AND ({{connection:Nullable(String)}} IS NULL OR ConnectionType = {{connection:Nullable(String)}})
            GROUP BY t ORDER BY t""",
            {
                "tenant": tenant,
                **minutes(time),
                "step": step,
                "client": client,
                "server": server,
                "connection": connection,
            },
        )
        points = [SeriesPoint(int(t), int(n), int(f), int(ns), Histogram.from_sum_map(h)) for t, n, f, ns, h in rows]
        return Series({"client": client, "server": server}, points)

    def graph_totals(self, tenant: str) -> list[GraphEdge]:
        """Every retained edge summed over all time: the counters the Prometheus series expose."""
        return self.edges(tenant, TimeRange(0, 2**62))

    # -- RED --------------------------------------------------------------------------------------

    def _span_metrics_where(
        self, tenant: str, time: TimeRange, services: list[str] | None, kind: str | None, operation: str | None
    ) -> tuple[str, dict[str, Any]]:
        clauses = ["Tenant = {tenant:String}", _WINDOW]
        params: dict[str, Any] = {"tenant": tenant, **minutes(time)}
        if services:
            clauses.append("ServiceName IN {services:Array(String)}")
            params["services"] = services
        if kind:
            clauses.append("SpanKind = {kind:String}")
            params["kind"] = _KINDS.get(kind.lower(), kind)
        if operation:
            clauses.append("SpanName = {operation:String}")
            params["operation"] = operation
        return " AND ".join(clauses), params

    def red(
        self,
        tenant: str,
        time: TimeRange,
        step_s: int,
        *,
        services: list[str] | None = None,
        kind: str | None = "server",
        operation: str | None = None,
        by_operation: bool = False,
    ) -> list[Series]:
        """Calls, errors, latency per step (a multiple of 60 s) per service (and operation)."""
        where, params = self._span_metrics_where(tenant, time, services, kind, operation)
        step = max(60, step_s // 60 * 60)
        group = "ServiceName, SpanName" if by_operation else "ServiceName, ''"
        rows = self._query(
            f"""SELECT {group}, toUnixTimestamp(toStartOfInterval(Minute, toIntervalSecond({{step:UInt32}}),
                    toDateTime({{m0:UInt32}}))) AS t,
                sum(Calls), sum(Errors), sum(Nanos), sumMap(Histogram)
            FROM {self.schema.span_metrics} WHERE {where}
            GROUP BY ALL ORDER BY ALL""",
            {**params, "step": step},
        )
        series: dict[tuple[str, str], Series] = {}
        for service, op, t, calls, errors, nanos, hist in rows:
            labels = {"service_name": service, **({"operation": op} if by_operation else {})}
            s = series.setdefault((service, op), Series(labels, []))
            s.points.append(SeriesPoint(int(t), int(calls), int(errors), int(nanos), Histogram.from_sum_map(hist)))
        return list(series.values())

    def operations(
        self, tenant: str, time: TimeRange, *, services: list[str] | None = None, kind: str | None = None
    ) -> list[OperationStats]:
        where, params = self._span_metrics_where(tenant, time, services, kind, None)
        rows = self._query(
            f"""SELECT ServiceName, SpanName, SpanKind, sum(Calls), sum(Errors), sum(Nanos), sumMap(Histogram)
            FROM {self.schema.span_metrics} WHERE {where}
            GROUP BY ServiceName, SpanName, SpanKind ORDER BY ServiceName, SpanName, SpanKind""",
            params,
        )
        return [
            OperationStats(s, o, k, int(c), int(e), int(n), Histogram.from_sum_map(h)) for s, o, k, c, e, n, h in rows
        ]

    def span_metric_totals(self, tenant: str) -> list[OperationStats]:
        return self.operations(tenant, TimeRange(0, 2**62))

    # -- failures and outliers (the search table) -------------------------------------------------

    def error_groups(
        self, tenant: str, time: TimeRange, *, service: str | None = None, examples: int = 5, limit: int = 100
    ) -> list[ErrorGroup]:
        clauses = [
            "Tenant = {tenant:String}",
            "Timestamp >= fromUnixTimestamp64Nano({t0:Int64}) AND Timestamp < fromUnixTimestamp64Nano({t1:Int64})",
            "StatusCode IN ('Error', 'STATUS_CODE_ERROR')",
        ]
        params: dict[str, Any] = {"tenant": tenant, "t0": time.start_ns, "t1": time.end_ns, "limit": limit}
        if service:
            clauses.append("ServiceName = {service:String}")
            params["service"] = service
        rows = self._query(
            f"""SELECT ServiceName, SpanName, HttpStatusCode, ResponseFlags, count() AS n,
                arraySlice(groupUniqArray({int(examples) * 4})(TraceId), 1, {int(examples)})
            FROM {self.schema.span_index} WHERE {" AND ".join(clauses)}
            GROUP BY ServiceName, SpanName, HttpStatusCode, ResponseFlags
            ORDER BY n DESC, ServiceName, SpanName, HttpStatusCode, ResponseFlags
            LIMIT {{limit:UInt32}}""",
            params,
        )
        return [ErrorGroup(s, o, code, flags, int(n), sorted(ids)) for s, o, code, flags, n, ids in rows]

    def _op_where(self, tenant: str, service: str, operation: str, time: TimeRange) -> tuple[str, dict[str, Any]]:
        return (
            "Tenant = {tenant:String} AND ServiceName = {service:String} AND SpanName = {operation:String} "
            "AND Timestamp >= fromUnixTimestamp64Nano({t0:Int64}) AND Timestamp < fromUnixTimestamp64Nano({t1:Int64})",
            {"tenant": tenant, "service": service, "operation": operation, "t0": time.start_ns, "t1": time.end_ns},
        )

    def slow_spans(
        self,
        tenant: str,
        service: str,
        operation: str,
        time: TimeRange,
        above_ns: int,
        limit: int = 20,
        below_ns: int | None = None,
    ) -> list[Outlier]:
        """Spans of the operation slower than ``above_ns`` (and not slower than ``below_ns``), slowest first."""
        where, params = self._op_where(tenant, service, operation, time)
        if below_ns is not None:
            where += " AND Duration <= {below:UInt64}"
            params["below"] = below_ns
        rows = self._query(
            f"""SELECT TraceId, toUnixTimestamp64Nano(Timestamp), Duration FROM {self.schema.span_index}
            WHERE {where} AND Duration > {{above:UInt64}}
            ORDER BY Duration DESC, TraceId LIMIT {{limit:UInt32}}""",
            {**params, "above": above_ns, "limit": limit},
        )
        return [Outlier(tid, int(start), int(d)) for tid, start, d in rows]

    def skew(self, tenant: str, service: str, operation: str, time: TimeRange, above_ns: int) -> list[AttributeSkew]:
        """Values of the hot Istio attributes among spans above ``above_ns`` versus all, most skewed first."""
        where, params = self._op_where(tenant, service, operation, time)
        keys = list(HOT_ATTRIBUTES)
        columns = ", ".join(HOT_ATTRIBUTES.values())
        rows = self._query(
            f"""SELECT kv.1 AS key, kv.2 AS value,
                countIf(Duration > {{above:UInt64}}) AS slow, count() AS all_spans,
                sum(slow) OVER (PARTITION BY key) AS slow_total, sum(all_spans) OVER (PARTITION BY key) AS total
            FROM {self.schema.span_index}
            ARRAY JOIN arrayZip({{keys:Array(String)}}, [{columns}]) AS kv
            WHERE {where}
            GROUP BY key, value""",
            {**params, "above": above_ns, "keys": keys},
        )
        out = [
            AttributeSkew(key, value, slow / slow_total, n / total)
            for key, value, slow, n, slow_total, total in rows
            if slow_total and total
        ]
        out = [s for s in out if abs(s.outlier_share - s.baseline_share) >= 0.05]
        return sorted(out, key=lambda s: (-abs(s.outlier_share - s.baseline_share), s.key, s.value))
