"""The Jaeger UI JSON model, on a fixture trace: the exact keys and conventions Jaeger UI and Grafana read."""

from __future__ import annotations

from meshtrace.api.jaeger import envelope, jaeger_trace
from meshtrace.model.spans import Trace
from meshtrace.testing.contract import load_fixtures, reference_spans


def fixture_trace(name: str) -> Trace:
    fixture = load_fixtures(0)[name]
    return Trace(fixture.trace_id, reference_spans(fixture.request))


def test_span_and_process_shape():
    doc = jaeger_trace(fixture_trace("bookinfo_v2"))
    assert set(doc) == {"traceID", "spans", "processes", "warnings"}
    span = doc["spans"][0]
    assert set(span) == {
        "traceID",
        "spanID",
        "flags",
        "operationName",
        "references",
        "startTime",
        "duration",
        "tags",
        "logs",
        "processID",
        "warnings",
    }
    assert isinstance(span["startTime"], int)
    assert len(span["spanID"]) == 16
    services = {p["serviceName"] for p in doc["processes"].values()}
    assert services == {
        "istio-ingressgateway.istio-system",
        "productpage.default",
        "details.default",
        "reviews.default",
        "ratings.default",
    }
    for process in doc["processes"].values():
        assert {"key": "telemetry.sdk.name", "type": "string", "value": "envoy"} in process["tags"]
        assert all(t["key"] != "service.name" for t in process["tags"])


def test_parent_is_the_first_child_of_reference_and_links_follow():
    doc = jaeger_trace(fixture_trace("rich_span"))
    by_name = {s["operationName"]: s for s in doc["spans"]}
    root, child = by_name["POST /checkout"], by_name["charge card"]
    assert root["references"] == [
        {"refType": "FOLLOWS_FROM", "traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": "b7ad6b7169203331"}
    ]
    assert child["references"][0] == {"refType": "CHILD_OF", "traceID": root["traceID"], "spanID": root["spanID"]}


def test_status_kind_and_error_tags():
    doc = jaeger_trace(fixture_trace("rich_span"))
    by_name = {s["operationName"]: {t["key"]: t for t in s["tags"]} for s in doc["spans"]}
    root = by_name["POST /checkout"]
    assert root["error"] == {"key": "error", "type": "bool", "value": True}
    assert root["otel.status_code"]["value"] == "ERROR"
    assert root["otel.status_description"]["value"] == "card declined"
    assert root["span.kind"]["value"] == "server"
    assert root["w3c.tracestate"]["value"] == "vendor=1"
    assert root["otel.scope.name"]["value"] == "shop.instrumentation"
    child = by_name["charge card"]
    assert child["otel.status_code"]["value"] == "OK"
    assert "error" not in child


def test_istio_error_attribute_becomes_the_error_tag_once():
    doc = jaeger_trace(fixture_trace("bookinfo_ratings_503"))
    failing = [s for s in doc["spans"] if any(t["key"] == "error" for t in s["tags"])]
    assert len(failing) == 2
    for span in failing:
        errors = [t for t in span["tags"] if t["key"] == "error"]
        assert errors == [{"key": "error", "type": "bool", "value": True}]


def test_events_become_logs():
    doc = jaeger_trace(fixture_trace("rich_span"))
    root = next(s for s in doc["spans"] if s["operationName"] == "POST /checkout")
    assert root["logs"] == [
        {
            "timestamp": 1_700_000_007_100_000,
            "fields": [
                {"key": "event", "type": "string", "value": "exception"},
                {"key": "exception.type", "type": "string", "value": "ValueError"},
            ],
        }
    ]


def test_envelope():
    assert envelope(["a", "b"]) == {"data": ["a", "b"], "total": 2, "limit": 0, "offset": 0, "errors": None}
