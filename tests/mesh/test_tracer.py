"""Envoy's tracing decisions, one function at a time: request-id reasons, context parsing, sampling."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshtrace.mesh.proxy import spanwire
from meshtrace.mesh.proxy.config import Cluster, CustomTag, Node, Provider, TracingSpec
from meshtrace.mesh.proxy.records import encode_entry
from meshtrace.mesh.proxy.tracer import (
    CLIENT_FORCED,
    FORCED,
    NOT_TRACED,
    SAMPLED,
    Finished,
    SideTracer,
    decide,
    new_request_id,
    parse_b3,
    parse_traceparent,
    request_id_bucket,
    trace_reason,
)

NODE = Node(
    "sidecar~10.0.0.1~p-1.default~default.svc.cluster.local",
    "sidecar",
    "p-1",
    "default",
    "10.0.0.1",
    "productpage.default",
    "productpage",
    "v1",
)
PROVIDER = Provider("otel", "opentelemetry", "c.o.svc.cluster.local", 4317, ("127.0.0.1:4317",))


def tracer(sampling: float = 100.0, sink: list | None = None, **spec: object) -> SideTracer:
    out = sink if sink is not None else []
    return SideTracer(TracingSpec(PROVIDER, sampling, **spec), NODE, out.append)  # type: ignore[arg-type]


def _decoded(entry: bytes) -> Any:
    """The span of a ``ScopeSpans.spans`` entry (its field and length in front)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

    scope = ScopeSpans.FromString(entry)
    assert [field.name for field, _ in scope.ListFields()] == ["spans"]
    assert len(scope.spans) == 1
    return scope.spans[0]


def test_new_request_ids_are_uuid4_and_not_yet_traced():
    ids = [new_request_id() for _ in range(1000)]  # many fills of the pool they are cut from
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert str(uuid.UUID(rid)) == rid  # canonical: lower case, dashes in place
        assert uuid.UUID(rid).version == 4
        assert uuid.UUID(rid).variant == uuid.RFC_4122
        assert trace_reason(rid) == NOT_TRACED
    assert {rid[19] for rid in ids} == set("89ab")
    assert len({rid[:8] for rid in ids}) == len(ids)  # the sampling bucket's digits are random


def test_a_forked_child_does_not_repeat_its_parents_ids():
    t = tracer()

    def draw() -> bytes:
        span = t.start({}, new_request_id(), spanwire.SERVER, "x")
        assert span is not None
        return new_request_id().encode() + span.span_id + span.trace_id

    draw()  # the pools hold ids the child must not reuse
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(writer, draw())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 200)
    os.close(reader)
    os.waitpid(pid, 0)
    assert len(child) == 36 + 16 + 32
    assert child != draw()


def test_decision_is_written_once_into_the_request_id():
    rid = "00000001-0000-4000-8000-000000000000"  # bucket 1
    assert request_id_bucket(rid) == 1
    assert trace_reason(decide(rid, 2, True, False, False)) == SAMPLED
    assert trace_reason(decide(rid, 1, True, False, False)) == NOT_TRACED
    assert trace_reason(decide(rid, 0, True, True, False)) == CLIENT_FORCED
    assert trace_reason(decide(rid, 0, True, False, True)) == FORCED
    decided = decide(rid, 10000, True, False, False)
    # Later proxies do not decide again, whatever their own rate.
    assert decide(decided, 0, True, False, False) == decided
    assert decide("not-a-uuid", 10000, True, False, False) == "not-a-uuid"


def test_sampling_by_request_id_tracks_the_percentage():
    threshold = 2500
    ids = [str(uuid.uuid4()) for _ in range(4000)]
    sampled = sum(trace_reason(decide(r, threshold, True, False, False)) == SAMPLED for r in ids)
    assert 850 <= sampled <= 1150  # 25% ± 4.5 sd


