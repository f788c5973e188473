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

_ID_KEYS = frozenset({"traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"})


def _hex_to_b64(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64encode(binascii.unhexlify(value)).decode("ascii")
    except (binascii.Error, ValueError):
        return ""


def _convert_ids(value: Any) -> None:
    """Hex ids → the base64 the proto3 JSON mapping expects, wherever they are (spans, links, log
    records, metric exemplars)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _ID_KEYS:
                value[key] = _hex_to_b64(item)
            else:
                _convert_ids(item)
    elif isinstance(value, list):
        for item in value:
            _convert_ids(item)


def load_json(body: bytes) -> Any:
    """Parse a JSON request body or raise MalformedRequest saying where it breaks."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc


def parse_otlp_json_request(body: bytes, request_type: type[Any]) -> Any:
    """Decode any OTLP/JSON export request (traces, metrics, logs) or raise MalformedRequest."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise MalformedRequest(f"OTLP/JSON body must be an object, not {type(doc).__name__}")
    _convert_ids(doc)
    request = request_type()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise MalformedRequest(f"body is not a valid OTLP/JSON {request_type.__name__}: {exc}") from exc
    return request


def parse_otlp_json(body: bytes) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON ExportTraceServiceRequest or raise MalformedRequest with the reason."""
    request: ExportTraceServiceRequest = parse_otlp_json_request(body, ExportTraceServiceRequest)
    return request


def hex_ids(value: Any) -> Any:
    """base64 ids (proto3 JSON) → hex ids (OTLP/JSON), wherever they are; returns ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _ID_KEYS and isinstance(item, str):
                value[key] = base64.b64decode(item).hex()
            else:
                hex_ids(item)
    elif isinstance(value, list):
        for item in value:
            hex_ids(item)
    return value


def to_otlp_json(request: Any) -> dict[str, Any]:
    """Any export request in OTLP/JSON: lowerCamelCase, hex ids, enums as numbers, 64-bit ints as strings."""
    doc: dict[str, Any] = hex_ids(json_format.MessageToDict(request, use_integers_for_enums=True))
    return doc


def response_json(rejected: int, message: str) -> bytes:
    """An ExportTraceServiceResponse in OTLP/JSON; partialSuccess only when something was rejected."""
    if not rejected and not message:
        return b"{}"
    return orjson.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})
