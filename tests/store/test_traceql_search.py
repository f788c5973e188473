"""TraceQL search on a real store equals TraceQL evaluated on every trace sent: the SQL pushdown may
only ever narrow to a superset, whatever the query."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.model.spans import Span, Trace
from meshtrace.query.service import QueryService
from meshtrace.query.traceql import evaluate, parse
from meshtrace.query.traceql_search import search
from meshtrace.store import Store
from meshtrace.store.api import SpanBatch, TimeRange
from meshtrace.store.engine import ChdbEngine
from meshtrace.store.traceql_sql import plan
from meshtrace.testing.bookinfo import export_request, traffic
from meshtrace.testing.contract import FIXTURE_EPOCH_NS, load_fixtures, reference_spans
from tests.conftest import new_store

S = 1_000_000_000
QUERIES = [
    "{ }",
    '{ resource.service.name = "reviews.default" }',
    '{ .service.name = "ratings.default" && status = error }',
    '{ resource.service.name = "productpage.default" && name = "details.default.svc.cluster.local:9080/*" }',
    "{ span.http.status_code >= 500 }",
    '{ span.http.status_code = "503" }',
    "{ span.http.status_code = 503 }",
    '{ span.response_flags = "UF" }',
    '{ span.response_flags != "-" }',
    '{ span.istio.canonical_revision = "v3" && kind = server }',
    "{ kind = client && status = error }",
    "{ duration > 40ms }",
    "{ duration < 2ms && kind = server }",
    '{ name =~ "reviews.*" }',
    '{ name !~ ".*9080/\\\\*" }',
    "{ span.foo = nil && kind = server }",
    "{ span.retry = true }",
    "{ span.retry }",
    "{ traceDuration > 60ms }",
    '{ rootServiceName = "istio-ingressgateway.istio-system" && status = error }',
    '{ rootName =~ ".*productpage" }',
    '{ resource.telemetry.sdk.name = "envoy" && span.upstream_cluster =~ "outbound.*ratings.*" }',
    '{ .upstream_cluster = "inbound|9080||" && .istio.canonical_service = "ratings" }',
    '{ span.http.status_code = "503" || span.response_flags = "UF" }',
    '{ .service.name = "reviews.default" } && { .service.name = "ratings.default" }',
    '{ .service.name = "details.default" } || { status = error }',
    '{ resource.service.name = "productpage.default" } > { resource.service.name = "reviews.default" }',
    '{ resource.service.name = "istio-ingressgateway.istio-system" } >> { status = error }',
    '{ resource.service.name = "ratings.default" } < { kind = client }',
    '{ kind = server && resource.service.name = "ratings.default" } << { kind = server }',
    '{ name = "reviews.default.svc.cluster.local:9080/*" && kind = client } ~ { kind = client }',
    "{ } | count() > 9",
    "{ kind = server } | avg(duration) > 20ms",
    "{ } | by(resource.service.name) | count() > 2",
    "{ status = error } | select(span.http.status_code, resource.service.name)",
    "{ span.request_size + 1 > 0 && status = error }",
    '{ !(span.http.method = "GET") }',
]


def _traces(requests: list[bytes]) -> list[Trace]:
    by_trace: dict[str, list[Span]] = {}
    for payload in requests:
        for span in reference_spans(ExportTraceServiceRequest.FromString(payload)):
            by_trace.setdefault(span.trace_id, []).append(span)
    return [Trace(tid, spans) for tid, spans in by_trace.items()]


@pytest.fixture(scope="module")
def loaded(class_store_module: Store) -> list[Trace]:
    store = class_store_module
    now = time.time_ns()
    fixtures = load_fixtures(now - 30 * 60 * S - FIXTURE_EPOCH_NS)
    payloads = [f.request.SerializeToString() for f in fixtures.values()]
    payloads += [export_request([t]).SerializeToString() for t in traffic(11, now - 20 * 60 * S, 80, interval_ns=S)]

    async def write() -> None:
        for payload in payloads:
            await store.writer.write(SpanBatch("t", payload, 1))
        await store.writer.sync()

    asyncio.run(write())
    return _traces(payloads)


@pytest.fixture(scope="module")
def class_store_module(chdb_engine: ChdbEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = new_store(chdb_engine, tmp_path_factory.mktemp("traceql"), flush_interval=0.02)
    asyncio.run(store.writer.start())
    yield store
    asyncio.run(store.close())


@pytest.mark.parametrize("text", QUERIES)
def test_search_equals_evaluating_every_trace(text: str, class_store_module: Store, loaded: list[Trace]) -> None:
    query = parse(text)
    expected = {t.trace_id: sorted(s.span_id for ss in evaluate(query, t) for s in ss.spans) for t in loaded}
    expected = {k: v for k, v in expected.items() if v}
    now = time.time_ns()
    service = QueryService(class_store_module.reader, class_store_module.analytics)
    result = asyncio.run(search(service, "t", query, TimeRange(now - 3600 * S, now + 60 * S), limit=1000))
    got = {m.trace.trace_id: sorted(s.span_id for ss in m.spansets for s in ss.spans) for m in result.matches}
    assert got == expected
    starts = [m.trace.start_ns for m in result.matches]
    assert starts == sorted(starts, reverse=True)


def test_reference_answers_are_not_trivial(loaded: list[Trace]) -> None:
    """Guard for the test above: most queries select some traces but not all of them."""
    counts = [sum(1 for t in loaded if evaluate(parse(q), t)) for q in QUERIES]
    assert sum(1 for c in counts if 0 < c < len(loaded)) >= len(QUERIES) - 6


def test_plans_use_the_search_table_when_they_can() -> None:
    assert plan(parse('{ resource.service.name = "a" && status = error && duration > 1ms }')).on_index
    assert plan(parse('{ span.http.status_code = "503" && name = "x" }')).on_index
    assert not plan(parse('{ span.http.url = "x" }')).on_index
    assert not plan(parse('{ .http.status_code = "503" }')).on_index  # also looks at resource attributes
    assert not plan(parse('{ statusMessage = "x" }')).on_index
    one = plan(parse('{ .service.name = "a" } && { .service.name = "b" }'))
    assert one.where is not None
    assert one.having is not None
    assert plan(parse("{ traceDuration > 1s }")).where is None


def test_search_stops_after_the_inspection_budget(class_store_module: Store, loaded: list[Trace]) -> None:
    now = time.time_ns()
    service = QueryService(class_store_module.reader, class_store_module.analytics)
    query = parse("{ traceDuration > 1h }")  # nothing matches, nothing narrows it in SQL
    result = asyncio.run(search(service, "t", query, TimeRange(now - 3600 * S, now), limit=5, max_inspected=30))
    assert result.matches == []
    assert result.inspected_traces == 30


@pytest.mark.parametrize("text", ['{ resource.service.name = "reviews.default" }', "{ status = error } && { }"])
def test_a_small_limit_gets_the_newest_matches(text: str, class_store_module: Store, loaded: list[Trace]) -> None:
    query = parse(text)
    newest = sorted((t for t in loaded if evaluate(query, t)), key=lambda t: -t.start_ns)[:3]
    now = time.time_ns()
    service = QueryService(class_store_module.reader, class_store_module.analytics)
    result = asyncio.run(search(service, "t", query, TimeRange(now - 3600 * S, now + 60 * S), limit=3))
    assert [m.trace.trace_id for m in result.matches] == [t.trace_id for t in newest]


def test_an_empty_spanset_beside_a_condition_reads_only_matching_spans() -> None:
    kiali = plan(parse('{ .service.name = "x" } && { } | select(status)'))
    assert kiali.having is None
    assert kiali.where is not None
    assert "ServiceName" in kiali.where
