from __future__ import annotations

import orjson
import pytest

from meshtrace.errors import MalformedRequest
from meshtrace.model.validate import validate
from meshtrace.model.zipkin import parse_zipkin_json

ISTIO_SPAN = {
    "traceId": "463ac35c9f6413ad48485a3953bb6124",
    "id": "a2fb4a1d1a96d312",
    "parentId": "0020000000000001",
    "name": "reviews.default.svc.cluster.local:9080/*",
    "kind": "CLIENT",
    "timestamp": 1_700_000_000_123_456,
    "duration": 20_500,
    "localEndpoint": {"serviceName": "productpage.default", "ipv4": "10.244.0.12"},
    "remoteEndpoint": {"serviceName": "reviews", "ipv4": "10.96.7.3", "port": 9080},
    "tags": {"http.status_code": "503", "response_flags": "UF", "error": "true", "istio.namespace": "default"},
    "annotations": [{"timestamp": 1_700_000_000_130_000, "value": "retry"}],
}


def test_istio_zipkin_span_becomes_otlp():
    request = parse_zipkin_json(orjson.dumps([ISTIO_SPAN]))
    resource_spans = request.resource_spans[0]
    assert resource_spans.resource.attributes[0].value.string_value == "productpage.default"
    span = resource_spans.scope_spans[0].spans[0]
    assert span.trace_id.hex() == ISTIO_SPAN["traceId"]
    assert span.span_id.hex() == ISTIO_SPAN["id"]
    assert span.parent_span_id.hex() == "0020000000000001"
    assert span.kind == 3
    assert span.start_time_unix_nano == 1_700_000_000_123_456_000
    assert span.end_time_unix_nano - span.start_time_unix_nano == 20_500_000
    assert span.status.code == 2
    attrs = {kv.key: kv.value.string_value for kv in span.attributes}
    assert attrs["response_flags"] == "UF"
    assert attrs["peer.service"] == "reviews"
    assert attrs["net.peer.ip"] == "10.96.7.3"
    assert attrs["net.peer.port"] == "9080"
    assert attrs["net.host.ip"] == "10.244.0.12"
    assert [(e.name, e.time_unix_nano) for e in span.events] == [("retry", 1_700_000_000_130_000_000)]


def test_64_bit_trace_ids_are_left_padded():
    span = {**ISTIO_SPAN, "traceId": "48485a3953bb6124"}
    request = parse_zipkin_json(orjson.dumps([span]))
    assert request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex() == "0" * 16 + "48485a3953bb6124"


def test_spans_group_by_local_service():
    other = {**ISTIO_SPAN, "id": "b2fb4a1d1a96d312", "localEndpoint": {"serviceName": "reviews.default"}}
    request = parse_zipkin_json(orjson.dumps([ISTIO_SPAN, other, {**ISTIO_SPAN, "id": "c2fb4a1d1a96d312"}]))
    assert [len(rs.scope_spans[0].spans) for rs in request.resource_spans] == [2, 1]


def test_bad_fields_reject_only_their_span():
    bad = {**ISTIO_SPAN, "id": "zz", "timestamp": "soon"}
    result = validate(parse_zipkin_json(orjson.dumps([ISTIO_SPAN, bad])))
    assert (result.accepted, result.rejected) == (1, 1)


@pytest.mark.parametrize("raw", [b"{}", b"not json", b"[1]"])
def test_malformed_body(raw):
    with pytest.raises(MalformedRequest):
        parse_zipkin_json(raw)


def test_times_out_of_range_are_a_clear_error() -> None:
    import pytest

    from meshtrace.errors import MalformedRequest
    from meshtrace.model.zipkin import parse_zipkin_json

    body = b'[{"traceId":"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1","id":"1111111111111111","timestamp":1e25}]'
    with pytest.raises(MalformedRequest, match="out of range"):
        parse_zipkin_json(body)
