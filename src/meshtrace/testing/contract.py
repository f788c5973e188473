"""The storage contract suite: one set of tests every store connection mode must pass.

A connection mode subclasses ``StoreContract`` and provides a ``store`` fixture: a started ``Store`` with
an empty database. The suite writes the fixtures (``fixtures/traces/*.json``: Bookinfo traces as Istio's
proxies emit them, plus OTLP features Envoy never sends) under two tenants, then checks every span
against a reference conversion written here in plain Python, independent of the store's SQL, and runs
``fixtures/queries.json`` (searches with their expected traces, newest first).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from meshtrace.model.analytics import Histogram
from meshtrace.model.otlp_json import parse_otlp_json
from meshtrace.model.spans import DependencyLink, Event, Link, Operation, Span, SpanKind, StatusCode, Trace
from meshtrace.query.adjusters import sort_spans
from meshtrace.store import Store
from meshtrace.store.api import SpanBatch, TimeRange, TraceQuery

FIXTURE_EPOCH_NS = 1_700_000_000_000_000_000
MS = 1_000_000
TENANT = "contract-a"
OTHER_TENANT = "contract-b"
# Written for OTHER_TENANT too, so isolation is tested against data that exists under both.
SHARED = ("bookinfo_v1", "rich_span")
SEARCH_TENANT = "contract-search"  # the chunked-search test's own traces

_KINDS = list(SpanKind)
_STATUS = [StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR]


@dataclass(slots=True)
class Fixture:
    name: str
    request: ExportTraceServiceRequest
    trace_id: str

    @property
    def span_count(self) -> int:
        return sum(len(ss.spans) for rs in self.request.resource_spans for ss in rs.scope_spans)


def _fixture_dir() -> Any:
    return resources.files("meshtrace.testing").joinpath("fixtures")


def load_fixtures(shift_ns: int) -> dict[str, Fixture]:
    """Every fixture with its times moved by ``shift_ns``."""
    fixtures = {}
    for entry in sorted(_fixture_dir().joinpath("traces").iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        request = parse_otlp_json(entry.read_bytes())
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.start_time_unix_nano += shift_ns
                    span.end_time_unix_nano += shift_ns
                    for event in span.events:
                        event.time_unix_nano += shift_ns
        first = request.resource_spans[0].scope_spans[0].spans[0]
        fixtures[entry.name.removesuffix(".json")] = Fixture(
            entry.name.removesuffix(".json"), request, first.trace_id.hex()
        )
    return fixtures


def load_queries() -> list[dict[str, Any]]:
    return json.loads(_fixture_dir().joinpath("queries.json").read_text())


# -- the reference conversion: OTLP → what the store must return ----------------------------------


def _double_text(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _json_leaf(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return json.dumps(value.string_value, ensure_ascii=False)
    if kind == "bytes_value":
        return json.dumps(base64.b64encode(value.bytes_value).decode())
    if kind in ("array_value", "kvlist_value", None):
        return "null"
    return any_value_text(value)


def any_value_text(value: AnyValue) -> str:
    """An attribute value as text, the way the Collector's ``pcommon.Value.AsString`` renders it."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return _double_text(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return "[" + ",".join(_json_leaf(v) for v in value.array_value.values) + "]"
    if kind == "kvlist_value":
        items = sorted(value.kvlist_value.values, key=lambda kv: kv.key)
        return "{" + ",".join(f"{json.dumps(kv.key)}:{_json_leaf(kv.value)}" for kv in items) + "}"
    return ""


def _attrs(items: Any) -> dict[str, str]:
    return {kv.key: any_value_text(kv.value) for kv in items}


def reference_spans(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        service = resource.get("service.name") or "unknown_service"
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() if s.parent_span_id.strip(b"\0") else "",
                        name=s.name,
                        kind=_KINDS[s.kind],
                        service=service,
                        start_ns=s.start_time_unix_nano,
                        duration_ns=s.end_time_unix_nano - s.start_time_unix_nano,
                        status_code=_STATUS[s.status.code],
                        status_message=s.status.message,
                        trace_state=s.trace_state,
                        attributes=_attrs(s.attributes),
                        resource=resource,
                        scope_name=ss.scope.name,
                        scope_version=ss.scope.version,
                        events=[Event(e.time_unix_nano, e.name, _attrs(e.attributes)) for e in s.events],
                        links=[
                            Link(link.trace_id.hex(), link.span_id.hex(), link.trace_state, _attrs(link.attributes))
                            for link in s.links
                        ],
                    )
                )
    return sort_spans(Trace(spans[0].trace_id, spans)).spans


