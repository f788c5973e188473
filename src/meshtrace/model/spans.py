"""The read model: spans and traces as the store returns them and the APIs render them.

Attribute values are strings because the storage schema (the OpenTelemetry Collector's ClickHouse
exporter schema) keeps them as ``Map(String, String)``, converted the way the Collector's
``pcommon.Value.AsString`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SpanKind(StrEnum):
    """Span kinds under the names the Collector's ClickHouse exporter stores."""

    UNSPECIFIED = "Unspecified"
    INTERNAL = "Internal"
    SERVER = "Server"
    CLIENT = "Client"
    PRODUCER = "Producer"
    CONSUMER = "Consumer"

    @classmethod
    def parse(cls, text: str) -> SpanKind:
        """Accept ``server``, ``SPAN_KIND_SERVER``, ``Server`` and the OTLP enum number."""
        key = text.strip().upper().removeprefix("SPAN_KIND_")
        if key.isascii() and key.isdigit():  # not "¹": str.isdigit() is true for it, int() refuses it
            return list(cls)[int(key)]
        return cls[key]


class StatusCode(StrEnum):
    """Span status codes under the names the Collector's ClickHouse exporter stores."""

    UNSET = "Unset"
    OK = "Ok"
    ERROR = "Error"

    @classmethod
    def parse(cls, text: str) -> StatusCode:
        """Accept ``error``, ``STATUS_CODE_ERROR``, ``Error``."""
        return cls[text.strip().upper().removeprefix("STATUS_CODE_")]


@dataclass(slots=True)
class Event:
    time_ns: int
    name: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Link:
    trace_id: str
    span_id: str
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: SpanKind
    service: str
    start_ns: int
    duration_ns: int
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)
    scope_name: str = ""
    scope_version: str = ""
    events: list[Event] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what an adjuster changed before showing it

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns

    @property
    def is_error(self) -> bool:
        return self.status_code is StatusCode.ERROR


@dataclass(slots=True)
class Trace:
    trace_id: str
    spans: list[Span]
    warnings: list[str] = field(default_factory=list)  # shown with the trace (truncated, adjusted)

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def root(self) -> Span:
        """The span with no parent in this trace (the earliest one if the trace is broken)."""
        ids = {s.span_id for s in self.spans}
        roots = [s for s in self.spans if not s.parent_span_id or s.parent_span_id not in ids]
        return min(roots or self.spans, key=lambda s: (s.start_ns, bool(s.parent_span_id)))


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    kind: SpanKind


@dataclass(frozen=True, slots=True)
class DependencyLink:
    parent: str
    child: str
    call_count: int
