"""``TraceReader`` over the ClickHouse tables: SQL in, read-model objects out.

Every statement filters on ``Tenant`` first (the leading column of every sort key) and passes values as
server-side parameters. Searches run on the narrow search table unless they filter on an attribute it
does not carry; traces are then read from ``otel_traces`` at exactly the (10-minute bucket, trace id)
keys the trace-id lookup table gives.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshtrace.model.spans import DependencyLink, Event, Link, Operation, Span, SpanKind, StatusCode, Trace
from meshtrace.store.analytics import AnalyticsReader
from meshtrace.store.api import TimeRange, TraceQuery, TraceSummary
from meshtrace.store.engine import Engine
from meshtrace.store.schema import HOT_ATTRIBUTES, REQUEST_ID, Schema
from meshtrace.store.traceql_sql import Plan, candidates

_NS_PER_S = 1_000_000_000
_REQUEST_SPAN_S = 3600  # how long after its first span a request's spans are looked for
SEARCH_CHUNK_NS = 60 * _NS_PER_S  # a search's first chunk: the window's newest minute


def _next_chunk(covered_ns: int, found: int, limit: int, remaining_ns: int) -> int:
    """How far back the next chunk of a search reaches. Nothing found in the newest minute: the rest of the
    window in one query (a quiet service, or data that stopped a while ago, costs one small query more than
    a single scan). Some found: enough, at the rate found so far, for what is missing, with half again as
    margin, and at least twice what was covered. Dense recent matches (the usual question on a busy mesh)
    finish in the first minute, whatever the window holds."""
    if not found:
        return remaining_ns
    return max(2 * covered_ns, covered_ns * (limit - found) * 3 // (2 * found))


TAG_SAMPLE = 100_000  # spans whose attribute keys autocomplete looks at
MAX_TRACE_SPANS = 100_000  # spans of one trace returned at most (a runaway trace would exhaust memory)

SPAN_COLUMNS = """TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName,
    toUnixTimestamp64Nano(Timestamp), Duration, StatusCode, StatusMessage,
    SpanAttributes, ResourceAttributes, ScopeName, ScopeVersion,
    arrayMap(t -> toUnixTimestamp64Nano(t), `Events.Timestamp`), `Events.Name`, `Events.Attributes`,
    `Links.TraceId`, `Links.SpanId`, `Links.TraceState`, `Links.Attributes`"""


def _kind(text: str) -> SpanKind:
    try:
        return SpanKind.parse(text)
    except (KeyError, IndexError):
        return SpanKind.UNSPECIFIED


def _status(text: str) -> StatusCode:
    try:
        return StatusCode.parse(text)
    except KeyError:
        return StatusCode.UNSET


def span_from_row(row: list[Any]) -> Span:
    """Map one ``SPAN_COLUMNS`` row; accepts both the exporter's old and new kind/status spellings."""
    (
        trace_id,
        span_id,
        parent,
        state,
        name,
        kind,
        service,
        start,
        duration,
        status,
        message,
        attrs,
        resource,
        scope_name,
        scope_version,
        ev_times,
        ev_names,
        ev_attrs,
        link_traces,
        link_spans,
        link_states,
        link_attrs,
    ) = row
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=_kind(kind),
        service=service,
        start_ns=int(start),
        duration_ns=int(duration),
        status_code=_status(status),
        status_message=message,
        trace_state=state,
        attributes=dict(attrs),
        resource=dict(resource),
        scope_name=scope_name,
        scope_version=scope_version,
        events=[Event(int(t), n, dict(a)) for t, n, a in zip(ev_times, ev_names, ev_attrs, strict=True)],
        links=[
            Link(t, s, st, dict(a))
            for t, s, st, a in zip(link_traces, link_spans, link_states, link_attrs, strict=True)
        ],
    )


class Conditions:
    """Accumulates a WHERE clause and its parameters."""

    def __init__(self, tenant: str) -> None:
        self.clauses = ["Tenant = {tenant:String}"]
        self.params: dict[str, Any] = {"tenant": tenant}

    def add(self, clause: str, **params: Any) -> None:
        self.clauses.append(clause)
        self.params.update(params)

    def time(self, time: TimeRange) -> None:
        self.add(
            "Timestamp >= fromUnixTimestamp64Nano({t0:Int64}) AND Timestamp < fromUnixTimestamp64Nano({t1:Int64})",
            t0=time.start_ns,
            t1=time.end_ns,
        )

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)