def _peer(span: Span) -> str:
    """Where a CLIENT span went, by Istio's ``outbound|port|subset|host`` (FQDN → name.namespace)."""
    cluster = span.attributes.get("upstream_cluster", "")
    parts = cluster.split("|")
    if cluster.startswith("outbound|") and len(parts) == 4 and parts[3]:
        host = parts[3]
        return ".".join(host.split(".")[:2]) if ".svc." in host else host
    return cluster or span.attributes.get("peer.service", "") or "unknown"


EdgeKey = tuple[str, str, str, str, str, str]


def reference_edges(fixtures: list[Fixture]) -> dict[EdgeKey, list[int]]:
    """The service graph by its definition, span by span: (client, server, client version, server
    version, connection type, response flags) → [calls, failed]."""
    edges: dict[EdgeKey, list[int]] = {}

    def add(key: EdgeKey, failed: bool) -> None:
        counts = edges.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += failed

    for fixture in fixtures:
        spans = reference_spans(fixture.request)
        version = {s.span_id: s.attributes.get("istio.canonical_revision", "") for s in spans}
        flags = {s.span_id: s.attributes.get("response_flags", "").strip("-") for s in spans}
        clients = {s.span_id: s for s in spans if s.kind is SpanKind.CLIENT}
        servers = [s for s in spans if s.kind is SpanKind.SERVER]
        served = {s.parent_span_id: s for s in servers if s.parent_span_id}
        for c in clients.values():
            s = served.get(c.span_id)
            if s is not None:
                add(
                    (c.service, s.service, version[c.span_id], version[s.span_id], "", flags[c.span_id]),
                    c.is_error or s.is_error,
                )
            else:
                add((c.service, _peer(c), version[c.span_id], "", "virtual_node", flags[c.span_id]), c.is_error)
        for s in servers:
            if s.parent_span_id and s.parent_span_id not in clients:
                add(("unknown", s.service, "", version[s.span_id], "virtual_node", flags[s.span_id]), s.is_error)
        for span in [*clients.values(), *servers]:
            if not span.parent_span_id:
                add(
                    ("user", span.service, "", version[span.span_id], "virtual_node", flags[span.span_id]),
                    span.is_error,
                )
    return edges


def reference_pairs(edges: dict[EdgeKey, list[int]]) -> dict[tuple[str, str], list[int]]:
    """Edges as the service graph API lists them: (source node id, target node id) → [calls, failed], a
    destination that never answered named ``"<name> (unreached)"`` or ``"<name> (external)"``."""
    out: dict[tuple[str, str], list[int]] = {}
    for (client, server, _, _, ctype, flags), (calls, failed) in edges.items():
        virtual_target = ctype and client not in ("user", "unknown")
        target = f"{server} ({'unreached' if flags else 'external'})" if virtual_target else server
        counts = out.setdefault((client, target), [0, 0])
        counts[0] += calls
        counts[1] += failed
    return out


def reference_dependencies(fixtures: list[Fixture]) -> list[DependencyLink]:
    """Jaeger's dependencies from the service graph: calls between services, virtual callers left out."""
    counts: dict[tuple[str, str], int] = {}
    for (client, server, *_), (calls, _) in reference_edges(fixtures).items():
        if client not in ("user", "unknown") and client != server:
            counts[(client, server)] = counts.get((client, server), 0) + calls
    return [DependencyLink(p, c, n) for (p, c), n in sorted(counts.items())]


def settle_graph(store: Store) -> None:
    """Resolve every edge half written so far (see ``ServiceGraphBuilder.advance``)."""
    graph = store.graph
    graph.advance(graph.now_ms() + graph.lag_ms + graph.wait_ms + 2 * graph.step_ms)


# -- the suite -------------------------------------------------------------------------------------


