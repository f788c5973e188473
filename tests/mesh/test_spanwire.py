"""The proxy writes OTLP bytes by hand for speed; the protobuf library must read back exactly what it meant."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshtrace.mesh.proxy import spanwire

texts = st.text(max_size=300)
ids8 = st.binary(min_size=8, max_size=8)


@given(
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=ids8,
    parent=st.one_of(st.just(b""), ids8),
    name=texts,
    kind=st.sampled_from([spanwire.SERVER, spanwire.CLIENT]),
    start=st.integers(0, 2**64 - 1),
    end=st.integers(0, 2**64 - 1),
    attributes=st.lists(st.tuples(st.text(min_size=1, max_size=40), texts), max_size=25),
    status=st.sampled_from([spanwire.STATUS_UNSET, spanwire.STATUS_ERROR]),
    state=st.text(alphabet="abcdefghijklmnop=,0123456789", max_size=80),
    flags=st.integers(0, 2**32 - 1),
)
def test_span_bytes_parse_back_to_the_same_span(
    trace_id, span_id, parent, name, kind, start, end, attributes, status, state, flags
):
    encoded = spanwire.encode_span(
        trace_id,
        span_id,
        parent,
        spanwire.span_name(name),
        kind,
        start,
        end,
        spanwire.string_attributes(attributes),
        status,
        state,
        flags,
    )
    span = Span.FromString(encoded)
    assert span.trace_id == trace_id
    assert span.span_id == span_id
    assert span.parent_span_id == parent
    assert span.name == name
    assert span.kind == kind
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, end)
    assert [(kv.key, kv.value.string_value) for kv in span.attributes] == attributes
    assert all(kv.value.WhichOneof("value") == "string_value" for kv in span.attributes)
    assert span.status.code == status
    assert span.trace_state == state
    assert span.flags == flags


@given(
    resource=st.lists(st.tuples(st.text(min_size=1, max_size=30), texts), max_size=10),
    names=st.lists(texts, min_size=1, max_size=20),
)
def test_export_request_has_one_resource_and_one_scope_without_name(resource, names):
    spans = [
        spanwire.encode_span(b"\x01" * 16, bytes([i % 255 + 1]) * 8, b"", spanwire.span_name(n), 2, 1, 2, b"", 0)
        for i, n in enumerate(names)
    ]
    request = ExportTraceServiceRequest.FromString(spanwire.export_request(spanwire.resource(resource), spans))
    assert len(request.resource_spans) == 1
    resource_spans = request.resource_spans[0]
    assert [(kv.key, kv.value.string_value) for kv in resource_spans.resource.attributes] == resource
    assert len(resource_spans.scope_spans) == 1
    scope_spans = resource_spans.scope_spans[0]
    assert scope_spans.scope.name == ""
    assert scope_spans.scope.version == ""
    assert [s.name for s in scope_spans.spans] == names


def test_a_large_export_request_matches_protobufs_own_encoding():
    """Lengths of several varint bytes at every level: 1,000 spans, one of them over 16 KiB."""
    names = [f"span-{i}" for i in range(999)] + ["x" * 20_000]
    spans = [
        spanwire.encode_span(b"\x01" * 16, i.to_bytes(8, "big"), b"", spanwire.span_name(n), 2, 1, 2, b"", 0)
        for i, n in enumerate(names, 1)
    ]
    body = spanwire.export_request(spanwire.resource([("service.name", "s")]), spans)
    request = ExportTraceServiceRequest.FromString(body)
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans] == names
    assert request.SerializeToString() == body


def test_varint_matches_protobuf_for_long_values():
    value = "x" * 70_000  # a length that needs three varint bytes
    span = Span.FromString(
        spanwire.encode_span(b"\x01" * 16, b"\x02" * 8, b"", spanwire.span_name(value), 2, 0, 0, b"", 0)
    )
    assert span.name == value
