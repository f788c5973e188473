"""Jaeger's query API (``/api/*``) as Jaeger UI, Grafana's Jaeger data source and Kiali call it.

Routes, parameters and defaults follow ``jaegertracing/jaeger`` ``cmd/query/app``: times in µs,
durations as Go strings, ``tags`` as JSON maps, a 48-hour default window, limit 100, and the
``{"data","total","limit","offset","errors"}`` envelope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from meshtrace.errors import InvalidQuery
from meshtrace.model.ids import normalize_trace_id
from meshtrace.model.spans import Span, SpanKind, StatusCode, Trace
from meshtrace.query.params import parse_duration_ns, parse_int, parse_jaeger_tags, parse_time_ns
from meshtrace.query.service import QueryService, window
from meshtrace.store.api import TimeRange, TraceQuery

from .common import JSONResponse, parse_kind, tenant_of

router = APIRouter(prefix="/api", tags=["Jaeger-compatible"], default_response_class=JSONResponse)
Tenant = Annotated[str, Depends(tenant_of)]

_US = 1_000
_MS = 1_000_000
_DEFAULT_LOOKBACK_NS = 48 * 3600 * 10**9


def envelope(data: Any, total: int | None = None, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "data": data,
        "total": total if total is not None else (len(data) if isinstance(data, list) else 0),
        "limit": 0,
        "offset": 0,
        "errors": errors or None,
    }


def _query(request: Request) -> QueryService:
    return request.app.state.query


# -- the Jaeger UI model ---------------------------------------------------------------------------


def _tag(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "type": "string", "value": value}


def _span_tags(span: Span) -> list[dict[str, Any]]:
    tags = [_tag(k, v) for k, v in sorted(span.attributes.items()) if k != "error"]
    if span.kind not in (SpanKind.UNSPECIFIED,):
        tags.append(_tag("span.kind", span.kind.value.lower()))
    if span.status_code is not StatusCode.UNSET:
        tags.append(_tag("otel.status_code", span.status_code.value.upper()))
    if span.status_message:
        tags.append(_tag("otel.status_description", span.status_message))
    if span.is_error or span.attributes.get("error") == "true":
        tags.append({"key": "error", "type": "bool", "value": True})
    elif "error" in span.attributes:
        tags.append(_tag("error", span.attributes["error"]))
    if span.scope_name:
        tags.append(_tag("otel.scope.name", span.scope_name))
    if span.scope_version:
        tags.append(_tag("otel.scope.version", span.scope_version))
    if span.trace_state:
        tags.append(_tag("w3c.tracestate", span.trace_state))
    return tags


def jaeger_trace(trace: Trace) -> dict[str, Any]:
    """One trace in Jaeger UI's JSON model (``internal/uimodel``)."""
    processes: dict[str, dict[str, Any]] = {}
    process_ids: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    spans = []
    for span in trace.spans:
        resource = tuple(sorted((k, v) for k, v in span.resource.items() if k != "service.name"))
        key = (span.service, resource)
        pid = process_ids.get(key)
        if pid is None:
            pid = process_ids[key] = f"p{len(process_ids) + 1}"
            processes[pid] = {"serviceName": span.service, "tags": [_tag(k, v) for k, v in resource]}
        references = []
        if span.parent_span_id:
            references.append({"refType": "CHILD_OF", "traceID": span.trace_id, "spanID": span.parent_span_id})
        references += [
            {"refType": "FOLLOWS_FROM", "traceID": link.trace_id, "spanID": link.span_id} for link in span.links
        ]
        spans.append(
            {
                "traceID": span.trace_id,
                "spanID": span.span_id,
                "flags": 1,
                "operationName": span.name,
                "references": references,
                "startTime": span.start_ns // _US,
                "duration": span.duration_ns // _US,
                "tags": _span_tags(span),
                "logs": [
                    {
                        "timestamp": event.time_ns // _US,
                        "fields": [
                            _tag("event", event.name),
                            *(_tag(k, v) for k, v in sorted(event.attributes.items())),
                        ],
                    }
                    for event in span.events
                ],
                "processID": pid,
                "warnings": span.warnings or None,
            }
        )
    return {"traceID": trace.trace_id, "spans": spans, "processes": processes, "warnings": trace.warnings or None}


# -- routes ----------------------------------------------------------------------------------------


@router.get("/services", summary="Services with spans")
async def services(request: Request, tenant: Tenant) -> JSONResponse:
    return JSONResponse(envelope(await _query(request).get_services(tenant)))


@router.get("/services/{service}/operations", summary="Span names of a service (all kinds)")
async def service_operations(request: Request, service: str, tenant: Tenant) -> JSONResponse:
    operations = await _query(request).get_operations(tenant, service)
    return JSONResponse(envelope(sorted({op.name for op in operations})))


