"""OTLP/JSON → OTLP protobuf.

OTLP/JSON is the proto3 JSON mapping with one twist: trace and span ids are hex, not base64. Enums may
be numbers or names and 64-bit integers strings or numbers; unknown fields are ignored, as the OTLP
specification asks of receivers. An id that is not hex becomes an empty id, which validation then
rejects span by span (partial success) instead of failing the whole request.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.errors import MalformedRequest

_SPAN_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")
_LINK_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id")


def _hex_to_b64(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64encode(binascii.unhexlify(value)).decode("ascii")
    except (binascii.Error, ValueError):
        return ""


def _convert_ids(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj:
            obj[key] = _hex_to_b64(obj[key])


def _children(obj: Any, *keys: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return value
    return []


def load_json(body: bytes) -> Any:
    """Parse a JSON request body or raise MalformedRequest saying where it breaks."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc


def parse_otlp_json(body: bytes) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON ExportTraceServiceRequest or raise MalformedRequest with the reason."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise MalformedRequest("OTLP/JSON body must be an object with a 'resourceSpans' array")
    for resource_spans in _children(doc, "resourceSpans", "resource_spans"):
        for scope_spans in _children(resource_spans, "scopeSpans", "scope_spans"):
            for span in _children(scope_spans, "spans"):
                if not isinstance(span, dict):
                    continue
                _convert_ids(span, _SPAN_ID_KEYS)
                for link in _children(span, "links"):
                    if isinstance(link, dict):
                        _convert_ids(link, _LINK_ID_KEYS)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise MalformedRequest(f"body is not a valid OTLP/JSON ExportTraceServiceRequest: {exc}") from exc
    return request


def _b64_to_hex(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()


def to_otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The OTLP/JSON form of a request: lowerCamelCase, hex ids, enums as numbers, int64 as strings."""
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in doc.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _b64_to_hex(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", []):
                    _b64_to_hex(link, ("traceId", "spanId"))
    return doc


def response_json(rejected: int, message: str) -> bytes:
    """An ExportTraceServiceResponse in OTLP/JSON; partialSuccess only when something was rejected."""
    if not rejected and not message:
        return b"{}"
    return orjson.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})
