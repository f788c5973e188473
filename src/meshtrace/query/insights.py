"""Health, bottlenecks and failures: the analytics answers in the shapes the APIs return.

Each method reads the ingest-time tables (or the search table) through ``AnalyticsReader`` in a worker
thread and turns rows into JSON-ready dicts; times in nanoseconds as strings, latencies in ms.
"""

from __future__ import annotations

from typing import Any

from meshtrace.errors import InvalidQuery
from meshtrace.model.analytics import Histogram, OperationStats, Series
from meshtrace.model.spans import Trace
from meshtrace.query import analysis
from meshtrace.query.graph_view import red_fields, service_graph
from meshtrace.query.service import QueryService
from meshtrace.store.analytics import AnalyticsReader, minutes
from meshtrace.store.api import TimeRange

_NS_PER_MS = 1_000_000


def _ms(ns: float | None) -> float | None:
    return round(ns / _NS_PER_MS, 3) if ns is not None else None


def _window_s(time: TimeRange) -> int:
    m = minutes(time)
    return m["m1"] - m["m0"]


def operation_json(stats: OperationStats, window_s: float) -> dict[str, Any]:
    return {
        "service": stats.service,
        "operation": stats.operation,
        "kind": stats.kind.lower(),
        **red_fields(stats.calls, stats.errors, window_s, stats.histogram),
        "avgMs": _ms(stats.nanos / stats.calls) if stats.calls else None,
        "totalSeconds": stats.nanos / 1e9,
    }


