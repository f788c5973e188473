"""The OpenTelemetry Python SDK's own OTLP exporters against a real backend, checked through the Jaeger API."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from meshtrace.model.otlp_json import to_otlp_json
from meshtrace.testing.bookinfo import bookinfo_trace, export_request

from .conftest import TOKENS, ServerProcess, jaeger_trace, wait_until

KINDS = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.INTERNAL: "internal",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}


def as_text(value: Any) -> str:
    """How the store renders SDK attribute values (the Collector's AsString)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ",".join(json.dumps(v) if isinstance(v, str) else as_text(v) for v in value) + "]"
    return str(value)


def emit(exporter: Any, service: str) -> list[ReadableSpan]:
    """A small request tree with every span feature; returns what the SDK recorded."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "e2e"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("meshtrace.e2e", "1.2.3")
    with tracer.start_as_current_span("warm-up") as other:
        pass
    with tracer.start_as_current_span(
        "GET /productpage",
        kind=SpanKind.SERVER,
        attributes={
            "http.method": "GET",
            "http.status_code": 200,
            "retry": False,
            "ratio": 0.5,
            "peers": ("details", "reviews"),
            "ports": (9080, 9443),
        },
        links=[Link(other.get_span_context(), {"why": "follows"})],
    ) as root:
        root.add_event("cache miss", {"key": "product-0", "size": 3})
        with tracer.start_as_current_span("GET reviews", kind=SpanKind.CLIENT) as child:
            child.set_attribute("http.status_code", 503)
            child.set_status(Status(StatusCode.ERROR, "upstream reset"))
        with tracer.start_as_current_span("render", kind=SpanKind.INTERNAL) as internal:
            internal.set_status(Status(StatusCode.OK))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return list(memory.get_finished_spans())


def check_trace(server: ServerProcess, spans: list[ReadableSpan], service: str) -> None:
    by_trace: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_trace.setdefault(f"{span.context.trace_id:032x}", []).append(span)
    for trace_id, sent in by_trace.items():
        got = jaeger_trace(server, trace_id, spans=len(sent))
        assert got["traceID"] == trace_id
        assert len(got["spans"]) == len(sent)
        jaeger = {s["spanID"]: s for s in got["spans"]}
        for span in sent:
            j = jaeger[f"{span.context.span_id:016x}"]
            assert j["operationName"] == span.name
            assert j["startTime"] == span.start_time // 1000
            assert j["duration"] == (span.end_time - span.start_time) // 1000
            if span.parent is not None:
                assert {"refType": "CHILD_OF", "traceID": trace_id, "spanID": f"{span.parent.span_id:016x}"} in j[
                    "references"
                ]
            else:
                assert not [r for r in j["references"] if r["refType"] == "CHILD_OF"]
            for link in span.links:
                assert {
                    "refType": "FOLLOWS_FROM",
                    "traceID": f"{link.context.trace_id:032x}",
                    "spanID": f"{link.context.span_id:016x}",
                } in j["references"]
            tags = {t["key"]: t["value"] for t in j["tags"]}
            for key, value in (span.attributes or {}).items():
                assert tags[key] == as_text(value), key
            assert tags["span.kind"] == KINDS[span.kind]
            assert tags["otel.scope.name"] == "meshtrace.e2e"
            assert tags["otel.scope.version"] == "1.2.3"
            if span.status.status_code is StatusCode.ERROR:
                assert tags["error"] is True
                assert tags["otel.status_code"] == "ERROR"
                assert tags["otel.status_description"] == span.status.description
            elif span.status.status_code is StatusCode.OK:
                assert tags["otel.status_code"] == "OK"
                assert "error" not in tags
            else:
                assert "otel.status_code" not in tags
            assert [(log["timestamp"], {f["key"]: f["value"] for f in log["fields"]}) for log in j["logs"]] == [
                (e.timestamp // 1000, {"event": e.name, **{k: as_text(v) for k, v in e.attributes.items()}})
                for e in span.events
            ]
            process = got["processes"][j["processID"]]
            assert process["serviceName"] == service
            process_tags = {t["key"]: t["value"] for t in process["tags"]}
            assert process_tags["deployment.environment"] == "e2e"
            assert process_tags["telemetry.sdk.language"] == "python"


def test_grpc_exporter_with_authentication_header(server: ServerProcess) -> None:
    exporter = GrpcExporter(endpoint=server.grpc, insecure=True, headers={"authentication": TOKENS["acme"]})
    check_trace(server, emit(exporter, "sdk-grpc.e2e"), "sdk-grpc.e2e")


def test_http_exporter_gzip_with_bearer_token(server: ServerProcess) -> None:
    exporter = HttpExporter(
        endpoint=f"{server.otlp_http}/v1/traces",
        headers={"Authorization": f"Bearer {TOKENS['acme']}"},
        compression=Compression.Gzip,
    )
    check_trace(server, emit(exporter, "sdk-http.e2e"), "sdk-http.e2e")


def test_otlp_json_over_http(server: ServerProcess) -> None:
    import random
    import time

    trace = bookinfo_trace(random.Random(11), time.time_ns() - 10**9, reviews_version="v3")
    body = orjson.dumps(to_otlp_json(export_request([trace])))
    response = httpx.post(
        f"{server.otlp_http}/v1/traces",
        content=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip", "Authentication": TOKENS["acme"]},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    got = jaeger_trace(server, trace.hex_id, spans=9)
    services = sorted(got["processes"][s["processID"]]["serviceName"] for s in got["spans"])
    assert services.count("reviews.default") == 2
    assert services.count("istio-ingressgateway.istio-system") == 2


def test_zipkin_as_istio_sends_it(server: ServerProcess) -> None:
    import time

    now_us = time.time_ns() // 1000
    spans = [
        {
            "traceId": "a1" * 16,
            "id": "b1" * 8,
            "name": "productpage.default.svc.cluster.local:9080/productpage",
            "kind": "SERVER",
            "timestamp": now_us,
            "duration": 30_000,
            "localEndpoint": {"serviceName": "productpage.default"},
            "tags": {"http.status_code": "200"},
        },
        {
            "traceId": "a1" * 16,
            "id": "b2" * 8,
            "parentId": "b1" * 8,
            "name": "reviews.default.svc.cluster.local:9080/*",
            "kind": "CLIENT",
            "timestamp": now_us + 1000,
            "duration": 20_000,
            "localEndpoint": {"serviceName": "productpage.default"},
            "tags": {"http.status_code": "500", "error": "true"},
        },
    ]
    response = httpx.post(f"{server.otlp_http}/api/v2/spans", json=spans, headers={"Authentication": TOKENS["acme"]})
    assert response.status_code == 202
    got = jaeger_trace(server, "a1" * 16, spans=2)
    child = next(s for s in got["spans"] if s["spanID"] == "b2" * 8)
    assert {"refType": "CHILD_OF", "traceID": "a1" * 16, "spanID": "b1" * 8} in child["references"]
    assert {"key": "error", "type": "bool", "value": True} in child["tags"]


@pytest.mark.parametrize("path", ["/api/services", "/meshtrace/v1/services"])
def test_search_and_metadata_routes(server: ServerProcess, path: str) -> None:
    exporter = GrpcExporter(endpoint=server.grpc, insecure=True, headers={"authentication": TOKENS["acme"]})
    emit(exporter, "routes.e2e")
    # services and operations come from a view of the insert, committed just after the spans themselves
    response = wait_until(lambda: (r := server.api().get(path)).status_code == 200 and "routes.e2e" in r.text and r)
    assert "routes.e2e" in json.dumps(response.json())


def test_jaeger_search_parameters(server: ServerProcess) -> None:
    api = server.api()
    found = api.get(
        "/api/traces",
        params={
            "service": "sdk-grpc.e2e",
            "operation": "GET reviews",
            "tags": '{"http.status_code":"503"}',
            "minDuration": "0us",
            "limit": "5",
        },
    ).json()
    assert len(found["data"]) == 1
    errors = api.get("/api/traces", params={"service": "sdk-http.e2e", "tags": '{"error":"true"}'}).json()
    assert len(errors["data"]) == 1
    kinds = api.get("/api/operations", params={"service": "sdk-grpc.e2e", "spanKind": "server"}).json()
    assert kinds["data"] == [{"name": "GET /productpage", "spanKind": "server"}]
    legacy = api.get("/api/services/sdk-grpc.e2e/operations").json()
    assert legacy["data"] == ["GET /productpage", "GET reviews", "render", "warm-up"]
    bad = api.get("/api/traces", params={"service": "x", "minDuration": "soon"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == 400
    assert api.get("/api/traces").status_code == 400  # service is required
    missing = api.get("/api/traces/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["msg"].startswith("trace 0123456789abcdef0123456789abcdef not found")
    several = api.get("/api/traces", params=[("traceID", "a1" * 16), ("traceID", "ff" * 16)]).json()
    assert [t["traceID"] for t in several["data"]] == ["a1" * 16]
    assert several["errors"] == [{"code": 404, "msg": "trace not found", "traceID": "ff" * 16}]
