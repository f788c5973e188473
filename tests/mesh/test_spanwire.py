"""The proxy writes OTLP bytes by hand for speed; the protobuf library must read back exactly what it meant."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshtrace.mesh.proxy import spanwire

texts = st.text(max_size=300)


def _entry(span: Span) -> bytes:
    """A span as an entry of ``ScopeSpans.spans``, the way ``records.encode_entry`` writes them."""
    message = span.SerializeToString()
    return b"\x12" + spanwire.length(len(message)) + message


@given(name=texts, attributes=st.lists(st.tuples(st.text(min_size=1, max_size=40), texts), max_size=25))
def test_names_and_string_attributes_parse_back_as_written(name, attributes):
    span = Span.FromString(spanwire.span_name(name) + spanwire.string_attributes(attributes))
    assert span.name == name
    assert [(kv.key, kv.value.string_value) for kv in span.attributes] == attributes
    assert all(kv.value.WhichOneof("value") == "string_value" for kv in span.attributes)


@given(
    resource=st.lists(st.tuples(st.text(min_size=1, max_size=30), texts), max_size=10),
    names=st.lists(texts, min_size=1, max_size=20),
)
def test_export_request_has_one_resource_and_one_scope_without_name(resource, names):
    entries = [
        _entry(Span(trace_id=b"\x01" * 16, span_id=bytes([i % 255 + 1]) * 8, name=n)) for i, n in enumerate(names)
    ]
    request = ExportTraceServiceRequest.FromString(spanwire.export_entries(spanwire.resource(resource), entries))
    assert len(request.resource_spans) == 1
    resource_spans = request.resource_spans[0]
    assert [(kv.key, kv.value.string_value) for kv in resource_spans.resource.attributes] == resource
    assert len(resource_spans.scope_spans) == 1
    scope_spans = resource_spans.scope_spans[0]
    assert scope_spans.scope.name == ""
    assert scope_spans.scope.version == ""
    assert [s.name for s in scope_spans.spans] == names


def test_a_large_export_request_matches_protobufs_own_encoding():
    """Lengths of several varint bytes at every level: 1,000 spans, one of them over 16 KiB, and entries
    that hold one span or several side by side."""
    names = [f"span-{i}" for i in range(999)] + ["x" * 20_000]
    entries = [
        _entry(Span(trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"), name=n)) for i, n in enumerate(names, 1)
    ]
    entries = [b"".join(entries[:10]), *entries[10:]]
    body = spanwire.export_entries(spanwire.resource([("service.name", "s")]), entries)
    request = ExportTraceServiceRequest.FromString(body)
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans] == names
    assert request.SerializeToString() == body


def test_varint_matches_protobuf_for_long_values():
    value = "x" * 70_000  # a length that needs three varint bytes
    assert Span.FromString(spanwire.span_name(value)).name == value
