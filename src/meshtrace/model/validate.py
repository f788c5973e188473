"""Span-by-span validation of an OTLP export request: what OTLP partial success reports.

The one place that decides whether a span is stored. Invalid spans are removed from the request
before it is written, so the store only ever sees valid spans and the counts acknowledged to the
sender are exactly what was stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshtrace.errors import MalformedRequest

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)

# reason label -> what the sender reads in partial_success.error_message
REASONS: dict[str, str] = {
    "invalid_trace_id": "trace_id must be 16 bytes and not all zero",
    "invalid_span_id": "span_id must be 8 bytes and not all zero",
    "invalid_parent_span_id": "parent_span_id must be empty or 8 bytes",
    "missing_start_time": "start_time_unix_nano is missing",
    "end_before_start": "end_time_unix_nano is before start_time_unix_nano",
    "too_old": "start_time_unix_nano is older than the retention period (the store would drop it at once)",
}


@dataclass(slots=True)
class Validated:
    """A request with its invalid spans removed, and what was removed."""

    request: ExportTraceServiceRequest
    payload: bytes
    accepted: int
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The partial-success message: counts per reason with the first offending span of each."""
        if not self.rejected:
            return ""
        parts = [
            f"{n} × {REASONS[reason]} (first: {self.examples[reason]})" for reason, n in self.reasons.most_common()
        ]
        return f"rejected {self.rejected} of {self.rejected + self.accepted} spans: " + "; ".join(parts)


def parse_request(raw: bytes) -> ExportTraceServiceRequest:
    """Decode a binary ExportTraceServiceRequest or raise MalformedRequest saying why."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}") from exc
    return request


def _span_problem(span: Span, min_start_ns: int) -> str | None:
    trace_id = span.trace_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        return "invalid_trace_id"
    span_id = span.span_id
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        return "invalid_span_id"
    if len(span.parent_span_id) not in (0, 8):
        return "invalid_parent_span_id"
    start = span.start_time_unix_nano
    if start == 0:
        return "missing_start_time"
    if span.end_time_unix_nano < start:
        return "end_before_start"
    if start < min_start_ns:
        return "too_old"
    return None


def validate(request: ExportTraceServiceRequest, raw: bytes | None = None, *, min_start_ns: int = 0) -> Validated:
    """Check every span; remove the invalid ones. ``raw`` is reused as the payload when nothing is removed.

    ``min_start_ns``: spans starting earlier are refused (they are outside the retention period).
    """
    accepted = 0
    bad: list[tuple[int, int, int, str]] = []
    for ri, resource_spans in enumerate(request.resource_spans):
        for si, scope_spans in enumerate(resource_spans.scope_spans):
            for pi, span in enumerate(scope_spans.spans):
                problem = _span_problem(span, min_start_ns)
                if problem is None:
                    accepted += 1
                else:
                    bad.append((ri, si, pi, problem))
    if len(UnknownFieldSet(request)):
        # The store appends its own top-level fields (the tenant) to each payload; a sender's unknown
        # top-level fields must not collide with them.
        request.DiscardUnknownFields()
        raw = None
    if not bad:
        return Validated(request, raw if raw is not None else request.SerializeToString(), accepted)

    result = Validated(request, b"", accepted, rejected=len(bad))
    for ri, si, pi, problem in bad:
        result.reasons[problem] += 1
        if problem not in result.examples:
            span = request.resource_spans[ri].scope_spans[si].spans[pi]
            result.examples[problem] = (
                f"resource_spans[{ri}].scope_spans[{si}].spans[{pi}] name={span.name!r} "
                f"trace_id={span.trace_id.hex() or '(empty)'} span_id={span.span_id.hex() or '(empty)'}"
            )
    for ri, si, pi, _ in reversed(bad):
        del request.resource_spans[ri].scope_spans[si].spans[pi]
    result.payload = request.SerializeToString() if accepted else b""
    return result


def validate_bytes(raw: bytes, *, min_start_ns: int = 0) -> Validated:
    """Parse and validate a binary request (the gRPC and OTLP/HTTP protobuf paths)."""
    return validate(parse_request(raw), raw, min_start_ns=min_start_ns)
