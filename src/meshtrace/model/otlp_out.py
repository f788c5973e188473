"""Stored traces back to OTLP ``TracesData``: what Tempo's trace-by-id endpoints return.

Spans are grouped by resource (one ResourceSpans per distinct resource) and scope, as senders group
them. Attribute values come back as strings: the store keeps them rendered as text, like the Collector's
ClickHouse exporter.
"""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

from meshtrace.model.spans import Span as StoredSpan
from meshtrace.model.spans import SpanKind, StatusCode, Trace

_KIND = {
    SpanKind.UNSPECIFIED: Span.SPAN_KIND_UNSPECIFIED,
    SpanKind.INTERNAL: Span.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: Span.SPAN_KIND_SERVER,
    SpanKind.CLIENT: Span.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: Span.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: Span.SPAN_KIND_CONSUMER,
}
_STATUS = {
    StatusCode.UNSET: Status.STATUS_CODE_UNSET,
    StatusCode.OK: Status.STATUS_CODE_OK,
    StatusCode.ERROR: Status.STATUS_CODE_ERROR,
}


def _attributes(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]


def _span(s: StoredSpan) -> Span:
    out = Span(
        trace_id=bytes.fromhex(s.trace_id),
        span_id=bytes.fromhex(s.span_id),
        parent_span_id=bytes.fromhex(s.parent_span_id) if s.parent_span_id else b"",
        trace_state=s.trace_state,
        name=s.name,
        kind=_KIND.get(s.kind, Span.SPAN_KIND_UNSPECIFIED),
        start_time_unix_nano=s.start_ns,
        end_time_unix_nano=s.end_ns,
        attributes=_attributes(s.attributes),
        status=Status(code=_STATUS.get(s.status_code, Status.STATUS_CODE_UNSET), message=s.status_message),
    )
    for e in s.events:
        out.events.add(time_unix_nano=e.time_ns, name=e.name, attributes=_attributes(e.attributes))
    for link in s.links:
        out.links.add(
            trace_id=bytes.fromhex(link.trace_id),
            span_id=bytes.fromhex(link.span_id),
            trace_state=link.trace_state,
            attributes=_attributes(link.attributes),
        )
    return out


def traces_data(trace: Trace) -> TracesData:
    data = TracesData()
    resources: dict[tuple[tuple[str, str], ...], ResourceSpans] = {}
    scopes: dict[tuple[int, str, str], ScopeSpans] = {}
    for s in trace.spans:
        resource = {"service.name": s.service, **s.resource}
        key = tuple(sorted(resource.items()))
        rs = resources.get(key)
        if rs is None:
            rs = resources[key] = data.resource_spans.add()
            rs.resource.attributes.extend(_attributes(resource))
        scope_key = (id(rs), s.scope_name, s.scope_version)
        ss = scopes.get(scope_key)
        if ss is None:
            ss = scopes[scope_key] = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = s.scope_name, s.scope_version
        ss.spans.append(_span(s))
    return data
