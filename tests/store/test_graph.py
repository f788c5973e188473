"""The service graph builder: pairing by arrival, orphans after the wait, windows counted once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.store import Store
from meshtrace.store import graph as graph_module
from meshtrace.store.api import SpanBatch, TimeRange
from meshtrace.store.engine import ChdbEngine
from meshtrace.store.graph import ServiceGraphBuilder
from meshtrace.testing.bookinfo import BookinfoTrace, bookinfo_trace, export_request
from meshtrace.testing.cluster import CLUSTER
from tests.conftest import new_store
from tests.e2e.conftest import wait_until

WAIT_MS = 1500


@pytest.fixture
def store(chdb_engine: ChdbEngine, tmp_path: Path) -> Iterator[Store]:
    store = new_store(chdb_engine, tmp_path, flush_interval=0.02)
    store.graph.wait_ms, store.graph.step_ms, store.graph.lag_ms = WAIT_MS, 250, 100
    asyncio.run(store.writer.start())  # the builder is driven by hand here, not by its thread
    yield store
    asyncio.run(store.close())


def _write(store: Store, request: ExportTraceServiceRequest) -> None:
    async def go() -> None:
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        await store.writer.write(SpanBatch("t", request.SerializeToString(), count))
        await store.writer.sync()

    asyncio.run(go())


def _sides(trace: BookinfoTrace, service: str) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    """The trace split as two proxies export it: the productpage sidecar's spans, and everyone else's."""
    mine = BookinfoTrace(trace.trace_id, [s for s in trace.spans if s.service == service])
    rest = BookinfoTrace(trace.trace_id, [s for s in trace.spans if s.service != service])
    return export_request([mine]), export_request([rest])


def _edges(store: Store) -> dict[tuple[str, str, str], int]:
    now = time.time_ns()
    window = TimeRange(now - 3600 * 10**9, now + 60 * 10**9)
    out: dict[tuple[str, str, str], int] = {}
    for e in store.analytics.edges("t", window):
        key = (e.client, e.server, e.connection_type)
        out[key] = out.get(key, 0) + e.calls
    return out


def _settle(store: Store) -> None:
    g = store.graph
    g.advance(g.now_ms() + WAIT_MS + 2 * g.step_ms)


def test_halves_arriving_apart_within_the_wait_pair_up(store: Store) -> None:
    trace = bookinfo_trace(random.Random(1), time.time_ns(), reviews_version="v1")
    page, rest = _sides(trace, "productpage.default")
    _write(store, page)
    store.graph.advance()  # the first half alone: nothing may be decided yet
    time.sleep(0.6)
    _write(store, rest)
    _settle(store)
    edges = _edges(store)
    assert edges[("productpage.default", "details.default", "")] == 1
    assert edges[("productpage.default", "reviews.default", "")] == 1
    assert edges[("istio-ingressgateway.istio-system", "productpage.default", "")] == 1
    assert all(ctype == "" for (client, _, ctype) in edges if client not in ("user",))


def test_halves_further_apart_than_the_wait_are_orphans(store: Store) -> None:
    trace = bookinfo_trace(random.Random(2), time.time_ns(), reviews_version="v1")
    page, rest = _sides(trace, "productpage.default")
    _write(store, page)
    time.sleep((WAIT_MS + 600) / 1000)
    store.graph.advance()
    _write(store, rest)
    _settle(store)
    edges = _edges(store)
    # productpage's CLIENT spans to details and reviews: destinations that never answered in time …
    assert edges[("productpage.default", "details.default", "virtual_node")] == 1
    assert edges[("productpage.default", "reviews.default", "virtual_node")] == 1
    # … and their SERVER spans: callers that never showed up.
    assert edges[("unknown", "details.default", "virtual_node")] == 1
    assert edges[("unknown", "reviews.default", "virtual_node")] == 1
    assert ("productpage.default", "details.default", "") not in edges


def test_redone_windows_are_not_counted_twice(store: Store) -> None:
    rng = random.Random(3)
    traces = [bookinfo_trace(rng, time.time_ns(), reviews_version="v2") for _ in range(20)]
    _write(store, export_request(traces))
    _settle(store)
    before = _edges(store)
    assert before[("productpage.default", "reviews.default", "")] == 20
    # A restart that lost the saved watermark redoes every window: the tokens make that a no-op.
    store.engine.execute(f"TRUNCATE TABLE {store.schema.graph_progress}")
    store.graph._watermark = None
    assert _settle(store) is None
    assert _edges(store) == before


def test_graph_loop_runs_in_the_background(chdb_engine: ChdbEngine, tmp_path: Path) -> None:
    store = new_store(chdb_engine, tmp_path, flush_interval=0.02)
    store.graph.wait_ms, store.graph.step_ms, store.graph.lag_ms = 300, 100, 100
    asyncio.run(store.writer.start())
    store.graph.start(interval=0.05)
    try:
        _write(store, export_request([bookinfo_trace(random.Random(4), time.time_ns())]))
        deadline = time.monotonic() + 20
        while ("user", "istio-ingressgateway.istio-system", "virtual_node") not in _edges(store):
            assert time.monotonic() < deadline, "the background builder never counted the trace"
            time.sleep(0.05)
        assert store.graph.windows > 0
    finally:
        asyncio.run(store.close())


def test_halves_just_beyond_the_wait_are_never_counted_twice(store: Store) -> None:
    """Halves 600 ms apart with a 300 ms wait, usually inside one 10 s window: they are two lone halves,
    not a pair plus two lone halves."""
    store.graph.wait_ms, store.graph.step_ms = 300, 10_000
    trace = bookinfo_trace(random.Random(5), time.time_ns(), reviews_version="v1")
    page, rest = _sides(trace, "productpage.default")
    _write(store, page)
    time.sleep(0.6)
    _write(store, rest)
    g = store.graph
    g.advance(g.now_ms() + g.wait_ms + 2 * g.step_ms)
    edges = _edges(store)
    assert ("productpage.default", "details.default", "") not in edges
    assert edges[("productpage.default", "details.default", "virtual_node")] == 1
    assert edges[("unknown", "details.default", "virtual_node")] == 1


@pytest.mark.parametrize("cluster", [None, CLUSTER])
def test_backends_sharing_a_store_count_each_window_once(
    chdb_engine: ChdbEngine, tmp_path: Path, cluster: str | None
) -> None:
    """Every `meshtrace serve` replica runs a builder on the same tables: they close the same windows at
    the same moments, and each window is counted once."""
    store = new_store(chdb_engine, tmp_path, cluster=cluster, flush_interval=0.02)
    builders = [store.graph, ServiceGraphBuilder(store.engine, store.schema)]
    for b in builders:
        b.wait_ms, b.step_ms, b.lag_ms = WAIT_MS, 250, 100
    asyncio.run(store.writer.start())
    try:
        rng = random.Random(6)
        for _ in range(3):
            _write(
                store, export_request([bookinfo_trace(rng, time.time_ns(), reviews_version="v3") for _ in range(10)])
            )
            time.sleep(0.3)
        until = store.graph.now_ms() + WAIT_MS + 500
        with ThreadPoolExecutor(2) as pool:
            closed = list(pool.map(lambda b: b.advance(until), builders))
        assert all(n > 0 for n in closed)
        edges = _edges(store)
        assert edges[("productpage.default", "reviews.default", "")] == 30
        assert edges[("reviews.default", "ratings.default", "")] == 30
        assert edges[("user", "istio-ingressgateway.istio-system", "virtual_node")] == 30
    finally:
        asyncio.run(store.close())


def test_one_backend_builds_and_another_takes_over_when_it_stops(
    chdb_engine: ChdbEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_module, "LEASE_S", 1)
    store = new_store(chdb_engine, tmp_path, flush_interval=0.02)
    first, second = store.graph, ServiceGraphBuilder(store.engine, store.schema)
    first.id, second.id = "1000-a", "2000-b"  # the first started earlier
    for b in (first, second):
        b.wait_ms, b.step_ms, b.lag_ms = WAIT_MS, 250, 100
    asyncio.run(store.writer.start())
    try:
        rng = random.Random(8)
        _write(store, export_request([bookinfo_trace(rng, time.time_ns(), reviews_version="v1") for _ in range(10)]))
        assert (first.beat(), second.beat()) == (True, False)
        time.sleep(0.5)
        assert first.advance() > 0  # up to its clock, as a running backend does
        assert _edges(store)[("productpage.default", "reviews.default", "")] == 10
        # The leader stops (its heartbeats age past the lease); the other takes over from its watermark.
        time.sleep(1.2)
        _write(store, export_request([bookinfo_trace(rng, time.time_ns(), reviews_version="v1") for _ in range(10)]))
        assert second.beat() is True
        assert second.advance(second.now_ms() + WAIT_MS + 500) > 0
        assert _edges(store)[("productpage.default", "reviews.default", "")] == 20
        assert first.beat() is True  # back: the oldest leads again, and the other stands by
        assert second.beat() is False
        first.resign()  # a clean stop: the other leads at its next beat, within the lease
        assert second.beat() is True
        assert first.leading is False
    finally:
        asyncio.run(store.close())


@pytest.mark.parametrize("cluster", [None, CLUSTER])
def test_a_backend_stopping_cleanly_hands_the_graph_over_at_once(
    chdb_engine: ChdbEngine, tmp_path: Path, cluster: str | None
) -> None:
    store = new_store(chdb_engine, tmp_path, cluster=cluster, flush_interval=0.02)
    first = store.graph
    successor = ServiceGraphBuilder(store.engine, store.schema)
    first.id, successor.id = "1000-a", "2000-b"
    asyncio.run(store.start())
    try:
        wait_until(lambda: first.leading)
        assert successor.beat() is False  # the running one leads (its heartbeat is fresh)
    finally:
        asyncio.run(store.close())  # stops the builder thread, which resigns
    assert successor.beat() is True  # long before the 15 s lease would have run out
