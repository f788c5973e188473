"""meshtrace's analytics routes (``/meshtrace/v1``): service graph, health, bottlenecks, failures.

- ``GET /servicegraph?start=&end=|lookback=`` → ``{"nodes", "edges"}`` (Istio-aware, see ``graph_view``)
- ``GET /servicegraph/edge?client=&server=&connection=&step=`` → one edge's calls, failures, client latency per step
- ``GET /red?service=&operation=&kind=server&step=60s&byOperation=false`` → per-step rate, error
  rate and latency percentiles per service (or operation)
- ``GET /impact?service=&kind=`` → operations ranked by latency × rate
- ``GET /errors?service=&limit=`` → errors grouped by service, operation, status code, response flags
- ``GET /outliers?service=&operation=&quantile=0.99&limit=`` → slow traces and what differs in them
- ``GET /traces/{id}/analysis`` → critical path, critical and self time per span, root-cause span
- ``GET /compare?a=<id>&b=<id>`` or ``?service=&operation=&a=p50&b=p99`` → aligned span paths of two
  traces (or groups of traces) with duration deltas, largest contribution first

Windows: ``start``/``end`` (ns or RFC 3339) or ``lookback`` (default 1h), widened to whole minutes for
the per-minute tables.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from meshtrace.errors import InvalidQuery
from meshtrace.model.ids import normalize_trace_id
from meshtrace.query import analysis
from meshtrace.query.insights import Insights, comparison_json, trace_analysis
from meshtrace.query.params import parse_duration_ns, parse_int

from .common import JSONResponse, parse_kind, tenant_of
from .native import time_window

router = APIRouter(prefix="/meshtrace/v1", tags=["analytics"], default_response_class=JSONResponse)
Tenant = Annotated[str, Depends(tenant_of)]
_GROUP = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


def _insights(request: Request) -> Insights:
    return Insights(request.app.state.query)


def _kind(kind: str | None) -> str | None:
    """Server side by default (what callers experience); ``all`` for every kind."""
    if not kind:
        return "server"
    return None if kind == "all" else parse_kind(kind).value.lower()


def _band(q: float) -> tuple[float, float]:
    """The latency band a group ``pNN`` stands for: the top tail from p95 up, ±5 points below."""
    return (q, 1.0) if q >= 0.95 else (max(q - 0.05, 0.0), q + 0.05)


def _quantile(text: str, *, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidQuery(f"{name} must be a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise InvalidQuery(f"{name} must be between 0 and 1 (exclusive), got {text!r}")
    return value


@router.get("/servicegraph", summary="Istio-aware service graph (computed at ingest)")
async def servicegraph(
    request: Request, tenant: Tenant, start: str | None = None, end: str | None = None, lookback: str | None = None
) -> JSONResponse:
    return JSONResponse(await _insights(request).service_graph(tenant, time_window(start, end, lookback)))


@router.get("/servicegraph/edge", summary="Rate, failures and client latency of one call edge per step")
async def servicegraph_edge(
    request: Request,
    tenant: Tenant,
    client: str,
    server: str,
    connection: Annotated[str | None, Query(description="'' or virtual_node; both when absent")] = None,
    step: str = "60s",
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    step_s = parse_duration_ns(step, name="step") // 1_000_000_000
    window = time_window(start, end, lookback)
    body = await _insights(request).edge_red(tenant, window, step_s, client, server, connection)
    return JSONResponse(body)


@router.get("/red", summary="Rate, errors and latency per step")
async def red(
    request: Request,
    tenant: Tenant,
    service: Annotated[list[str] | None, Query()] = None,
    operation: str | None = None,
    kind: Annotated[str | None, Query(description="server (default), client, …, or all")] = None,
    step: str = "60s",
    byOperation: bool = False,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    step_s = parse_duration_ns(step, name="step") // 1_000_000_000
    body = await _insights(request).red(
        tenant,
        time_window(start, end, lookback),
        step_s,
        services=service,
        kind=_kind(kind),
        operation=operation,
        by_operation=byOperation,
    )
    return JSONResponse(body)


@router.get("/impact", summary="Operations ranked by time spent (latency × rate)")
async def impact(
    request: Request,
    tenant: Tenant,
    service: Annotated[list[str] | None, Query()] = None,
    kind: str | None = None,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    ops = await _insights(request).impact(tenant, time_window(start, end, lookback), service, _kind(kind))
    return JSONResponse({"operations": ops})


@router.get("/errors", summary="Errors grouped by service, operation, status code and response flags")
async def errors(
    request: Request,
    tenant: Tenant,
    service: str | None = None,
    limit: str | None = None,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    groups = await _insights(request).errors(
        tenant, time_window(start, end, lookback), service, parse_int(limit, name="limit", default=100, minimum=1)
    )
    return JSONResponse({"groups": groups})


@router.get("/outliers", summary="Traces above an operation's latency quantile, and what differs in them")
async def outliers(
    request: Request,
    tenant: Tenant,
    service: str,
    operation: str,
    quantile: str = "0.99",
    limit: str | None = None,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    body = await _insights(request).outliers(
        tenant,
        service,
        operation,
        time_window(start, end, lookback),
        _quantile(quantile, name="quantile"),
        parse_int(limit, name="limit", default=20, minimum=1, maximum=1000),
    )
    return JSONResponse(body)


@router.get("/traces/{trace_id}/analysis", summary="Critical path, self time and root cause of one trace")
async def trace_analysis_route(request: Request, trace_id: str, tenant: Tenant) -> JSONResponse:
    trace = await request.app.state.query.get_trace(tenant, normalize_trace_id(trace_id))
    return JSONResponse(trace_analysis(trace))


@router.get("/compare", summary="Compare two traces, or two latency groups of an operation")
async def compare(
    request: Request,
    tenant: Tenant,
    a: str,
    b: str,
    service: str | None = None,
    operation: str | None = None,
    limit: str | None = None,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    ga, gb = _GROUP.match(a), _GROUP.match(b)
    if ga or gb:
        if not (ga and gb and service and operation):
            raise InvalidQuery("group comparison takes a=pNN and b=pNN with service and operation")
        time = time_window(start, end, lookback)
        n = parse_int(limit, name="limit", default=10, minimum=1, maximum=100)
        insights = _insights(request)
        groups = []
        for match in (ga, gb):
            lo, hi = _band(float(match.group(1)) / 100)
            group = await insights.group(tenant, service, operation, time, lo, hi, n)
            if not group:
                raise InvalidQuery(f"no traces of {service} {operation} around p{match.group(1)} in the window")
            groups.append(group)
        traces_a, traces_b = groups
    else:
        query = request.app.state.query
        traces_a = [await query.get_trace(tenant, normalize_trace_id(a))]
        traces_b = [await query.get_trace(tenant, normalize_trace_id(b))]
    result = analysis.compare(traces_a, traces_b)
    return JSONResponse(comparison_json(result, [t.trace_id for t in traces_a], [t.trace_id for t in traces_b]))