@pytest.mark.parametrize("sampling", [0.0, 30.0, 100.0])
@pytest.mark.parametrize("headers", [{}, {b"x-client-trace-id": b"c1"}, {b"x-envoy-force-trace": b"true"}])
@pytest.mark.parametrize("use_request_id", [True, False])
def test_a_new_request_id_carries_the_decision_sample_would_write(sampling, headers, use_request_id):
    t = tracer(sampling=sampling, use_request_id=use_request_id)
    count = 2000
    fresh = [t.fresh_request_id(headers) for _ in range(count)]
    assert len(set(fresh)) == count
    assert all(str(uuid.UUID(rid)) == rid for rid in fresh)
    made = Counter(trace_reason(rid) for rid in fresh)
    expected = Counter(trace_reason(t.sample(new_request_id(), headers)) for _ in range(count))
    if sampling == 30.0 and not headers and use_request_id:
        assert set(made) == set(expected) == {SAMPLED, NOT_TRACED}
        assert abs(made[SAMPLED] - 600) < 4.5 * 20.5  # 30% of 2000 ± 4.5 sd
    else:
        assert made == expected
        assert len(made) == 1


TRACE, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        *(
            (f"{version}-{trace}-{parent}-{flags}{later}".encode(), (TRACE, PARENT, sampled))
            for version, trace, parent, flags, later, sampled in [
                ("00", TRACE, PARENT, "01", "", True),
                ("00", TRACE, PARENT, "00", "", False),
                ("00", TRACE.upper(), PARENT.upper(), "01", "", True),
                ("00", TRACE, PARENT, "03", "", True),
                ("00", TRACE, PARENT, "0a", "", False),
                ("00", TRACE, PARENT, "0B", "", True),
                ("01", TRACE, PARENT, "01", "-later", True),  # a later version may append fields
            ]
        ),
        (b"00-0af7651916cd43dd-448eb211c80319c-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g", None),
        (b"00-0af7651916cd43dd8448eb211c80319\xe9-b7ad6b7169203331-01", None),
        (b"00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c8031 c-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333 -01", None),
        (b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
        (b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None),
        (b"00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c8031Hc-b7ad6b7169203331-01", None),  # the parser's own class letters
        (b"00-0af7651916cd43dd8448eb211c8031hc-b7ad6b7169203331-01", None),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0G", None),
        (b"garbage", None),
    ],
)
def test_traceparent(header, expected):
    parsed = parse_traceparent(header)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed[0].decode(), parsed[1].decode(), parsed[2]) == expected


