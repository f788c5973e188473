"""The analytics APIs of a real ``meshtrace serve`` fed Bookinfo traffic over OTLP/HTTP, with answers
computed span by span from what was sent."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshtrace.model.analytics import Histogram
from meshtrace.model.spans import Span, SpanKind
from meshtrace.testing.bookinfo import BookinfoTrace, bookinfo_trace, export_request, traffic
from meshtrace.testing.contract import Fixture, reference_edges, reference_pairs, reference_spans

from .conftest import TOKENS, ServerProcess, post_traces, token_args, wait_until

S = 1_000_000_000
PAGE_OP = "productpage.default.svc.cluster.local:9080/productpage"
REVIEWS_OP = "reviews.default.svc.cluster.local:9080/*"


@dataclass
class Sent:
    acme: list[BookinfoTrace]
    beta: list[BookinfoTrace]
    slow: list[str]
    failing_ratings: str
    unreached_details: str

    def spans(self, traces: list[BookinfoTrace] | None = None) -> list[Span]:
        return [s for t in (traces or self.acme) for s in reference_spans(export_request([t]))]

    def edges(self, traces: list[BookinfoTrace] | None = None) -> dict[tuple[str, ...], list[int]]:
        fixtures = [Fixture(t.hex_id, export_request([t]), t.hex_id) for t in (traces or self.acme)]
        return reference_edges(fixtures)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("analytics"), *token_args(), "--graph-wait", "1s").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sent(server: ServerProcess) -> Sent:
    start = time.time_ns() - 10 * 60 * S
    acme = list(traffic(7, start, 240, interval_ns=S))
    rng = random.Random(8)
    slow = [bookinfo_trace(rng, start + 250 * S + i * S, reviews_version="v3", scale=6) for i in range(5)]
    failing = bookinfo_trace(rng, start + 260 * S, reviews_version="v2", ratings_status=503)
    unreached = bookinfo_trace(rng, start + 261 * S, reviews_version="v1", details_failure=True)
    old_gateway = bookinfo_trace(rng, start + 262 * S, reviews_version="v1", gateway_spans=1)
    acme += [*slow, failing, unreached, old_gateway]
    beta = list(traffic(9, start, 30, interval_ns=S))
    for i in range(0, len(acme), 50):
        post_traces(server, acme[i : i + 50], TOKENS["acme"])
    post_traces(server, beta, TOKENS["beta"])
    result = Sent(acme, beta, [t.hex_id for t in slow], failing.hex_id, unreached.hex_id)
    expected_calls = sum(n for n, _ in result.edges().values())

    def settled() -> bool:
        graph = server.api().get("/meshtrace/v1/servicegraph", params={"lookback": "1h"}).json()
        return sum(e["calls"] for e in graph["edges"]) == expected_calls

    wait_until(settled, timeout=60, interval=0.5)
    return result


def test_service_graph_is_istio_aware(server: ServerProcess, sent: Sent) -> None:
    graph = server.api().get("/meshtrace/v1/servicegraph", params={"lookback": "1h"}).json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["user"]["type"] == "user"
    assert nodes["istio-ingressgateway.istio-system"]["type"] == "gateway"
    assert nodes["details.default (unreached)"]["type"] == "unreached"
    reviews = nodes["reviews.default"]
    assert [v["version"] for v in reviews["versions"]] == ["v1", "v2", "v3"]
    spans = sent.spans()
    for version in ("v1", "v2", "v3"):
        served = [
            s
            for s in spans
            if s.service == "reviews.default"
            and s.kind is SpanKind.SERVER
            and s.attributes["istio.canonical_revision"] == version
        ]
        assert next(v for v in reviews["versions"] if v["version"] == version)["calls"] == len(served)
    got = {(e["source"], e["target"]): [e["calls"], e["failed"]] for e in graph["edges"]}
    assert got == reference_pairs(sent.edges())
    flagged = next(e for e in graph["edges"] if e["target"] == "details.default (unreached)")
    unreached = [s for s in spans if s.attributes.get("response_flags") == "UF"]
    assert flagged["responseFlags"] == {"UF": len(unreached)}
    # Client latency percentiles of an edge, against the exact ones of the spans sent.
    edge = next(e for e in graph["edges"] if e["source"] == "productpage.default" and e["target"] == "reviews.default")
    durations = sorted(
        s.duration_ns
        for s in spans
        if s.service == "productpage.default"
        and s.kind is SpanKind.CLIENT
        and s.attributes["upstream_cluster"].endswith("reviews.default.svc.cluster.local")
    )
    exact_p50 = durations[len(durations) // 2] / 1e6
    assert edge["clientLatencyMs"]["p50"] == pytest.approx(exact_p50, rel=0.1)


def test_jaeger_dependencies_come_from_the_graph(server: ServerProcess, sent: Sent) -> None:
    now_ms = int(time.time() * 1000)
    body = server.api().get("/api/dependencies", params={"endTs": now_ms, "lookback": 3_600_000}).json()
    got = {(d["parent"], d["child"]): d["callCount"] for d in body["data"]}
    expected: dict[tuple[str, str], int] = {}
    for (client, srv, *_), (calls, _) in sent.edges().items():
        if client not in ("user", "unknown") and client != srv:
            expected[(client, srv)] = expected.get((client, srv), 0) + calls
    assert got == expected
    assert got[("productpage.default", "details.default")] == len(sent.acme)  # reached or not


def test_tenants_see_only_their_graph(server: ServerProcess, sent: Sent) -> None:
    def beta_calls() -> int:
        graph = server.api(TOKENS["beta"]).get("/meshtrace/v1/servicegraph", params={"lookback": "1h"}).json()
        return sum(e["calls"] for e in graph["edges"])

    assert wait_until(lambda: beta_calls() == sum(n for n, _ in sent.edges(sent.beta).values()), timeout=30)
    assert server.api(None).get("/meshtrace/v1/servicegraph").status_code == 401


def test_red_series(server: ServerProcess, sent: Sent) -> None:
    body = (
        server.api()
        .get("/meshtrace/v1/red", params={"service": "reviews.default", "lookback": "1h", "step": "5m"})
        .json()
    )
    assert body["step"] == 300
    [series] = body["series"]
    assert series["service_name"] == "reviews.default"
    served = [s for s in sent.spans() if s.service == "reviews.default" and s.kind is SpanKind.SERVER]
    assert sum(p["calls"] for p in series["points"]) == len(served)
    assert all(p["rate"] == pytest.approx(p["calls"] / 300) for p in series["points"])
    by_op = (
        server.api()
        .get("/meshtrace/v1/red", params={"service": "ratings.default", "byOperation": "true", "lookback": "1h"})
        .json()
    )
    [ratings] = by_op["series"]
    assert ratings["operation"] == "ratings.default.svc.cluster.local:9080/*"
    failed = [s for s in sent.spans() if s.service == "ratings.default" and s.kind is SpanKind.SERVER and s.is_error]
    assert sum(p["errors"] for p in ratings["points"]) == len(failed) >= 1


def test_jaeger_spm_endpoints(server: ServerProcess, sent: Sent) -> None:
    api = server.api()
    assert api.get("/api/metrics/minstep").json()["data"] == 60_000
    end_ms = int(time.time() * 1000) + 60_000
    params: dict[str, Any] = {
        "service": "productpage.default",
        "endTs": end_ms,
        "lookback": 3_600_000,
        "step": 60_000,
        "ratePer": 1_800_000,
    }
    calls = api.get("/api/metrics/calls", params=params).json()
    assert calls["name"] == "service_call_rate"
    assert calls["type"] == "GAUGE"
    [metric] = calls["metrics"]
    assert metric["labels"] == [{"name": "service_name", "value": "productpage.default"}]
    last = metric["metricPoints"][-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", last["timestamp"])
    served = [s for s in sent.spans() if s.service == "productpage.default" and s.kind is SpanKind.SERVER]
    assert last["gaugeValue"]["doubleValue"] * 1800 == pytest.approx(len(served))
    latencies = api.get("/api/metrics/latencies", params={**params, "quantile": 0.95}).json()
    assert latencies["name"] == "service_latencies"
    exact = Histogram.of(s.duration_ns for s in served).quantile(0.95)
    assert exact is not None
    value = latencies["metrics"][0]["metricPoints"][-1]["gaugeValue"]["doubleValue"]
    assert value == pytest.approx(exact / 1e6, rel=0.01)
    errors = api.get("/api/metrics/errors", params={**params, "groupByOperation": "true"}).json()
    assert errors["name"] == "service_operation_error_rate"
    assert {label["name"] for label in errors["metrics"][0]["labels"]} == {"service_name", "operation"}
    refused = api.get("/api/metrics/latencies", params=params)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["msg"].startswith("please provide a quantile")


def test_prometheus_series_for_the_scrapers_tenant(server: ServerProcess, sent: Sent) -> None:
    text = server.api().get("/metrics").text
    pairs = reference_pairs(sent.edges())
    line = (
        'traces_service_graph_request_total{client="productpage.default",connection_type="",'
        f'server="reviews.default"}} {float(pairs[("productpage.default", "reviews.default")][0])}'
    )
    assert line in text
    assert 'traces_service_graph_request_server_seconds_bucket{client="reviews.default"' in text
    assert "traces_service_graph_request_client_seconds_count{" in text
    assert 'traces_spanmetrics_calls_total{service="ratings.default"' in text
    assert 'status_code="STATUS_CODE_ERROR"' in text
    assert "traces_spanmetrics_latency_bucket{" in text
    assert "traces_service_graph" not in server.api(None).get("/metrics").text
    beta = server.api(TOKENS["beta"]).get("/metrics").text
    assert line not in beta
    assert "traces_service_graph_request_total" in beta


def test_errors_grouped_with_examples(server: ServerProcess, sent: Sent) -> None:
    groups = server.api().get("/meshtrace/v1/errors", params={"lookback": "1h"}).json()["groups"]
    keyed = {(g["service"], g["httpStatusCode"], g["responseFlags"]): g for g in groups}
    unreached = keyed[("productpage.default", "503", "UF")]
    assert sent.unreached_details in unreached["traceIds"]
    assert sent.failing_ratings in keyed[("ratings.default", "503", "-")]["traceIds"]
    only = server.api().get("/meshtrace/v1/errors", params={"lookback": "1h", "service": "ratings.default"})
    assert {g["service"] for g in only.json()["groups"]} == {"ratings.default"}


def test_outliers_name_what_is_different(server: ServerProcess, sent: Sent) -> None:
    body = (
        server.api()
        .get(
            "/meshtrace/v1/outliers",
            params={"service": "reviews.default", "operation": REVIEWS_OP, "quantile": "0.97", "lookback": "1h"},
        )
        .json()
    )
    assert body["thresholdMs"] > 0
    assert {t["traceId"] for t in body["traces"]} >= set(sent.slow)
    assert all(t["durationMs"] > body["thresholdMs"] for t in body["traces"])
    top = body["differences"][0]
    assert (top["key"], top["value"]) == ("istio.canonical_revision", "v3")
    assert top["outlierShare"] > top["baselineShare"]


def test_trace_analysis_and_root_cause(server: ServerProcess, sent: Sent) -> None:
    body = server.api().get(f"/meshtrace/v1/traces/{sent.failing_ratings}/analysis").json()
    total = sum(int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"]) for s in body["criticalPath"])
    assert total == int(body["durationNanos"])
    trace = server.api().get(f"/meshtrace/v1/traces/{sent.failing_ratings}").json()
    cause = next(s for s in trace["spans"] if s["spanId"] == body["rootCause"])
    assert (cause["service"], cause["kind"]) == ("ratings.default", "Server")
    assert set(body["selfNanos"]) == {s["spanId"] for s in trace["spans"]}


def test_compare_traces_and_groups(server: ServerProcess, sent: Sent) -> None:
    fast, slow = sent.acme[0].hex_id, sent.slow[0]
    body = server.api().get("/meshtrace/v1/compare", params={"a": fast, "b": slow}).json()
    assert body["differenceMs"] == pytest.approx(body["b"]["durationMs"] - body["a"]["durationMs"], abs=0.01)
    assert sum(s["contributionMs"] for s in body["spans"]) == pytest.approx(body["differenceMs"], abs=0.05)
    groups = (
        server.api()
        .get(
            "/meshtrace/v1/compare",
            params={
                "a": "p50",
                "b": "p99",
                "service": "istio-ingressgateway.istio-system",
                "operation": PAGE_OP,
                "lookback": "1h",
            },
        )
        .json()
    )
    assert groups["b"]["durationMs"] > groups["a"]["durationMs"]
    assert groups["spans"][0]["contributionMs"] > 0
    bad = server.api().get("/meshtrace/v1/compare", params={"a": "p50", "b": "x"})
    assert bad.status_code == 400


def test_impact_ranks_by_time_spent(server: ServerProcess, sent: Sent) -> None:
    ops = server.api().get("/meshtrace/v1/impact", params={"lookback": "1h"}).json()["operations"]
    assert ops[0]["service"] == "istio-ingressgateway.istio-system"  # the root spans cover everything
    impacts = [o["impact"] for o in ops]
    assert impacts == sorted(impacts, reverse=True)
    assert sum(impacts) == pytest.approx(1.0)
    assert all(o["kind"] == "server" for o in ops)


def test_bad_windows_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    response = server.api().get("/meshtrace/v1/servicegraph", params={"start": "2", "end": "1"})
    assert response.status_code == 400
    assert "end must be after start" in response.json()["error"]["message"]


def test_one_edge_over_time(server: ServerProcess, sent: Sent) -> None:
    pairs = reference_pairs(sent.edges())
    api = server.api()
    body = api.get(
        "/meshtrace/v1/servicegraph/edge",
        params={"client": "productpage.default", "server": "reviews.default", "lookback": "1h", "step": "5m"},
    ).json()
    [series] = body["series"]
    assert sum(p["calls"] for p in series["points"]) == pairs[("productpage.default", "reviews.default")][0]
    unreached = api.get(
        "/meshtrace/v1/servicegraph/edge",
        params={
            "client": "productpage.default",
            "server": "details.default",
            "connection": "virtual_node",
            "lookback": "1h",
        },
    ).json()
    points = unreached["series"][0]["points"]
    assert sum(p["calls"] for p in points) == pairs[("productpage.default", "details.default (unreached)")][0]
    assert all(p["failed"] == p["calls"] for p in points)
