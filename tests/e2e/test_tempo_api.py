"""The Tempo-compatible API under /tempo, as Grafana's Tempo data source and Kiali call it."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from meshtrace.testing.bookinfo import BookinfoTrace, bookinfo_trace, traffic

from .conftest import TOKENS, ServerProcess, post_traces, token_args, wait_until

S = 1_000_000_000
KIALI_SELECT = (
    "select(status, .service_name, .node_id, .component, .upstream_cluster, .http.method, .response_flags, "
    "resource.hostname, name)"
)


def _trace_by_id_response() -> Any:
    """tempopb.TraceByIDResponse, declared here from its field numbers (Trace is wire-identical to
    OTLP TracesData), so the test decodes what Grafana decodes without trusting our encoder."""
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("tempotest.TraceByIDResponse"))
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tempotest/tempo.proto", package="tempotest", dependency=["opentelemetry/proto/trace/v1/trace.proto"]
    )
    msg = fdp.message_type.add(name="TraceByIDResponse")
    field = descriptor_pb2.FieldDescriptorProto
    msg.field.add(
        name="trace",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=".opentelemetry.proto.trace.v1.TracesData",
    )
    msg.field.add(name="status", number=3, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    msg.field.add(name="message", number=4, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tempotest.TraceByIDResponse"))


@dataclass
class Sent:
    traces: list[BookinfoTrace]
    failing_ratings: BookinfoTrace
    start_s: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("tempo"), *token_args()).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sent(server: ServerProcess) -> Sent:
    start = time.time_ns() - 5 * 60 * S
    traces = list(traffic(21, start, 60, interval_ns=S))
    failing = bookinfo_trace(random.Random(5), start + 70 * S, reviews_version="v3", ratings_status=503)
    traces.append(failing)
    post_traces(server, traces)
    post_traces(server, list(traffic(22, start, 5, interval_ns=S)), TOKENS["beta"])
    total = sum(len(t.spans) for t in traces)
    wait_until(lambda: server.api().get("/meshtrace/v1/stats").json()["spans"] == total, timeout=30)
    # The span table commits before the tables fed from it (the trace-id lookup among them).
    wait_until(lambda: server.api().get(f"/meshtrace/v1/traces/{failing.hex_id}").status_code == 200)
    return Sent(traces, failing, start // S - 60)


def _search(server: ServerProcess, sent: Sent, **params: Any) -> dict[str, Any]:
    response = server.api().get(
        "/tempo/api/search", params={"start": sent.start_s, "end": int(time.time()) + 60, **params}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_health_routes_grafana_uses(server: ServerProcess) -> None:
    api = server.api()
    assert api.get("/tempo/api/echo").text == "echo"
    assert api.get("/tempo/ready").status_code == 200
    info = api.get("/tempo/api/status/buildinfo").json()
    assert info["version"] == "2.1.0"
    assert set(info) >= {"version", "revision", "branch", "buildDate", "buildUser", "goVersion"}


def test_trace_by_id_v2_is_wrapped_for_grafana(server: ServerProcess, sent: Sent) -> None:
    trace = sent.failing_ratings
    response = server.api().get(
        f"/tempo/api/v2/traces/{trace.hex_id}",
        headers={"Accept": "application/protobuf"},
        params={"start": sent.start_s, "end": int(time.time()) + 60},
    )
    assert response.status_code == 200
    decoded = _trace_by_id_response().FromString(response.content)
    spans = [s for rs in decoded.trace.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(s.span_id for s in spans) == sorted(p.span.span_id for p in trace.spans)
    services = {
        a.value.string_value
        for rs in decoded.trace.resource_spans
        for a in rs.resource.attributes
        if a.key == "service.name"
    }
    assert "ratings.default" in services
    as_json = server.api().get(f"/tempo/api/v2/traces/{trace.hex_id}").json()
    assert len(as_json["trace"]["resourceSpans"]) == len(decoded.trace.resource_spans)


def test_trace_by_id_v1_protobuf_and_json_batches(server: ServerProcess, sent: Sent) -> None:
    trace = sent.failing_ratings
    raw = server.api().get(f"/tempo/api/traces/{trace.hex_id}", headers={"Accept": "application/protobuf"})
    data = TracesData.FromString(raw.content)
    assert sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans) == len(trace.spans)
    body = server.api().get(f"/tempo/api/traces/{trace.hex_id}").json()
    span = body["batches"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == base64.b64encode(trace.trace_id).decode()  # Kiali reads base64 ids here
    assert span["kind"].startswith("SPAN_KIND_")


def test_missing_trace_is_404_so_grafana_falls_back(server: ServerProcess, sent: Sent) -> None:
    for path in ("/tempo/api/v2/traces/", "/tempo/api/traces/"):
        assert server.api().get(path + "0" * 31 + "1").status_code == 404
    # Another tenant's trace does not exist for this one.
    assert server.api(TOKENS["beta"]).get(f"/tempo/api/traces/{sent.failing_ratings.hex_id}").status_code == 404


def test_search_grafana_builder_shape(server: ServerProcess, sent: Sent) -> None:
    q = '{resource.service.name="ratings.default" && status=error && duration>1ms}'
    body = _search(server, sent, q=q, limit=20, spss=3)
    ids = [t["traceID"] for t in body["traces"]]
    failing = {
        t.hex_id
        for t in sent.traces
        if any(p.service == "ratings.default" and p.span.status.code == 2 for p in t.spans)
    }
    assert set(ids) == failing
    assert sent.failing_ratings.hex_id in ids
    hit = next(t for t in body["traces"] if t["traceID"] == sent.failing_ratings.hex_id)
    assert hit["rootServiceName"] == "istio-ingressgateway.istio-system"
    assert hit["rootTraceName"] == "productpage.default.svc.cluster.local:9080/productpage"
    assert isinstance(hit["startTimeUnixNano"], str)
    assert isinstance(hit["durationMs"], int)
    [spanset] = hit["spanSets"]
    assert hit["spanSet"] == spanset
    assert spanset["matched"] == 1
    span = spanset["spans"][0]
    assert isinstance(span["durationNanos"], str)
    assert {"key": "status", "value": {"stringValue": "error"}} in span["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "ratings.default"}} in span["attributes"]
    assert hit["serviceStats"]["ratings.default"] == {"spanCount": 1, "errorCount": 1}
    assert body["metrics"]["inspectedTraces"] >= len(ids)


def test_search_kiali_shape(server: ServerProcess, sent: Sent) -> None:
    q = '{ .service.name = "productpage.default" } && {  }| ' + KIALI_SELECT
    body = _search(server, sent, q=q, spss=10, limit=5, minDuration="1ms")
    assert len(body["traces"]) == 5
    starts = [int(t["startTimeUnixNano"]) for t in body["traces"]]
    assert starts == sorted(starts, reverse=True)
    first = body["traces"][0]
    spans = first["spanSets"][0]["spans"]
    # { } matches every span: the spanset is the whole trace (both sides of && together).
    assert first["spanSets"][0]["matched"] == len(spans) == sum(s["spanCount"] for s in first["serviceStats"].values())
    capped = _search(server, sent, q=q, spss=3, limit=1)["traces"][0]["spanSets"][0]
    assert len(capped["spans"]) == 3  # spss caps the spans listed …
    assert capped["matched"] >= 7  # … not the spans matched
    keys = {a["key"] for s in spans for a in s["attributes"]}
    assert {"status", "node_id", "component", "upstream_cluster", "http.method", "response_flags", "name"} <= keys


def test_search_structural_and_pipelines(server: ServerProcess, sent: Sent) -> None:
    q = '{ resource.service.name = "reviews.default" } > { resource.service.name = "reviews.default" && kind = client }'
    body = _search(server, sent, q=q, limit=100)
    with_ratings = {t.hex_id for t in sent.traces if any(p.service == "ratings.default" for p in t.spans)}
    assert {t["traceID"] for t in body["traces"]} == with_ratings
    grouped = _search(server, sent, q="{ kind = server } | by(resource.service.name) | count() > 0", limit=1)
    labels = {a["value"]["stringValue"] for s in grouped["traces"][0]["spanSets"] for a in s["attributes"]}
    assert "reviews.default" in labels


def test_legacy_tag_search_and_durations(server: ServerProcess, sent: Sent) -> None:
    body = _search(server, sent, tags="service.name=ratings http.status_code=503", limit=50)
    assert sent.failing_ratings.hex_id in {t["traceID"] for t in body["traces"]}
    assert all(t["traceID"] != sent.traces[0].hex_id for t in body["traces"])
    slowest = max(
        sent.traces,
        key=lambda t: (
            max(p.span.end_time_unix_nano for p in t.spans) - min(p.span.start_time_unix_nano for p in t.spans)
        ),
    )
    duration_ms = (
        max(p.span.end_time_unix_nano for p in slowest.spans) - min(p.span.start_time_unix_nano for p in slowest.spans)
    ) // 1_000_000
    body = _search(server, sent, minDuration=f"{duration_ms}ms", limit=50)
    assert [t["traceID"] for t in body["traces"]] == [slowest.hex_id]


def test_search_errors_point_at_the_query(server: ServerProcess, sent: Sent) -> None:
    response = server.api().get("/tempo/api/search", params={"q": '{ span.a = "x" && }'})
    assert response.status_code == 400
    assert "col 19" in response.json()["error"]["message"]
    unsupported = server.api().get("/tempo/api/search", params={"q": "{ } | rate()"})
    assert unsupported.status_code == 400
    assert "not supported" in unsupported.json()["error"]["message"]


def test_tag_autocomplete(server: ServerProcess, sent: Sent) -> None:
    api = server.api()
    window = {"start": sent.start_s, "end": int(time.time()) + 60}
    names = api.get("/tempo/api/search/tags", params={"scope": "span", **window}).json()["tagNames"]
    assert {"http.status_code", "upstream_cluster", "response_flags"} <= set(names)
    scopes = api.get("/tempo/api/v2/search/tags", params=window).json()["scopes"]
    by_scope = {s["name"]: s["tags"] for s in scopes}
    assert "service.name" in by_scope["resource"]
    assert "rootServiceName" in by_scope["intrinsic"]
    services = api.get("/tempo/api/v2/search/tag/resource.service.name/values", params=window).json()["tagValues"]
    assert {"type": "string", "value": "ratings.default"} in services
    narrowed = api.get(
        "/tempo/api/v2/search/tag/span.upstream_cluster/values",
        params={"q": '{resource.service.name="ratings.default"}', **window},
    ).json()
    assert narrowed["tagValues"] == [{"type": "string", "value": "inbound|9080||"}]
    status = api.get("/tempo/api/v2/search/tag/status/values").json()["tagValues"]
    assert {"type": "keyword", "value": "error"} in status
    v1 = api.get("/tempo/api/search/tag/response_flags/values", params=window).json()["tagValues"]
    assert "-" in v1
    beta = server.api(TOKENS["beta"]).get("/tempo/api/v2/search/tag/resource.service.name/values").json()
    assert len(beta["tagValues"]) >= 1


def test_tenants_search_only_their_traces(server: ServerProcess, sent: Sent) -> None:
    body = (
        server.api(TOKENS["beta"])
        .get("/tempo/api/search", params={"q": "{ }", "limit": 100, "start": sent.start_s})
        .json()
    )
    ours = {t.hex_id for t in sent.traces}
    assert body["traces"]
    assert not ours & {t["traceID"] for t in body["traces"]}
    assert server.api(None).get("/tempo/api/search").status_code == 401