@router.get("/operations", summary="Span names of a service, with kinds")
async def operations(
    request: Request,
    tenant: Tenant,
    service: Annotated[str | None, Query(description="required")] = None,
    spanKind: Annotated[str | None, Query(description="server, client, producer, consumer, internal")] = None,
) -> JSONResponse:
    if not service:
        raise InvalidQuery("parameter 'service' is required")
    kind = parse_kind(spanKind) if spanKind else None
    ops = await _query(request).get_operations(tenant, service, kind)
    data = [{"name": op.name, "spanKind": op.kind.value.lower()} for op in ops]
    return JSONResponse(envelope(data))


@router.get("/traces/{trace_id}", summary="One trace by id")
async def get_trace(
    request: Request,
    trace_id: str,
    tenant: Tenant,
    start: Annotated[str | None, Query(description="µs since epoch")] = None,
    end: Annotated[str | None, Query(description="µs since epoch")] = None,
    raw: bool = False,
) -> JSONResponse:
    tid = normalize_trace_id(trace_id)
    time = None
    if start and end:
        time = TimeRange(
            parse_time_ns(start, name="start", unit_ns=_US), parse_time_ns(end, name="end", unit_ns=_US) + _US
        )
    trace = await _query(request).get_trace(tenant, tid, time, raw=raw)
    return JSONResponse(envelope([jaeger_trace(trace)]))


@router.get("/traces", summary="Search traces")
async def find_traces(
    request: Request,
    tenant: Tenant,
    service: str | None = None,
    operation: str | None = None,
    start: Annotated[str | None, Query(description="µs since epoch; default end − 48h")] = None,
    end: Annotated[str | None, Query(description="µs since epoch; default now")] = None,
    minDuration: Annotated[str | None, Query(description="Go duration, e.g. 100ms")] = None,
    maxDuration: Annotated[str | None, Query(description="Go duration, e.g. 2s")] = None,
    limit: Annotated[str | None, Query(description="traces to return; default 100")] = None,
    tags: Annotated[list[str] | None, Query(description='JSON map, e.g. {"http.status_code":"500"}')] = None,
    tag: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
    traceID: Annotated[list[str] | None, Query(description="fetch these traces instead of searching")] = None,
    raw: bool = False,
) -> JSONResponse:
    query = _query(request)
    if traceID:
        ids = [normalize_trace_id(t) for t in traceID]
        found, missing = await query.get_traces(tenant, ids, raw=raw)
        errors = [{"code": 404, "msg": "trace not found", "traceID": t} for t in missing]
        return JSONResponse(envelope([jaeger_trace(t) for t in found], errors=errors))
    if not service:
        raise InvalidQuery("parameter 'service' is required")
    end_ns = parse_time_ns(end, name="end", unit_ns=_US) if end else None
    time = window(end_ns, _DEFAULT_LOOKBACK_NS)
    if start:
        time = TimeRange(parse_time_ns(start, name="start", unit_ns=_US), time.end_ns + _US)
    min_d = parse_duration_ns(minDuration, name="minDuration") if minDuration else None
    max_d = parse_duration_ns(maxDuration, name="maxDuration") if maxDuration else None
    if min_d is not None and max_d is not None and max_d < min_d:
        raise InvalidQuery("maxDuration must be greater than or equal to minDuration")
    attributes = parse_jaeger_tags(tags or [], tag or [])
    status, kind = None, None
    if attributes.get("error") == "true":
        del attributes["error"]
        status = StatusCode.ERROR
    if "span.kind" in attributes:
        kind = parse_kind(attributes.pop("span.kind"))
    if "otel.status_code" in attributes:
        try:
            status = StatusCode.parse(attributes.pop("otel.status_code"))
        except KeyError as exc:
            raise InvalidQuery("otel.status_code must be OK, ERROR or UNSET") from exc
    traces = await query.find_traces(
        TraceQuery(
            tenant=tenant,
            time=time,
            service=service,
            operation=operation or None,
            span_kind=kind,
            attributes=attributes,
            min_duration_ns=min_d,
            max_duration_ns=max_d,
            status=status,
            limit=parse_int(limit, name="limit", default=100, minimum=1, maximum=10_000),
        ),
        raw=raw,
    )
    return JSONResponse(envelope([jaeger_trace(t) for t in traces]))


@router.get("/dependencies", summary="Service call graph (parent → child, call counts)")
async def dependencies(
    request: Request,
    tenant: Tenant,
    endTs: Annotated[str | None, Query(description="ms since epoch; default now")] = None,
    lookback: Annotated[str | None, Query(description="ms; default 24h")] = None,
) -> JSONResponse:
    end_ns = parse_time_ns(endTs, name="endTs", unit_ns=_MS) if endTs else None
    lookback_ns = parse_int(lookback, name="lookback", default=86_400_000, minimum=1, maximum=10**11) * _MS
    links = await _query(request).get_dependencies(tenant, window(end_ns, lookback_ns))
    data = [{"parent": d.parent, "child": d.child, "callCount": d.call_count} for d in links]
    return JSONResponse(envelope(data))
