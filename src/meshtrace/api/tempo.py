"""Grafana Tempo's HTTP API under ``/tempo`` (a Tempo data source URL of ``http://host:16686/tempo``).

Routes and shapes as Grafana's Tempo data source and Kiali's Tempo client read them (see the module
docs of each route). Times are unix seconds. Search streaming over gRPC is not served:
``/api/status/buildinfo`` reports 2.1.0 so Grafana keeps to plain HTTP search (leave the data source's
streaming toggle off).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from google.protobuf.json_format import MessageToDict

from meshtrace import __version__
from meshtrace.errors import InvalidQuery
from meshtrace.model.ids import normalize_trace_id
from meshtrace.model.otlp_out import traces_data
from meshtrace.model.spans import Span, Trace
from meshtrace.query.params import parse_duration_ns, parse_int
from meshtrace.query.traceql import Query, Spanset, parse
from meshtrace.query.traceql.ast import (
    KIND_VALUES,
    STATUS_VALUES,
    TRACE_INTRINSICS,
    Attribute,
    Binary,
    Intrinsic,
    Literal,
    Select,
    SpansetFilter,
)
from meshtrace.query.traceql.evaluate import MISSING, Context, value_of
from meshtrace.query.traceql_search import search
from meshtrace.store.api import TimeRange
from meshtrace.store.traceql_sql import plan

from .common import JSONResponse, tenant_of

router = APIRouter(prefix="/tempo", tags=["Tempo-compatible"], default_response_class=JSONResponse)
Tenant = Annotated[str, Depends(tenant_of)]
S = 1_000_000_000
TEMPO_VERSION = "2.1.0"
INTRINSICS = ["duration", "kind", "name", "rootName", "rootServiceName", "status", "statusMessage", "traceDuration"]
_PROTOBUF = ("application/protobuf", "application/x-protobuf")
_LOGFMT = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def _window(start: str | None, end: str | None, default_s: int = 3600) -> TimeRange:
    end_s = parse_int(end, name="end", default=int(time.time()) + 1, maximum=2**40)
    start_s = parse_int(start, name="start", default=end_s - default_s, maximum=2**40)
    if end_s <= start_s:
        raise InvalidQuery("end must be after start")
    return TimeRange(start_s * S, end_s * S)


# -- operations ------------------------------------------------------------------------------------


@router.get("/api/echo", response_class=PlainTextResponse, summary="Grafana's 'Save & test'")
async def echo() -> str:
    return "echo"


@router.get("/ready", response_class=PlainTextResponse, summary="200 once the backend is ready")
async def ready(request: Request) -> Response:
    problems = request.app.state.readiness()
    return PlainTextResponse("ready" if not problems else "; ".join(problems), status_code=503 if problems else 200)


@router.get("/api/status/buildinfo")
async def buildinfo() -> JSONResponse:
    return JSONResponse(
        {
            "version": TEMPO_VERSION,
            "revision": f"meshtrace-{__version__}",
            "branch": "meshtrace",
            "buildUser": "meshtrace",
            "buildDate": "",
            "goVersion": "",
        }
    )


# -- traces by id ----------------------------------------------------------------------------------


async def _trace(request: Request, tenant: str, trace_id: str, start: str | None, end: str | None) -> Trace:
    window = _window(start, end) if start or end else None
    return await request.app.state.query.get_trace(tenant, normalize_trace_id(trace_id), window, raw=True)


def _wants_protobuf(request: Request) -> bool:
    return any(kind in request.headers.get("accept", "") for kind in _PROTOBUF)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@router.get("/api/traces/{trace_id}", summary="A trace as OTLP (protobuf) or Tempo's JSON 'batches'")
async def trace_v1(
    request: Request, trace_id: str, tenant: Tenant, start: str | None = None, end: str | None = None
) -> Response:
    data = traces_data(await _trace(request, tenant, trace_id, start, end))
    if _wants_protobuf(request):
        return Response(data.SerializeToString(), media_type="application/protobuf")
    return JSONResponse({"batches": MessageToDict(data).get("resourceSpans", [])})


@router.get("/api/v2/traces/{trace_id}", summary="A trace wrapped in TraceByIDResponse (what Grafana reads first)")
async def trace_v2(
    request: Request, trace_id: str, tenant: Tenant, start: str | None = None, end: str | None = None
) -> Response:
    data = traces_data(await _trace(request, tenant, trace_id, start, end))
    if _wants_protobuf(request):
        body = data.SerializeToString()
        return Response(b"\x0a" + _varint(len(body)) + body, media_type="application/protobuf")
    return JSONResponse({"trace": MessageToDict(data), "status": "COMPLETE"})


# -- search ----------------------------------------------------------------------------------------


def _legacy_query(tags: str | None) -> Query:
    """Tempo's pre-TraceQL ``tags`` (logfmt): each key's value contained, case-insensitively."""
    condition: Any = None
    for key, raw in _LOGFMT.findall(tags or ""):
        value = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
        field: Any = Intrinsic("name") if key == "name" else Attribute("resource" if key == "service.name" else "", key)
        test = Binary("=~", field, Literal("string", f"(?i).*{re.escape(value)}.*"))
        condition = test if condition is None else Binary("&&", condition, test)
    return Query(SpansetFilter(condition))


def _reported_fields(query: Query) -> list[Any]:
    """Fields a matched span reports: those the filters test (as Tempo does) and those selected."""
    fields: list[Any] = []
    todo: list[Any] = [f.expr for f in query.filters() if f.expr is not None]
    while todo:
        node = todo.pop(0)
        if isinstance(node, Attribute) or (
            isinstance(node, Intrinsic) and node.name in ("status", "kind", "statusMessage")
        ):
            fields.append(node)
        elif isinstance(node, Binary):
            todo.extend((node.left, node.right))
    for stage in query.stages:
        if isinstance(stage, Select):
            fields.extend(stage.fields)
    unique: dict[str, Any] = {}
    for f in fields:
        if isinstance(f, Attribute | Intrinsic):
            unique.setdefault(str(f), f)
    return list(unique.values())


def _span_json(span: Span, fields: list[Any], ctx: Context) -> dict[str, Any]:
    attributes = []
    for f in fields:
        value = value_of(f, span, ctx)
        if value is not MISSING:
            attributes.append({"key": f.name, "value": {"stringValue": str(value)}})
    return {
        "spanID": span.span_id,
        "name": span.name,
        "startTimeUnixNano": str(span.start_ns),
        "durationNanos": str(span.duration_ns),
        "attributes": attributes,
    }


def _spanset_json(spanset: Spanset, fields: list[Any], ctx: Context, spss: int) -> dict[str, Any]:
    spans = sorted(spanset.spans, key=lambda s: (s.start_ns, s.span_id))
    out: dict[str, Any] = {
        "spans": [_span_json(s, fields, ctx) for s in spans[:spss]],
        "matched": len(spans),
    }
    if spanset.by:
        out["attributes"] = [{"key": k, "value": {"stringValue": str(v)}} for k, v in spanset.by.items()]
    return out


def _service_stats(trace: Trace) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for s in trace.spans:
        entry = stats.setdefault(s.service, {"spanCount": 0})
        entry["spanCount"] += 1
        if s.is_error:
            entry["errorCount"] = entry.get("errorCount", 0) + 1
    return stats


@router.get("/api/search", summary="TraceQL (q) or legacy tag search")
async def search_route(
    request: Request,
    tenant: Tenant,
    q: str | None = None,
    tags: str | None = None,
    minDuration: str | None = None,
    maxDuration: str | None = None,
    limit: str | None = None,
    spss: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> JSONResponse:
    query = parse(q) if q and q.strip() else _legacy_query(tags)
    n = parse_int(limit, name="limit", default=20, minimum=1, maximum=10_000)
    per_set = parse_int(spss, name="spss", default=3, minimum=1, maximum=10_000)
    low = parse_duration_ns(minDuration, name="minDuration") if minDuration else None
    high = parse_duration_ns(maxDuration, name="maxDuration") if maxDuration else None
    if low is not None and high is not None and high < low:
        raise InvalidQuery("maxDuration must be greater than minDuration")

    def keep(trace: Trace) -> bool:
        duration = trace.end_ns - trace.start_ns
        return (low is None or duration >= low) and (high is None or duration <= high)

    result = await search(request.app.state.query, tenant, query, _window(start, end), n, trace_filter=keep)
    fields = _reported_fields(query)
    traces = []
    for match in result.matches:
        trace, ctx = match.trace, Context.of(match.trace)
        sets = [_spanset_json(s, fields, ctx, per_set) for s in match.spansets]
        traces.append(
            {
                "traceID": trace.trace_id,
                "rootServiceName": ctx.root.service,
                "rootTraceName": ctx.root.name,
                "startTimeUnixNano": str(trace.start_ns),
                "durationMs": (trace.end_ns - trace.start_ns) // 1_000_000,
                "spanSet": sets[0],
                "spanSets": sets,
                "serviceStats": _service_stats(trace),
            }
        )
    metrics = {
        "inspectedTraces": result.inspected_traces,
        "inspectedSpans": str(result.inspected_spans),
        "inspectedBytes": "0",
        "totalBlocks": 0,
        "completedJobs": 1,
        "totalJobs": 1,
    }
    return JSONResponse({"traces": traces, "metrics": metrics})


# -- tags ------------------------------------------------------------------------------------------


def _scoped(tag: str) -> tuple[str, str]:
    """``resource.service.name`` → (resource, service.name); ``.x`` → ("", x); ``name`` → (intrinsic, name)."""
    if tag in INTRINSICS or tag in ("span:name", "span:status", "span:kind", "span:duration", "trace:duration"):
        return "intrinsic", tag.split(":")[-1]
    scope, dot, name = tag.partition(".")
    if dot and scope in ("span", "resource", ""):
        return scope, name
    return "", tag


async def _tag_names(request: Request, tenant: str, time_range: TimeRange, scope: str) -> list[str]:
    return await request.app.state.query.run(request.app.state.query.reader.tag_names, tenant, time_range, scope)


@router.get("/api/search/tags", summary="Attribute names (v1)")
async def tags_v1(
    request: Request, tenant: Tenant, scope: str | None = None, start: str | None = None, end: str | None = None
) -> JSONResponse:
    window = _window(start, end)
    names: set[str] = set()
    if scope in (None, "", "all", "span"):
        names.update(await _tag_names(request, tenant, window, "span"))
    if scope in (None, "", "all", "resource"):
        names.update(await _tag_names(request, tenant, window, "resource"))
    if scope == "intrinsic":
        names.update(INTRINSICS)
    return JSONResponse({"tagNames": sorted(names)})


@router.get("/api/v2/search/tags", summary="Attribute names by scope (v2)")
async def tags_v2(
    request: Request,
    tenant: Tenant,
    scope: str | None = None,
    start: str | None = None,
    end: str | None = None,
    q: str | None = None,
) -> JSONResponse:
    window = _window(start, end)
    scopes = []
    for name in ("span", "resource"):
        if scope in (None, "", "all", name):
            scopes.append({"name": name, "tags": await _tag_names(request, tenant, window, name)})
    if scope in (None, "", "all", "intrinsic"):
        scopes.append({"name": "intrinsic", "tags": INTRINSICS})
    return JSONResponse({"scopes": scopes})


async def _values(request: Request, tenant: str, tag: str, window: TimeRange, q: str | None) -> list[dict[str, str]]:
    scope, name = _scoped(tag)
    query = request.app.state.query
    if scope == "intrinsic":
        if name == "status":
            return [{"type": "keyword", "value": v} for v in STATUS_VALUES]
        if name == "kind":
            return [{"type": "keyword", "value": v} for v in KIND_VALUES]
        if name in TRACE_INTRINSICS or name in ("duration", "traceDuration"):
            return []
        if name == "name":
            services = await query.get_services(tenant)
            names = {op.name for svc in services for op in await query.get_operations(tenant, svc)}
            return [{"type": "string", "value": v} for v in sorted(names)]
    if name == "service.name" and scope in ("resource", "") and not q:
        return [{"type": "string", "value": v} for v in await query.get_services(tenant)]
    narrowed = None
    if q and q.strip() not in ("", "{}", "{ }"):
        narrowed = plan(parse(q), span_table=True)
    values = await query.run(query.reader.tag_values, tenant, window, scope, name, narrowed)
    return [{"type": "string", "value": v} for v in values]


@router.get("/api/search/tag/{tag}/values", summary="Values of one attribute (v1)")
async def tag_values_v1(
    request: Request, tag: str, tenant: Tenant, start: str | None = None, end: str | None = None
) -> JSONResponse:
    values = await _values(request, tenant, tag, _window(start, end), None)
    return JSONResponse({"tagValues": [v["value"] for v in values]})


@router.get("/api/v2/search/tag/{tag}/values", summary="Typed values of one scoped attribute or intrinsic (v2)")
async def tag_values_v2(
    request: Request, tag: str, tenant: Tenant, q: str | None = None, start: str | None = None, end: str | None = None
) -> JSONResponse:
    return JSONResponse({"tagValues": await _values(request, tenant, tag, _window(start, end), q)})
