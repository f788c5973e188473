"""Zipkin v2 JSON (what Istio's ``zipkin`` extension provider sends) → OTLP protobuf.

One ResourceSpans per ``localEndpoint.serviceName``. Tags become string attributes, annotations
become events, an ``error`` tag (or ``otel.status_code``) sets the span status, the endpoints become
``net.*``/``peer.service`` attributes. 64-bit trace ids are left-padded to 128 bits. A field of the wrong
type leaves that span invalid, so validation rejects it alone and the rest of the batch is stored.
"""

from __future__ import annotations

import binascii
import math
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from meshtrace.errors import MalformedRequest
from meshtrace.model.otlp_json import load_json

_KINDS = {
    "CLIENT": Span.SPAN_KIND_CLIENT,
    "SERVER": Span.SPAN_KIND_SERVER,
    "PRODUCER": Span.SPAN_KIND_PRODUCER,
    "CONSUMER": Span.SPAN_KIND_CONSUMER,
}
_STATUS = {"ERROR": Status.STATUS_CODE_ERROR, "OK": Status.STATUS_CODE_OK, "UNSET": Status.STATUS_CODE_UNSET}


def _hex_id(value: Any, width: int) -> bytes:
    """Decode a hex id, left-padding short ones (Zipkin allows 64-bit trace ids); b"" if not hex."""
    if not isinstance(value, str) or not value or len(value) > width:
        return b""
    try:
        return binascii.unhexlify(value.rjust(width, "0"))
    except (binascii.Error, ValueError):
        return b""


_MAX_MICROS = (2**64 - 1) // 1000  # OTLP times are uint64 nanoseconds


def _micros(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        if not math.isfinite(value) or value > _MAX_MICROS:
            raise MalformedRequest(f"Zipkin time or duration {value!r} is out of range (microseconds since the epoch)")
        return max(int(value), 0)
    return 0


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _endpoint_attributes(endpoint: Any, prefix: str) -> list[KeyValue]:
    if not isinstance(endpoint, dict):
        return []
    out = []
    ip = endpoint.get("ipv4") or endpoint.get("ipv6")
    if isinstance(ip, str) and ip:
        out.append(_kv(f"net.{prefix}.ip", ip))
    port = endpoint.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and port > 0:
        out.append(_kv(f"net.{prefix}.port", str(port)))
    return out


def _convert_span(doc: dict[str, Any], span: Span) -> None:
    span.trace_id = _hex_id(doc.get("traceId"), 32)
    span.span_id = _hex_id(doc.get("id"), 16)
    if doc.get("parentId") is not None:
        span.parent_span_id = _hex_id(doc.get("parentId"), 16)
    name = doc.get("name")
    span.name = name if isinstance(name, str) else ""
    kind = doc.get("kind")
    span.kind = _KINDS.get(kind, Span.SPAN_KIND_INTERNAL) if isinstance(kind, str) else Span.SPAN_KIND_INTERNAL
    start_us = _micros(doc.get("timestamp"))
    span.start_time_unix_nano = start_us * 1000
    span.end_time_unix_nano = (start_us + _micros(doc.get("duration"))) * 1000

    tags = doc.get("tags")
    tags = tags if isinstance(tags, dict) else {}
    status_code = tags.get("otel.status_code")
    if isinstance(status_code, str) and status_code.upper() in _STATUS:
        span.status.code = _STATUS[status_code.upper()]
        description = tags.get("otel.status_description")
        span.status.message = description if isinstance(description, str) else ""
    elif "error" in tags:
        span.status.code = Status.STATUS_CODE_ERROR
        message = tags["error"]
        span.status.message = message if isinstance(message, str) and message not in ("true", "") else ""
    for key, value in tags.items():
        if key in ("otel.status_code", "otel.status_description"):
            continue
        span.attributes.append(_kv(str(key), value if isinstance(value, str) else orjson.dumps(value).decode()))
    span.attributes.extend(_endpoint_attributes(doc.get("localEndpoint"), "host"))
    remote = doc.get("remoteEndpoint")
    if isinstance(remote, dict) and isinstance(remote.get("serviceName"), str) and remote["serviceName"]:
        span.attributes.append(_kv("peer.service", remote["serviceName"]))
    span.attributes.extend(_endpoint_attributes(remote, "peer"))

    annotations = doc.get("annotations")
    for annotation in annotations if isinstance(annotations, list) else []:
        if isinstance(annotation, dict) and isinstance(annotation.get("value"), str):
            event = span.events.add()
            event.time_unix_nano = _micros(annotation.get("timestamp")) * 1000
            event.name = annotation["value"]


def parse_zipkin_json(body: bytes) -> ExportTraceServiceRequest:
    """Decode a Zipkin v2 JSON span list into one OTLP request, or raise MalformedRequest."""
    doc = load_json(body)
    if not isinstance(doc, list):
        raise MalformedRequest("Zipkin v2 body must be a JSON array of spans")
    request = ExportTraceServiceRequest()
    by_service: dict[str, ResourceSpans] = {}
    for index, item in enumerate(doc):
        if not isinstance(item, dict):
            raise MalformedRequest(f"Zipkin span [{index}] is not a JSON object")
        local = item.get("localEndpoint")
        service = local.get("serviceName") if isinstance(local, dict) else None
        service = service if isinstance(service, str) and service else "unknown_service"
        resource_spans = by_service.get(service)
        if resource_spans is None:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.append(_kv("service.name", service))
            resource_spans.scope_spans.add()
            by_service[service] = resource_spans
        _convert_span(item, resource_spans.scope_spans[0].spans.add())
    return request
