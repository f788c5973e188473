"""Jaeger's Service Performance Monitoring API (``/api/metrics/*``), answered from the per-minute span
metrics instead of a Prometheus.

Parameters and defaults follow Jaeger's query service: ``service`` (repeatable, required),
``groupByOperation``, ``spanKind`` (``SPAN_KIND_SERVER`` by default), ``endTs``/``lookback``/``step``/
``ratePer`` in ms (now, 1h, 5s, 10m), ``quantile`` for latencies. Each point aggregates the ``ratePer``
window ending at it, as Prometheus' ``rate(...[ratePer])`` would; the step is at least the tables'
minute (``/api/metrics/minstep`` says so). The body is a ``MetricFamily`` in its JSON form.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from meshtrace.errors import InvalidQuery
from meshtrace.model.analytics import Histogram
from meshtrace.query.insights import Insights
from meshtrace.query.params import parse_int
from meshtrace.store.api import TimeRange

from .common import JSONResponse, parse_kind, tenant_of

router = APIRouter(prefix="/api/metrics", tags=["Jaeger-compatible"], default_response_class=JSONResponse)
Tenant = Annotated[str, Depends(tenant_of)]
MIN_STEP_MS = 60_000
_MS_NS = 1_000_000

_NAMES = {
    "latencies": ("latencies", "{q}th quantile latency, grouped by {by}"),
    "calls": ("call_rate", "calls/sec, grouped by {by}"),
    "errors": ("error_rate", "error rate, computed as a fraction of errors/sec over calls/sec, grouped by {by}"),
}


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@router.get("/minstep", summary="The smallest step the metrics have (ms)")
async def minstep(tenant: Tenant) -> JSONResponse:
    return JSONResponse({"data": MIN_STEP_MS, "total": 0, "limit": 0, "offset": 0, "errors": None})


@router.get("/{metric}", summary="Latencies, call rates or error rates per service (SPM)")
async def metrics(
    request: Request,
    metric: str,
    tenant: Tenant,
    service: Annotated[list[str] | None, Query()] = None,
    groupByOperation: bool = False,
    spanKind: Annotated[list[str] | None, Query()] = None,
    endTs: str | None = None,
    lookback: str | None = None,
    step: str | None = None,
    ratePer: str | None = None,
    quantile: str | None = None,
) -> JSONResponse:
    if metric not in _NAMES:
        raise InvalidQuery(f"unknown metric {metric!r}: use latencies, calls or errors")
    if not service:
        raise InvalidQuery("please provide at least one service name")
    q = 0.0
    if metric == "latencies":
        if quantile is None:
            raise InvalidQuery("please provide a quantile between (0, 1]")
        try:
            q = float(quantile)
        except ValueError:
            raise InvalidQuery(f"unable to parse quantile {quantile!r}") from None
        if not 0 < q <= 1:
            raise InvalidQuery("quantile must be between (0, 1]")
    kinds = [parse_kind(k).value.lower() for k in spanKind] if spanKind else ["server"]
    end_ms = parse_int(endTs, name="endTs", default=int(time.time() * 1000), maximum=2**62)
    lookback_ms = parse_int(lookback, name="lookback", default=3_600_000, minimum=1, maximum=2**40)
    step_ms = max(MIN_STEP_MS, parse_int(step, name="step", default=5_000, minimum=1, maximum=2**40))
    rate_ms = max(MIN_STEP_MS, parse_int(ratePer, name="ratePer", default=600_000, minimum=1, maximum=2**40))
    window = TimeRange((end_ms - lookback_ms - rate_ms) * _MS_NS, end_ms * _MS_NS)
    insights = Insights(request.app.state.query)
    minute_series: dict[tuple[str, str], dict[int, tuple[int, int, Histogram]]] = {}
    for kind in kinds:
        body = await insights.reader_red(tenant, window, services=service, kind=kind, by_operation=groupByOperation)
        for s in body:
            key = (s.labels["service_name"], s.labels.get("operation", ""))
            points = minute_series.setdefault(key, {})
            for p in s.points:
                calls, errors, hist = points.get(p.time_s, (0, 0, Histogram()))
                hist.merge(p.histogram)
                points[p.time_s] = (calls + p.calls, errors + p.errors, hist)
    grid_end = end_ms // 1000 // 60 * 60
    grid_start = (end_ms - lookback_ms) // 1000
    step_s, rate_s = step_ms // 1000, rate_ms // 1000
    ticks = list(range(grid_end, grid_start - 1, -step_s))[::-1]
    name, help_text = _NAMES[metric]
    by = "service, operation" if groupByOperation else "service"
    family: dict[str, Any] = {
        "name": f"service_operation_{name}" if groupByOperation else f"service_{name}",
        "type": "GAUGE",
        "help": help_text.format(q=q, by=by),
        "metrics": [],
    }
    for (svc, op), points in sorted(minute_series.items()):
        out = []
        for t in ticks:
            calls, errors, hist = 0, 0, Histogram()
            for minute, (c, e, h) in points.items():
                if t - rate_s <= minute < t:
                    calls, errors = calls + c, errors + e
                    hist.merge(h)
            if metric == "calls":
                value: float | None = calls / rate_s
            elif metric == "errors":
                value = errors / calls if calls else None
            else:
                latency = hist.quantile(q)
                value = latency / _MS_NS if latency is not None else None
            if value is not None:
                out.append({"gaugeValue": {"doubleValue": value}, "timestamp": _rfc3339(t)})
        labels = [{"name": "service_name", "value": svc}]
        if groupByOperation:
            labels.append({"name": "operation", "value": op})
        family["metrics"].append({"labels": labels, "metricPoints": out})
    return JSONResponse(family)