class StoreContract:
    """Subclass and provide a ``store`` fixture (class scope) returning a started, empty ``Store``."""

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, store: Store) -> dict[str, Fixture]:
        now = time.time_ns()
        shift = (now - 30 * 60 * 1_000_000_000) - FIXTURE_EPOCH_NS
        fixtures = load_fixtures(shift)

        async def write_all() -> None:
            for fixture in fixtures.values():
                payload = fixture.request.SerializeToString()
                await store.writer.write(SpanBatch(TENANT, payload, fixture.span_count))
                if fixture.name in SHARED:
                    await store.writer.write(SpanBatch(OTHER_TENANT, payload, fixture.span_count))
            await store.writer.sync()

        asyncio.run(write_all())
        settle_graph(store)
        return fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def window(cls, loaded: dict[str, Fixture]) -> TimeRange:
        now = time.time_ns()
        return TimeRange(now - 2 * 3600 * 1_000_000_000, now + 60 * 1_000_000_000)

    # every span, field by field

    def test_get_trace_returns_every_span_as_sent(self, store: Store, loaded: dict[str, Fixture]) -> None:
        for fixture in loaded.values():
            trace = store.reader.get_trace(TENANT, fixture.trace_id)
            assert trace is not None, fixture.name
            assert sort_spans(trace).spans == reference_spans(fixture.request), fixture.name

    def test_get_trace_within_time_range(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        fixture = loaded["bookinfo_v2"]
        trace = store.reader.get_trace(TENANT, fixture.trace_id, window)
        assert trace is not None
        assert len(trace.spans) == fixture.span_count
        before = TimeRange(window.start_ns - 3600 * 10**9, window.start_ns)
        assert store.reader.get_trace(TENANT, fixture.trace_id, before) is None

    def test_missing_trace_is_none(self, store: Store, loaded: dict[str, Fixture]) -> None:
        assert store.reader.get_trace(TENANT, "0123456789abcdef0123456789abcdef") is None

    def test_attribute_values_render_like_the_collector(self, store: Store, loaded: dict[str, Fixture]) -> None:
        trace = store.reader.get_trace(TENANT, loaded["rich_span"].trace_id)
        assert trace is not None
        root = trace.root
        assert root.attributes["http.response.status_code"] == "500"
        assert root.attributes["retry"] == "true"
        assert root.attributes["ratio"] == "0.25"
        assert root.attributes["blob"] == "3q2+7w=="
        assert root.attributes["tags"] == '["a",2,true]'
        assert root.attributes["ctx"] == '{"a":"x\\"y","z":false}'
        assert root.resource["host.cpus"] == "8"

    # tenants

    def test_tenants_never_see_each_other(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        only_a = loaded["bookinfo_v2"].trace_id
        assert store.reader.get_trace(TENANT, only_a) is not None
        assert store.reader.get_trace(OTHER_TENANT, only_a) is None
        assert store.reader.get_trace("nobody", loaded["bookinfo_v1"].trace_id) is None
        other = store.reader.find_traces(TraceQuery(OTHER_TENANT, window, service="reviews.default", limit=100))
        assert [t.trace_id for t in other] == [loaded["bookinfo_v1"].trace_id]
        assert "ratings.default" not in store.reader.get_services(OTHER_TENANT)
        assert store.reader.get_services("nobody") == []
        assert store.reader.get_dependencies("nobody", window) == []

    # services, operations, dependencies

    def test_services(self, store: Store, loaded: dict[str, Fixture]) -> None:
        expected = sorted({s.service for f in loaded.values() for s in reference_spans(f.request)})
        assert store.reader.get_services(TENANT) == expected

    def test_operations(self, store: Store, loaded: dict[str, Fixture]) -> None:
        spans = [s for f in loaded.values() for s in reference_spans(f.request)]
        for service in {s.service for s in spans}:
            expected = sorted({(s.name, s.kind.value) for s in spans if s.service == service})
            got = store.reader.get_operations(TENANT, service)
            assert [(o.name, o.kind.value) for o in got] == expected, service
        servers = store.reader.get_operations(TENANT, "reviews.default", SpanKind.SERVER)
        assert servers == [Operation("reviews.default.svc.cluster.local:9080/*", SpanKind.SERVER)]

    def test_dependencies(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        assert store.reader.get_dependencies(TENANT, window) == reference_dependencies(list(loaded.values()))

    # analytics computed at ingest

    def test_service_graph_edges(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        edges = store.analytics.edges(TENANT, window)
        got = {
            (e.client, e.server, e.client_version, e.server_version, e.connection_type, e.flags): [e.calls, e.failed]
            for e in edges
        }
        assert got == reference_edges(list(loaded.values()))
        for e in edges:
            assert e.client_histogram.total == e.calls
            assert e.server_histogram.total == (
                0 if e.connection_type and e.client != "user" and e.client != "unknown" else e.calls
            )
        shared = [f for f in loaded.values() if f.name in SHARED]
        other = store.analytics.edges(OTHER_TENANT, window)
        assert sum(e.calls for e in other) == sum(n for n, _ in reference_edges(shared).values())
        assert store.analytics.edges("nobody", window) == []

    def test_span_metrics(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        spans = [s for f in loaded.values() for s in reference_spans(f.request)]
        expected: dict[tuple[str, str, str], list[int]] = {}
        for s in spans:
            counts = expected.setdefault((s.service, s.name, s.kind.value), [0, 0, 0])
            counts[0] += 1
            counts[1] += s.is_error
            counts[2] += s.duration_ns
        stored = store.analytics.operations(TENANT, window)
        got = {(o.service, o.operation, o.kind): [o.calls, o.errors, o.nanos] for o in stored}
        assert got == expected
        # Latency histograms bucket exactly as the reference does, so their quantiles agree too.
        for o in stored:
            durations = [
                s.duration_ns for s in spans if (s.service, s.name, s.kind.value) == (o.service, o.operation, o.kind)
            ]
            assert o.histogram.counts == Histogram.of(durations).counts, (o.service, o.operation)

    def test_red_series_add_up(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        totals = {(o.service, o.operation): o.calls for o in store.analytics.operations(TENANT, window, kind="server")}
        series = store.analytics.red(TENANT, window, 600, kind="server", by_operation=True)
        assert {(s.labels["service_name"], s.labels["operation"]): sum(p.calls for p in s.points) for s in series} == (
            totals
        )
        assert all(p.time_s % 60 == 0 for s in series for p in s.points)

    # searches

    def test_queries(self, store: Store, loaded: dict[str, Fixture], window: TimeRange) -> None:
        for case in load_queries():
            q = case["query"]
            query = TraceQuery(
                tenant=TENANT,
                time=window,
                service=q.get("service"),
                operation=q.get("operation"),
                span_kind=SpanKind.parse(q["kind"]) if "kind" in q else None,
                attributes=q.get("attributes", {}),
                min_duration_ns=q["min_duration_ms"] * MS if "min_duration_ms" in q else None,
                max_duration_ns=q["max_duration_ms"] * MS if "max_duration_ms" in q else None,
                status=StatusCode.parse(q["status"]) if "status" in q else None,
                limit=q.get("limit", 100),
            )
            expected = [loaded[name].trace_id for name in case["expected"]]
            found = store.reader.find_traces(query)
            assert [t.trace_id for t in found] == expected, case["name"]
            for trace in found:
                assert len(trace.spans) == next(f for f in loaded.values() if f.trace_id == trace.trace_id).span_count
            ids = [s.trace_id for s in store.reader.find_trace_ids(query)]
            assert ids == expected, case["name"]

    def test_search_ranks_by_latest_match_across_chunks(self, store: Store) -> None:
        """Searches go newest minute first, then back in chunks: traces over two hours, some with matching
        spans minutes apart (across chunk boundaries), give exactly the reference ranking for every window
        and limit."""
        now = time.time_ns()
        minute = 60 * 1_000_000_000
        starts: dict[str, list[int]] = {}
        for k in range(14):
            first = now - (k * 9 + 1) * minute - k * 1_000_000
            later = [first + (k % 4) * 7 * minute] if k % 2 else []  # 7 or 21 minutes on: passing others
            starts[f"{k + 1:032x}"] = [first, *later]
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name").value.string_value = "chunked"
        scope = resource_spans.scope_spans.add()
        for trace_hex, times in starts.items():
            for i, start in enumerate(times):
                span = scope.spans.add(name="GET /", kind=2, start_time_unix_nano=start, end_time_unix_nano=start + 5)
                span.trace_id = bytes.fromhex(trace_hex)
                span.span_id = bytes.fromhex(f"{i + 1:016x}")
        count = sum(len(t) for t in starts.values())

        async def write() -> None:
            await store.writer.write(SpanBatch(SEARCH_TENANT, request.SerializeToString(), count))
            await store.writer.sync()

        asyncio.run(write())
        # Windows whose newest minute holds a match (the next chunk sized by the rate found) or none (the
        # rest of the window at once), wide and narrow.
        for start, end in ((-120, 1), (-120, 0), (-120, -5), (-120, -20), (-40, -10)):
            window = TimeRange(now + start * minute, now + end * minute)
            inside = {t: [x for x in v if window.start_ns <= x < window.end_ns] for t, v in starts.items()}
            ranking = sorted((t for t in inside if inside[t]), key=lambda t: (-max(inside[t]), t))
            for limit in range(1, len(starts) + 2):
                query = TraceQuery(tenant=SEARCH_TENANT, time=window, service="chunked", limit=limit)
                found = [s.trace_id for s in store.reader.find_trace_ids(query)]
                assert found == ranking[:limit], (start, end, limit)


__all__ = [
    "FIXTURE_EPOCH_NS",
    "Fixture",
    "StoreContract",
    "any_value_text",
    "load_fixtures",
    "reference_edges",
    "reference_pairs",
    "reference_spans",
    "settle_graph",
]
