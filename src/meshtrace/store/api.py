"""The storage contract: one writer and one reader protocol, whatever engine sits behind them.

Writer guarantees (what an acknowledgement to an OTLP sender rests on):

- ``SpanWriter.write`` returns only once the batch is durable: it survives ``kill -9`` of the process
  (and, with fsync on, loss of power). A batch that was not acknowledged may or may not be stored.
- Every acknowledged batch is applied to the tables exactly once, also when a crash forces a replay.
- Acknowledged spans become visible to readers within the flush interval (200 ms by default) plus one
  insert; ``SpanWriter.sync`` waits for that, for callers that need to read their own writes.
- When the writer is behind by more than its bound, ``write`` raises ``Overloaded`` at once instead of
  queueing without limit; senders retry.
- A client that retries a request it already got an acknowledgement for stores it twice: OTLP carries
  no request id to deduplicate on.

Reader guarantees:

- Every call is scoped to one tenant; nothing of another tenant is ever returned or counted.
- Results are fresh objects the caller owns.
- A search matches traces that contain at least one span satisfying *all* span conditions at once,
  newest first, and returns whole traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from meshtrace.model.spans import DependencyLink, Operation, SpanKind, StatusCode, Trace

if TYPE_CHECKING:
    from meshtrace.store.traceql_sql import Plan


@dataclass(frozen=True, slots=True)
class SpanBatch:
    """Validated spans of one export request: a serialized OTLP ExportTraceServiceRequest."""

    tenant: str
    payload: bytes
    span_count: int


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open interval of span start times, in nanoseconds since the epoch."""

    start_ns: int
    end_ns: int

    def newest_first(self, first_ns: int) -> list[TimeRange]:
        """The range cut from its end backwards into chunks of doubling length (``first_ns``, twice that,
        …): searches for the newest matches stop after the first chunks instead of ranking the whole
        window, so their cost follows the matches wanted, not the data stored."""
        out, end, size = [], self.end_ns, first_ns
        while end > self.start_ns:
            out.append(TimeRange(max(self.start_ns, end - size), end))
            end -= size
            size *= 2
        return out


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """Find traces containing a span that satisfies every set condition.

    ``attributes`` match a span attribute or a resource attribute with exactly that value.
    """

    tenant: str
    time: TimeRange
    service: str | None = None
    operation: str | None = None
    span_kind: SpanKind | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    status: StatusCode | None = None
    limit: int = 20


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One search hit: enough to list a trace without loading its spans."""

    trace_id: str
    start_ns: int
    end_ns: int


class SpanWriter(Protocol):
    async def write(self, batch: SpanBatch) -> None:
        """Store the batch durably; raise ``Overloaded`` when behind, ``StoreError`` when broken."""
        ...

    async def sync(self) -> None:
        """Wait until every batch acknowledged so far is visible to readers."""
        ...


class TraceReader(Protocol):
    def get_trace(self, tenant: str, trace_id: str, time: TimeRange | None = None) -> Trace | None:
        """All spans of one trace (``trace_id``: 32 lower-case hex digits), or None."""
        ...

    def find_trace_ids(self, query: TraceQuery) -> list[TraceSummary]:
        """Traces matching ``query``, newest first, at most ``query.limit``."""
        ...

    def find_traces(self, query: TraceQuery) -> list[Trace]:
        """``find_trace_ids`` with every span of every trace loaded, in the same order."""
        ...

    def get_trace_batch(self, tenant: str, trace_ids: list[str]) -> list[Trace]:
        """Several traces by id, in the order given; ids not found are left out."""
        ...

    def traceql_candidates(
        self, tenant: str, time: TimeRange, planned: Plan, limit: int, offset: int = 0
    ) -> list[TraceSummary]:
        """Traces that may satisfy a planned TraceQL query (a superset), newest first."""
        ...

    def tag_names(self, tenant: str, time: TimeRange, scope: str) -> list[str]:
        """Attribute keys seen in the window, ``scope`` span or resource."""
        ...

    def tag_values(
        self, tenant: str, time: TimeRange, scope: str, name: str, narrowed: Plan | None = None
    ) -> list[str]:
        """Values of one attribute in the window (``scope`` span, resource or "" for either)."""
        ...

    def get_services(self, tenant: str) -> list[str]:
        """Service names with spans in the retention window, sorted."""
        ...

    def get_operations(self, tenant: str, service: str, span_kind: SpanKind | None = None) -> list[Operation]:
        """Span names of a service (with their kinds), sorted by name then kind."""
        ...

    def get_dependencies(self, tenant: str, time: TimeRange) -> list[DependencyLink]:
        """Calls between services in the window: parent service → child service, with counts."""
        ...

    def count(self, tenant: str, time: TimeRange | None = None) -> tuple[int, int, int]:
        """Spans, distinct traces and distinct spans of a tenant (in a window, or all retained); spans
        exceed distinct spans when a sender delivered something twice."""
        ...