def test_b3_multi_and_single_headers():
    multi = parse_b3({b"x-b3-traceid": b"463ac35c9f6413ad", b"x-b3-spanid": b"a2fb4a1d1a96d312", b"x-b3-sampled": b"1"})
    assert multi is not None
    assert multi[0] == b"0000000000000000463ac35c9f6413ad"
    assert multi[2] is True
    single = parse_b3({b"b3": b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"})
    assert single is not None
    assert single[1] == b"e457b5a2e4d86bd1"
    assert single[2] is False
    assert parse_b3({b"b3": b"1"}) is None


def test_child_of_incoming_context_inherits_the_sampled_flag_not_the_local_rate():
    t = tracer(sampling=0.0)
    headers = {b"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    span = t.start(headers, t.sample(new_request_id(), headers), spanwire.SERVER, "x")
    assert span is not None
    assert span.sampled
    assert span.parent_id == b"b7ad6b7169203331"
    injected = t.inject(span).decode()
    assert injected.startswith(f"traceparent: 00-0af7651916cd43dd8448eb211c80319c-{span.span_id.decode()}-01")


def test_invalid_traceparent_gives_no_span():
    t = tracer()
    assert t.start({b"traceparent": b"00-zz"}, new_request_id(), spanwire.SERVER, "x") is None


def test_finished_span_has_envoys_tags_in_order_and_statuses():
    out: list[bytes] = []
    t = tracer(sink=out, custom_tags=(CustomTag("lit", "literal", "v"), CustomTag("user", "header", "x-user", "anon")))
    rid = "00000001-0000-4000-8000-000000000000"
    rid = t.sample(rid, {})
    span = t.start({}, rid, spanwire.CLIENT, "reviews.default.svc.cluster.local:9080/*")
    assert span is not None
    cluster = Cluster("outbound|9080||reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local", 9080, ())
    done = Finished(
        rid,
        "http://reviews:9080/reviews/0",
        "GET",
        "curl/8",
        "10.0.0.1",
        0,
        441,
        404,
        "-",
        cluster,
        "10.0.0.9:9080",
        headers={b"x-user": b"jason"},
    )
    t.finish(span, done)
    decoded = _decoded(encode_entry(out[0]))
    keys = [kv.key for kv in decoded.attributes]
    assert keys[:2] == ["node_id", "zone"]
    assert keys.index("guid:x-request-id") < keys.index("http.url") < keys.index("user_agent") < keys.index("component")
    attrs = {kv.key: kv.value.string_value for kv in decoded.attributes}
    assert attrs["upstream_cluster.name"] == "outbound|9080||reviews.default.svc.cluster.local;"
    assert attrs["http.status_code"] == "404"
    assert "error" not in attrs
    assert attrs["istio.canonical_service"] == "productpage"
    assert attrs["lit"] == "v"
    assert attrs["user"] == "jason"
    assert decoded.status.code == spanwire.STATUS_ERROR  # 4xx on a CLIENT span
    # Istio's and custom tags come sorted by name after Envoy's.
    tail = keys[keys.index("response_flags") + 1 :]
    tail = [k for k in tail if k != "upstream_address"]
    assert tail == sorted(tail)


def test_unsampled_and_unreported_spans_are_not_exported():
    out: list[bytes] = []
    t = tracer(sampling=0.0, sink=out)
    rid = t.sample(new_request_id(), {})
    span = t.start({}, rid, spanwire.SERVER, "x")
    assert span is not None
    assert not span.sampled
    t.finish(span, Finished(rid, "", "GET", "-", "", 0, 0, 200, "-", None, ""))
    quiet = tracer(sink=out, disable_span_reporting=True)
    rid = quiet.sample(new_request_id(), {})
    span = quiet.start({}, rid, spanwire.SERVER, "x")
    assert span is not None
    assert span.sampled
    quiet.finish(span, Finished(rid, "", "GET", "-", "", 0, 0, 200, "-", None, ""))
    assert out == []


def test_spans_sharing_tags_keep_their_own_fresh_ones():
    """The export process encodes the tags that repeat from span to span once per group of values; each span
    still carries its own request id, client trace id, status and error tag, upstream spans their own set."""
    out: list[tuple] = []
    t = tracer(sink=out)
    cluster = Cluster("outbound|9080||ratings.default.svc.cluster.local", "ratings.default.svc.cluster.local", 9080, ())
    sent = []
    for n, (status, client) in enumerate([(200, ""), (503, "c-1"), (200, "c-2"), (200, "")]):
        rid = t.fresh_request_id({})
        span = t.start({}, rid, spanwire.SERVER, "x")
        assert span is not None
        done = Finished(rid, "http://r:9080/ratings/0", "GET", "curl/8", "10.0.0.1:5000", 0, 48, status, "-", cluster,
                        "10.0.0.9:9080", client)  # fmt: skip
        if n == 3:
            t.finish_upstream(span, done)
        else:
            t.finish(span, done)
        sent.append((rid, status, client))
    decoded = [_decoded(encode_entry(record)) for record in out * 2]  # twice: found in the cache
    for span, (rid, status, client) in zip(decoded, sent * 2, strict=True):
        attrs = {kv.key: kv.value.string_value for kv in span.attributes}
        assert attrs["http.status_code"] == str(status)
        assert ("error" in attrs) == (status >= 500)
        assert attrs["upstream_cluster"] == cluster.name
        assert attrs["istio.canonical_service"] == "productpage"
        if rid == sent[3][0]:  # the upstream span: none of the downstream request's tags
            assert "guid:x-request-id" not in attrs
            assert "http.url" not in attrs
            assert attrs["peer.address"] == attrs["upstream_address"] == "10.0.0.9:9080"
            continue
        assert attrs["guid:x-request-id"] == rid
        assert attrs.get("guid:x-client-trace-id", "") == client
        assert attrs["http.url"] == "http://r:9080/ratings/0"
        assert attrs["peer.address"] == "10.0.0.1:5000"
        assert attrs["response_size"] == "48"
    assert len({bytes(s.span_id) for s in decoded}) == 4


@pytest.mark.parametrize("bits64", [False, True])
def test_a_zipkin_trace_started_here_has_a_64_or_128_bit_id_as_the_provider_says(bits64: bool) -> None:
    provider = Provider("zipkin", "zipkin", "z.o.svc.cluster.local", 9411, ("127.0.0.1:9411",), trace_id_64bit=bits64)
    out: list[object] = []
    t = SideTracer(TracingSpec(provider, 100.0), NODE, out.append)
    ids = set()
    for _ in range(200):
        span = t.start({}, t.fresh_request_id({}), spanwire.SERVER, "svc:9080/*")
        assert span is not None
        assert len(span.trace_id) == 32
        head = t.inject(span).decode()
        sent = head.split("x-b3-traceid: ", 1)[1].split("\r\n", 1)[0]
        if bits64:
            assert span.trace_id[:16] == b"0" * 16  # kept as 128 bits, like a padded B3 id
            assert len(sent) == 16
            assert sent == span.trace_id[16:].decode()
        else:
            assert span.trace_id[:16] != b"0" * 16
            assert sent == span.trace_id.decode()
        assert span.trace_id[16:] != b"0" * 16
        ids.add(span.trace_id)
    assert len(ids) == 200


@settings(max_examples=150, deadline=None)
@given(
    request_id=st.text(max_size=40),
    client_trace_id=st.text(max_size=20),
    parent=st.one_of(st.none(), st.binary(min_size=8, max_size=8).filter(any)),
    state=st.text(alphabet="abcdefghijklmnop=,0123456789", max_size=80),
    status=st.sampled_from([0, 200, 404, 503]),
    url=st.text(max_size=60),
    upstream=st.booleans(),
)
@example("é" * 36, "", None, "", 200, "/", False)  # 36 characters, 72 bytes: the long way
@example(str(uuid.uuid4()), "c", b"\x01" * 8, "a=1", 503, "/", False)  # the shortcut, next to every other tag
def test_each_span_the_export_process_encodes_reads_back_as_the_tracer_finished_it(
    request_id: str, client_trace_id: str, parent: bytes | None, state: str, status: int, url: str, upstream: bool
) -> None:
    """Request ids of 36 characters take a shortcut (their tag's head is known), unless they are not ASCII;
    ids, trace state and times go in with their fields' tags; the entry is one ``spans`` field."""
    out: list[tuple] = []
    t = tracer(sink=out)
    headers: dict[bytes, bytes] = {}
    trace_id = os.urandom(16)
    if parent is not None:
        headers[b"traceparent"] = b"00-%s-%s-01" % (trace_id.hex().encode(), parent.hex().encode())
        headers[b"tracestate"] = state.encode()
    span = t.start(headers, t.fresh_request_id({}), spanwire.CLIENT, "svc:9080/*")  # sampled; tagged below
    assert span is not None
    cluster = Cluster("outbound|9080||svc.default.svc.cluster.local", "svc.default.svc.cluster.local", 9080, ())
    peer, upstream_address = "10.0.0.2", "10.0.0.9:9080"
    done = Finished(request_id, url, "GET", "t", peer, 0, 7, status, "-", cluster, upstream_address, client_trace_id)
    (t.finish_upstream if upstream else t.finish)(span, done)
    decoded = _decoded(encode_entry(out[0]))
    assert decoded.span_id == bytes.fromhex(span.span_id.decode())
    if parent is not None:
        assert (decoded.trace_id, decoded.parent_span_id, decoded.trace_state) == (trace_id, parent, state)
    else:
        assert decoded.parent_span_id == b""
        assert decoded.trace_state == ""
    assert decoded.start_time_unix_nano == span.start_ns <= decoded.end_time_unix_nano
    assert decoded.kind == spanwire.CLIENT
    assert decoded.status.code == (spanwire.STATUS_ERROR if status == 0 or status >= 400 else spanwire.STATUS_UNSET)
    attrs = {kv.key: kv.value.string_value for kv in decoded.attributes}
    assert attrs["http.status_code"] == str(status)
    if upstream:
        assert "guid:x-request-id" not in attrs
        assert "http.url" not in attrs
    else:
        assert attrs.get("guid:x-request-id", "") == request_id
        assert attrs.get("guid:x-client-trace-id", "") == client_trace_id
        assert attrs["http.url"] == url