def indexable(query: TraceQuery) -> bool:
    """Whether the search table alone can answer the query (its filters are all columns there)."""
    return all(key in HOT_ATTRIBUTES or key == REQUEST_ID for key in query.attributes)


def search_conditions(query: TraceQuery, *, on_index: bool) -> Conditions:
    where = Conditions(query.tenant)
    where.time(query.time)
    if query.service:
        where.add("ServiceName = {service:String}", service=query.service)
    if query.operation:
        where.add("SpanName = {operation:String}", operation=query.operation)
    if query.span_kind:
        where.add("SpanKind = {kind:String}", kind=query.span_kind.value)
    if query.min_duration_ns is not None:
        where.add("Duration >= {min_d:UInt64}", min_d=query.min_duration_ns)
    if query.max_duration_ns is not None:
        where.add("Duration <= {max_d:UInt64}", max_d=query.max_duration_ns)
    if query.status is not None:
        where.add("StatusCode = {status:String}", status=query.status.value)
    for i, (key, value) in enumerate(sorted(query.attributes.items())):
        params = {f"k{i}": key, f"v{i}": value}
        if key == REQUEST_ID and on_index:
            continue  # resolved to trace ids by ``request_id_condition``
        if on_index:
            where.add(f"{HOT_ATTRIBUTES[key]} = {{v{i}:String}}", **params)
        elif key in HOT_ATTRIBUTES:
            where.add(f"SpanAttributes[{{k{i}:String}}] = {{v{i}:String}}", **params)
        else:
            where.add(
                f"(SpanAttributes[{{k{i}:String}}] = {{v{i}:String}} "
                f"OR ResourceAttributes[{{k{i}:String}}] = {{v{i}:String}})",
                **params,
            )
    return where