class Insights:
    def __init__(self, query: QueryService) -> None:
        if query.analytics is None:
            raise InvalidQuery("this backend has no analytics tables")
        self.query = query
        self.reader: AnalyticsReader = query.analytics

    async def service_graph(self, tenant: str, time: TimeRange) -> dict[str, Any]:
        edges = await self.query.run(self.reader.edges, tenant, time)
        m = minutes(time)
        return {
            "start": str(m["m0"] * 10**9),
            "end": str(m["m1"] * 10**9),
            **service_graph(edges, m["m1"] - m["m0"]),
        }

    async def red(
        self,
        tenant: str,
        time: TimeRange,
        step_s: int,
        *,
        services: list[str] | None,
        kind: str | None,
        operation: str | None,
        by_operation: bool,
    ) -> dict[str, Any]:
        series = await self.query.run(
            lambda: self.reader.red(
                tenant, time, step_s, services=services, kind=kind, operation=operation, by_operation=by_operation
            )
        )
        step = max(60, step_s // 60 * 60)
        return {
            "step": step,
            "series": [
                {
                    **s.labels,
                    "points": [
                        {"time": p.time_s, **red_fields(p.calls, p.errors, step, p.histogram)} for p in s.points
                    ],
                }
                for s in series
            ],
        }

    async def edge_red(
        self, tenant: str, time: TimeRange, step_s: int, client: str, server: str, connection: str | None
    ) -> dict[str, Any]:
        series = await self.query.run(self.reader.edge_series, tenant, time, step_s, client, server, connection)
        step = max(60, step_s // 60 * 60)
        return {
            "step": step,
            "series": [
                {
                    **series.labels,
                    "points": [
                        {"time": p.time_s, **red_fields(p.calls, p.errors, step, p.histogram, errors_key="failed")}
                        for p in series.points
                    ],
                }
            ],
        }

    async def reader_red(
        self, tenant: str, time: TimeRange, *, services: list[str], kind: str | None, by_operation: bool
    ) -> list[Series]:
        """Per-minute series as stored, for callers that aggregate their own windows."""
        return await self.query.run(
            lambda: self.reader.red(tenant, time, 60, services=services, kind=kind, by_operation=by_operation)
        )

    async def impact(self, tenant: str, time: TimeRange, services: list[str] | None, kind: str | None) -> list[Any]:
        """Operations ranked by the time they cost in the window (latency × rate), largest first."""
        ops = await self.query.run(lambda: self.reader.operations(tenant, time, services=services, kind=kind))
        total = sum(o.nanos for o in ops) or 1
        window = _window_s(time)
        ranked = sorted(ops, key=lambda o: (-o.nanos, o.service, o.operation))
        return [{**operation_json(o, window), "impact": o.nanos / total} for o in ranked]

    async def errors(self, tenant: str, time: TimeRange, service: str | None, limit: int) -> list[Any]:
        groups = await self.query.run(lambda: self.reader.error_groups(tenant, time, service=service, limit=limit))
        return [
            {
                "service": g.service,
                "operation": g.operation,
                "httpStatusCode": g.http_status_code,
                "responseFlags": g.response_flags,
                "count": g.count,
                "traceIds": g.trace_ids,
            }
            for g in groups
        ]

    async def _quantile(self, tenant: str, service: str, operation: str, time: TimeRange, q: float) -> float | None:
        ops = await self.query.run(lambda: self.reader.operations(tenant, time, services=[service]))
        merged = Histogram()
        for o in ops:
            if o.operation == operation:
                merged.merge(o.histogram)
        return merged.quantile(q)

    async def outliers(
        self, tenant: str, service: str, operation: str, time: TimeRange, quantile: float, limit: int
    ) -> dict[str, Any]:
        threshold = await self._quantile(tenant, service, operation, time, quantile)
        if threshold is None:
            return {"thresholdMs": None, "traces": [], "differences": []}
        above = int(threshold)
        slow = await self.query.run(self.reader.slow_spans, tenant, service, operation, time, above, limit)
        skew = await self.query.run(self.reader.skew, tenant, service, operation, time, above)
        return {
            "thresholdMs": _ms(threshold),
            "traces": [
                {"traceId": o.trace_id, "startTimeUnixNano": str(o.span_start_ns), "durationMs": _ms(o.duration_ns)}
                for o in slow
            ],
            "differences": [
                {"key": s.key, "value": s.value, "outlierShare": s.outlier_share, "baselineShare": s.baseline_share}
                for s in skew
            ],
        }

    async def group(
        self, tenant: str, service: str, operation: str, time: TimeRange, lo_q: float, hi_q: float, limit: int
    ) -> list[Trace]:
        """Traces whose span of the operation lies between two quantiles of its latency."""
        lo = await self._quantile(tenant, service, operation, time, lo_q)
        hi = await self._quantile(tenant, service, operation, time, hi_q) if hi_q < 1 else None
        if lo is None:
            return []
        spans = await self.query.run(
            self.reader.slow_spans, tenant, service, operation, time, int(lo), limit * 4, int(hi) if hi else None
        )
        ids = list(dict.fromkeys(o.trace_id for o in spans))[:limit]
        traces, _ = await self.query.get_traces(tenant, ids)
        return traces


def trace_analysis(trace: Trace) -> dict[str, Any]:
    path = analysis.critical_path(trace)
    cause = analysis.root_cause(trace)
    return {
        "traceId": trace.trace_id,
        "durationNanos": str(trace.root.duration_ns),
        "criticalPath": [
            {"spanId": s.span_id, "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns)} for s in path
        ],
        "criticalNanos": {k: str(v) for k, v in analysis.critical_time(trace).items()},
        "selfNanos": {k: str(v) for k, v in analysis.self_time(trace).items()},
        "rootCause": cause.span_id if cause is not None else None,
    }


def comparison_json(result: analysis.Comparison, a_ids: list[str], b_ids: list[str]) -> dict[str, Any]:
    return {
        "a": {"traceIds": a_ids, "durationMs": _ms(result.a_duration_ns)},
        "b": {"traceIds": b_ids, "durationMs": _ms(result.b_duration_ns)},
        "differenceMs": _ms(result.difference_ns),
        "spans": [
            {
                "path": [{"service": s, "name": n, "index": i} for s, n, i in d.path],
                "status": d.status,
                "aDurationMs": _ms(d.a_duration_ns),
                "bDurationMs": _ms(d.b_duration_ns),
                "aCriticalMs": _ms(d.a_critical_ns),
                "bCriticalMs": _ms(d.b_critical_ns),
                "aPresence": d.a_presence,
                "bPresence": d.b_presence,
                "contributionMs": _ms(d.contribution_ns),
            }
            for d in result.deltas
        ],
    }
