from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.errors import MalformedRequest
from meshtrace.model.validate import parse_request, validate, validate_bytes


def request_with(*spans: dict) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for fields in spans:
        span = scope.spans.add()
        span.trace_id = fields.get("trace_id", b"\x01" * 16)
        span.span_id = fields.get("span_id", b"\x02" * 8)
        span.parent_span_id = fields.get("parent_span_id", b"")
        span.name = fields.get("name", "op")
        span.start_time_unix_nano = fields.get("start", 1_000)
        span.end_time_unix_nano = fields.get("end", 2_000)
    return request


def test_valid_request_is_passed_through_byte_for_byte():
    raw = request_with({}, {"span_id": b"\x03" * 8}).SerializeToString()
    result = validate_bytes(raw)
    assert (result.accepted, result.rejected, result.message) == (2, 0, "")
    assert result.payload is raw


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"trace_id": b"\x01" * 15}, "invalid_trace_id"),
        ({"trace_id": bytes(16)}, "invalid_trace_id"),
        ({"trace_id": b""}, "invalid_trace_id"),
        ({"span_id": b"\x01" * 9}, "invalid_span_id"),
        ({"span_id": bytes(8)}, "invalid_span_id"),
        ({"parent_span_id": b"\x01" * 4}, "invalid_parent_span_id"),
        ({"start": 0}, "missing_start_time"),
        ({"start": 5_000, "end": 4_999}, "end_before_start"),
    ],
)
def test_each_invalid_span_is_rejected_alone(fields, reason):
    request = request_with({"name": "good-1"}, {"name": "bad", **fields}, {"name": "good-2"})
    result = validate(request)
    assert (result.accepted, result.rejected) == (2, 1)
    assert dict(result.reasons) == {reason: 1}
    assert "rejected 1 of 3 spans" in result.message
    assert "name='bad'" in result.message
    kept = parse_request(result.payload)
    assert [s.name for s in kept.resource_spans[0].scope_spans[0].spans] == ["good-1", "good-2"]


def test_all_invalid_leaves_nothing_to_store():
    result = validate(request_with({"trace_id": b"x"}, {"span_id": b""}))
    assert (result.accepted, result.rejected, result.payload) == (0, 2, b"")
    assert "invalid_trace_id" in result.reasons
    assert "invalid_span_id" in result.reasons


def test_spans_older_than_retention_are_refused():
    result = validate(request_with({"start": 10, "end": 20}, {"start": 5_000, "end": 6_000}), min_start_ns=1_000)
    assert (result.accepted, result.rejected, dict(result.reasons)) == (1, 1, {"too_old": 1})


def test_end_equal_to_start_is_valid():
    assert validate(request_with({"start": 7, "end": 7})).accepted == 1


def test_malformed_protobuf_names_the_problem():
    with pytest.raises(MalformedRequest, match="not a valid OTLP ExportTraceServiceRequest"):
        validate_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")


def test_top_level_unknown_fields_are_stripped():
    # Field 1001 is where the store puts the tenant; a sender must not be able to set it.
    raw = request_with({}).SerializeToString() + b"\xca\x3e\x04evil"
    result = validate_bytes(raw)
    assert result.accepted == 1
    assert b"evil" not in result.payload