class ClickHouseReader:
    """Reads the tables ``Schema`` describes; every method may raise ``StoreError``."""

    def __init__(self, engine: Engine, schema: Schema, *, max_trace_spans: int = MAX_TRACE_SPANS) -> None:
        self.engine = engine
        self.schema = schema
        self.max_trace_spans = max_trace_spans
        self.analytics = AnalyticsReader(engine, schema)

    def _spans(self, where: Conditions) -> list[Span]:
        # One span past the limit per trace tells a trace that was cut from one that just fits.
        rows = self.engine.query(
            f"SELECT {SPAN_COLUMNS} FROM {self.schema.traces} WHERE {where.sql} ORDER BY Timestamp, SpanId "
            "LIMIT {per_trace:UInt32} BY TraceId",
            {**where.params, "per_trace": self.max_trace_spans + 1},
        )
        return [span_from_row(row) for row in rows]

    def _trace(self, trace_id: str, spans: list[Span]) -> Trace:
        if len(spans) <= self.max_trace_spans:
            return Trace(trace_id, spans)
        return Trace(
            trace_id,
            spans[: self.max_trace_spans],
            [
                f"this trace has more than {self.max_trace_spans} spans: only its first {self.max_trace_spans} "
                "are shown (the backend's --max-trace-spans)"
            ],
        )

    def _located(self, where: Conditions, trace_ids: list[str]) -> list[Span]:
        """Spans of these traces, read at the (bucket, trace id) keys the lookup table gives for them."""
        where.add(
            f"""(toStartOfTenMinutes(Timestamp), TraceId) IN (
                SELECT arrayJoin(arrayMap(
                    i -> toStartOfTenMinutes(Start) + toIntervalMinute(10 * i),
                    range(toUInt32(intDiv(dateDiff('minute', toStartOfTenMinutes(Start), End), 10) + 1)))),
                    TraceId
                FROM {self.schema.trace_id_ts}
                WHERE TraceId IN {{ids:Array(String)}})""",
            ids=trace_ids,
        )
        return self._spans(where)

    def get_trace(self, tenant: str, trace_id: str, time: TimeRange | None = None) -> Trace | None:
        def where() -> Conditions:
            conditions = Conditions(tenant)
            if time is not None:
                conditions.time(time)
            conditions.add("TraceId = {trace_id:String}", trace_id=trace_id)
            return conditions

        spans = self._located(where(), [trace_id])
        if not spans:
            # The lookup table is written after the span table within one insert: spans can be readable a
            # moment before their location is. A miss is confirmed on the span table itself (its trace-id
            # bloom filter keeps that to a few granules), so nothing acknowledged and counted is a 404.
            spans = self._spans(where())
        return self._trace(trace_id, spans) if spans else None

    def find_trace_ids(self, query: TraceQuery) -> list[TraceSummary]:
        """Traces ranked by their latest matching span (as Jaeger's Elasticsearch storage ranks them),
        searched newest chunk first (``_next_chunk``): a trace found in a chunk has no match in any newer
        one, so its latest match is known exactly there, and the search stops once ``limit`` traces are
        found. The summary's start and end are those of its matching spans in that chunk."""
        on_index = indexable(query)
        if on_index and REQUEST_ID in query.attributes:
            # The request id names its traces exactly: look them up by key, then search only the
            # minutes they cover instead of every span of the window.
            found = self.engine.query(
                f"SELECT TraceId, toUnixTimestamp(Start) FROM {self.schema.request_ids} "
                "WHERE Tenant = {tenant:String} AND RequestId = {request_id:String}",
                {"tenant": query.tenant, "request_id": query.attributes[REQUEST_ID]},
            )
            if not found:
                return []
            starts = [int(start) for _, start in found]
            where = search_conditions(query, on_index=True)
            where.add("TraceId IN {request_traces:Array(String)}", request_traces=[tid for tid, _ in found])
            where.add(
                "Timestamp >= fromUnixTimestamp64Nano({r0:Int64}) AND Timestamp < fromUnixTimestamp64Nano({r1:Int64})",
                r0=min(starts) * _NS_PER_S,
                r1=(max(starts) + _REQUEST_SPAN_S) * _NS_PER_S,
            )
            return self._ranked(where, on_index, query.limit)
        out: list[TraceSummary] = []
        window, end, size = query.time, query.time.end_ns, SEARCH_CHUNK_NS
        while end > window.start_ns and len(out) < query.limit:
            chunk = TimeRange(max(window.start_ns, end - size), end)
            where = search_conditions(replace(query, time=chunk), on_index=on_index)
            if out:
                where.add("TraceId NOT IN {seen:Array(String)}", seen=[s.trace_id for s in out])
            out += self._ranked(where, on_index, query.limit - len(out))
            end = chunk.start_ns
            size = _next_chunk(window.end_ns - end, len(out), query.limit, end - window.start_ns)
        return out

    def _ranked(self, where: Conditions, on_index: bool, limit: int) -> list[TraceSummary]:
        rows = self.engine.query(
            f"""SELECT TraceId,
                   min(toUnixTimestamp64Nano(Timestamp)) AS first_start,
                   max(toUnixTimestamp64Nano(Timestamp)) AS last_start,
                   max(toUnixTimestamp64Nano(Timestamp) + Duration) AS last_end
            FROM {self.schema.span_index if on_index else self.schema.traces}
            WHERE {where.sql}
            GROUP BY TraceId
            ORDER BY last_start DESC, TraceId
            LIMIT {{limit:UInt32}}""",
            {**where.params, "limit": limit},
        )
        return [TraceSummary(tid, int(start), int(end)) for tid, start, _, end in rows]

    def find_traces(self, query: TraceQuery) -> list[Trace]:
        return self.get_trace_batch(query.tenant, [s.trace_id for s in self.find_trace_ids(query)])

    def get_trace_batch(self, tenant: str, trace_ids: list[str]) -> list[Trace]:
        """Several traces by id, in the order given (missing ones left out)."""
        if not trace_ids:
            return []
        by_trace: dict[str, list[Span]] = {tid: [] for tid in trace_ids}
        for span in self._located(Conditions(tenant), trace_ids):
            by_trace[span.trace_id].append(span)
        unlocated = [tid for tid, spans in by_trace.items() if not spans]
        if unlocated:  # found by a search a moment before the lookup table has them (see ``get_trace``)
            where = Conditions(tenant)
            where.add("TraceId IN {unlocated:Array(String)}", unlocated=unlocated)
            for span in self._spans(where):
                by_trace[span.trace_id].append(span)
        return [self._trace(tid, spans) for tid, spans in by_trace.items() if spans]

    def traceql_candidates(
        self, tenant: str, time: TimeRange, planned: Plan, limit: int, offset: int = 0
    ) -> list[TraceSummary]:
        """Traces that may match a TraceQL query (see ``traceql_sql``), newest first."""
        return candidates(self.engine, self.schema, tenant, time, planned, limit, offset)

    def tag_names(self, tenant: str, time: TimeRange, scope: str) -> list[str]:
        """Attribute keys of ``scope`` (span or resource) among the window's newest spans (at most
        ``TAG_SAMPLE`` of them: autocomplete wants the common keys fast, not an exhaustive scan)."""
        column = "ResourceAttributes" if scope == "resource" else "SpanAttributes"
        where = Conditions(tenant)
        where.time(time)
        rows = self.engine.query(
            f"""SELECT DISTINCT key FROM (
                SELECT mapKeys({column}) AS keys FROM {self.schema.traces} WHERE {where.sql}
                LIMIT {TAG_SAMPLE}) ARRAY JOIN keys AS key
            ORDER BY key LIMIT 1000""",
            where.params,
        )
        return [row[0] for row in rows]

    def tag_values(
        self, tenant: str, time: TimeRange, scope: str, name: str, narrowed: Plan | None = None
    ) -> list[str]:
        """Values of one attribute (``scope``: span, resource, or "" for either) in the window, at most
        1000; ``narrowed`` (a TraceQL plan for the span table) restricts them to matching spans."""
        where = Conditions(tenant)
        where.time(time)
        if scope == "span":
            value, present = "SpanAttributes[{tag:String}]", "mapContains(SpanAttributes, {tag:String})"
        elif scope == "resource":
            value, present = "ResourceAttributes[{tag:String}]", "mapContains(ResourceAttributes, {tag:String})"
        else:
            value = (
                "if(mapContains(SpanAttributes, {tag:String}), SpanAttributes[{tag:String}], "
                "ResourceAttributes[{tag:String}])"
            )
            present = "(mapContains(SpanAttributes, {tag:String}) OR mapContains(ResourceAttributes, {tag:String}))"
        where.add(present, tag=name)
        if narrowed is not None and narrowed.where:
            where.add(f"({narrowed.where})", **narrowed.params)
        rows = self.engine.query(
            f"SELECT DISTINCT {value} AS v FROM {self.schema.traces} WHERE {where.sql} ORDER BY v LIMIT 1000",
            where.params,
        )
        return [row[0] for row in rows]

    def get_services(self, tenant: str) -> list[str]:
        rows = self.engine.query(
            f"SELECT DISTINCT ServiceName FROM {self.schema.operations} WHERE Tenant = {{tenant:String}} "
            "ORDER BY ServiceName",
            {"tenant": tenant},
        )
        return [row[0] for row in rows]

    def get_operations(self, tenant: str, service: str, span_kind: SpanKind | None = None) -> list[Operation]:
        where = Conditions(tenant)
        where.add("ServiceName = {service:String}", service=service)
        if span_kind is not None:
            where.add("SpanKind = {kind:String}", kind=span_kind.value)
        rows = self.engine.query(
            f"SELECT SpanName, SpanKind FROM {self.schema.operations} WHERE {where.sql} "
            "GROUP BY SpanName, SpanKind ORDER BY SpanName, SpanKind",
            where.params,
        )
        return [Operation(name, _kind(kind)) for name, kind in rows]

    def get_dependencies(self, tenant: str, time: TimeRange) -> list[DependencyLink]:
        """From the ingest-time service graph (see ``meshtrace.store.graph``), not a join of spans."""
        return [DependencyLink(p, c, n) for p, c, n in self.analytics.dependencies(tenant, time)]

    def count(self, tenant: str, time: TimeRange | None = None) -> tuple[int, int, int]:
        where = Conditions(tenant)
        if time is not None:
            where.time(time)
        rows = self.engine.query(
            f"SELECT count(), uniqExact(TraceId), uniqExact(TraceId, SpanId) FROM {self.schema.traces} "
            f"WHERE {where.sql}",
            where.params,
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])
