"""meshtrace's own query API (``/meshtrace/v1``), the console's data source.

Shapes follow OTLP/JSON conventions: ids in hex, times and durations in nanoseconds as strings (64-bit
integers do not survive JavaScript numbers), attributes as objects of strings.

- ``GET /meshtrace/v1/services`` → ``{"services": [...]}``
- ``GET /meshtrace/v1/services/{service}/operations[?kind=server]`` → ``{"operations": [{"name", "kind"}]}``
- ``GET /meshtrace/v1/traces/{traceId}[?analysis=true]`` → a trace with every span (and its critical path,
  self times and root cause)
- ``GET /meshtrace/v1/traces?service=&operation=&kind=&attr=k=v&status=&minDuration=&maxDuration=
  &start=&end=&lookback=&limit=`` → ``{"traces": [summary, ...]}``, newest first
- ``GET /meshtrace/v1/dependencies?start=&end=&lookback=`` → ``{"links": [{"parent", "child", "callCount"}]}``
- ``GET /meshtrace/v1/stats[?start=&end=|lookback=]`` → ``{"spans", "traces", "distinctSpans"}`` stored for the
  caller's tenant (``spans`` > ``distinctSpans`` when senders delivered something twice)

``start``/``end``: nanoseconds since the epoch or RFC 3339; ``lookback``: a duration (default 1h).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from meshtrace.errors import InvalidQuery
from meshtrace.model.ids import normalize_trace_id
from meshtrace.model.spans import Span, StatusCode, Trace
from meshtrace.query.insights import trace_analysis
from meshtrace.query.params import parse_duration_ns, parse_int, parse_time_ns
from meshtrace.query.service import QueryService, window
from meshtrace.store.api import TimeRange, TraceQuery

from .common import JSONResponse, parse_kind, tenant_of

router = APIRouter(prefix="/meshtrace/v1", tags=["native"], default_response_class=JSONResponse)
Tenant = Annotated[str, Depends(tenant_of)]


def _query(request: Request) -> QueryService:
    return request.app.state.query


def span_json(span: Span) -> dict[str, Any]:
    return {
        "spanId": span.span_id,
        "parentSpanId": span.parent_span_id,
        "name": span.name,
        "kind": span.kind.value,
        "service": span.service,
        "startTimeUnixNano": str(span.start_ns),
        "durationNanos": str(span.duration_ns),
        "status": {"code": span.status_code.value, "message": span.status_message},
        "traceState": span.trace_state,
        "attributes": span.attributes,
        "resource": span.resource,
        "scope": {"name": span.scope_name, "version": span.scope_version},
        "events": [{"timeUnixNano": str(e.time_ns), "name": e.name, "attributes": e.attributes} for e in span.events],
        "links": [
            {
                "traceId": link.trace_id,
                "spanId": link.span_id,
                "traceState": link.trace_state,
                "attributes": link.attributes,
            }
            for link in span.links
        ],
        "warnings": span.warnings,
    }


def trace_summary(trace: Trace) -> dict[str, Any]:
    services: dict[str, dict[str, int]] = {}
    for span in trace.spans:
        stats = services.setdefault(span.service, {"spanCount": 0, "errorCount": 0})
        stats["spanCount"] += 1
        stats["errorCount"] += span.is_error
    root = trace.root
    return {
        "traceId": trace.trace_id,
        "rootService": root.service,
        "rootName": root.name,
        "startTimeUnixNano": str(trace.start_ns),
        "durationNanos": str(trace.end_ns - trace.start_ns),
        "spanCount": len(trace.spans),
        "errorCount": sum(s["errorCount"] for s in services.values()),
        "services": services,
    }


def time_window(start: str | None, end: str | None, lookback: str | None) -> TimeRange:
    end_ns = parse_time_ns(end, name="end", unit_ns=1) if end else None
    time = window(end_ns, parse_duration_ns(lookback or "1h", name="lookback"))
    if start:
        time = TimeRange(parse_time_ns(start, name="start", unit_ns=1), time.end_ns)
    if time.end_ns <= time.start_ns:
        raise InvalidQuery("end must be after start")
    return time


@router.get("/services")
async def services(request: Request, tenant: Tenant) -> JSONResponse:
    return JSONResponse({"services": await _query(request).get_services(tenant)})


@router.get("/services/{service}/operations")
async def operations(request: Request, service: str, tenant: Tenant, kind: str | None = None) -> JSONResponse:
    span_kind = parse_kind(kind) if kind else None
    ops = await _query(request).get_operations(tenant, service, span_kind)
    return JSONResponse({"operations": [{"name": op.name, "kind": op.kind.value} for op in ops]})


@router.get("/traces/{trace_id}")
async def get_trace(request: Request, trace_id: str, tenant: Tenant, analysis: bool = False) -> JSONResponse:
    """``analysis=true`` adds what ``/traces/{id}/analysis`` answers, from the same read of the trace."""
    trace = await _query(request).get_trace(tenant, normalize_trace_id(trace_id))
    body = {**trace_summary(trace), "warnings": trace.warnings, "spans": [span_json(s) for s in trace.spans]}
    if analysis:
        body["analysis"] = await asyncio.to_thread(trace_analysis, trace)
    return JSONResponse(body)


@router.get("/traces")
async def search(
    request: Request,
    tenant: Tenant,
    service: str | None = None,
    operation: str | None = None,
    kind: str | None = None,
    attr: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
    status: Annotated[str | None, Query(description="error, ok or unset")] = None,
    minDuration: str | None = None,
    maxDuration: str | None = None,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
    limit: str | None = None,
) -> JSONResponse:
    attributes = {}
    for pair in attr or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidQuery(f"attr {pair!r} must be key=value")
        attributes[key] = value
    try:
        status_code = StatusCode.parse(status) if status else None
    except KeyError as exc:
        raise InvalidQuery("status must be error, ok or unset") from exc
    traces = await _query(request).find_traces(
        TraceQuery(
            tenant=tenant,
            time=time_window(start, end, lookback),
            service=service or None,
            operation=operation or None,
            span_kind=parse_kind(kind) if kind else None,
            attributes=attributes,
            min_duration_ns=parse_duration_ns(minDuration, name="minDuration") if minDuration else None,
            max_duration_ns=parse_duration_ns(maxDuration, name="maxDuration") if maxDuration else None,
            status=status_code,
            limit=parse_int(limit, name="limit", default=20, minimum=1, maximum=1000),
        )
    )
    return JSONResponse({"traces": [trace_summary(t) for t in traces]})


@router.get("/dependencies")
async def dependencies(
    request: Request,
    tenant: Tenant,
    start: str | None = None,
    end: str | None = None,
    lookback: str | None = None,
) -> JSONResponse:
    links = await _query(request).get_dependencies(tenant, time_window(start, end, lookback))
    return JSONResponse({"links": [{"parent": d.parent, "child": d.child, "callCount": d.call_count} for d in links]})


@router.get("/status")
async def status(request: Request, tenant: Tenant) -> JSONResponse:
    """The backend as the caller's tenant sees it: its ingest counts, recent rejections, the store's health."""
    provider = request.app.state.status
    if provider is None:
        raise InvalidQuery("this backend serves no status")
    return JSONResponse(provider(tenant))


@router.get("/stats")
async def stats(
    request: Request, tenant: Tenant, start: str | None = None, end: str | None = None, lookback: str | None = None
) -> JSONResponse:
    time = time_window(start, end, lookback) if (start or end or lookback) else None
    spans, traces, distinct = await _query(request).count(tenant, time)
    return JSONResponse({"tenant": tenant, "spans": spans, "traces": traces, "distinctSpans": distinct})
