"""Read-model objects of the analytics: latency histograms, service graph edges, RED points.

A histogram is sparse: bucket index → count, 8 buckets per doubling anchored at 1 ms (bucket ``i``
covers [2^(i/8), 2^((i+1)/8)) ms), the layout the ingest-time tables store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BUCKETS_PER_DOUBLING = 8
_MS = 1_000_000


def _lower_ns(bucket: int) -> float:
    return _MS * 2.0 ** (bucket / BUCKETS_PER_DOUBLING)


@dataclass(slots=True)
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_sum_map(cls, value: Iterable[Iterable[int]]) -> Histogram:
        """From ClickHouse's ``sumMap`` result: ``[[bucket, ...], [count, ...]]``."""
        keys, counts = value
        return cls({int(k): int(c) for k, c in zip(keys, counts, strict=True) if int(c)})

    @classmethod
    def of(cls, durations_ns: Iterable[int]) -> Histogram:
        h = cls()
        for d in durations_ns:
            b = math.floor(BUCKETS_PER_DOUBLING * math.log2(max(d, 1) / _MS))
            h.counts[b] = h.counts.get(b, 0) + 1
        return h

    def merge(self, other: Histogram) -> None:
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """The q-quantile in nanoseconds, interpolated geometrically inside its bucket (±4.5%)."""
        total = self.total
        if not total:
            return None
        rank = q * total
        seen = 0
        for b in sorted(self.counts):
            c = self.counts[b]
            if seen + c >= rank:
                frac = (rank - seen) / c if c else 0.0
                return _lower_ns(b) * 2.0 ** (frac / BUCKETS_PER_DOUBLING)
            seen += c
        return _lower_ns(max(self.counts) + 1)

    def cumulative(self, bounds_s: Iterable[float]) -> list[int]:
        """Counts at or under each bound (seconds; exact for powers of two of a millisecond)."""
        out = []
        for bound in bounds_s:
            limit = BUCKETS_PER_DOUBLING * math.log2(bound * 1e9 / _MS)
            out.append(sum(c for b, c in self.counts.items() if b < limit - 1e-9))
        return out


def quantiles(h: Histogram, levels: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """``{"p50": ns, ...}`` for a histogram."""
    return {f"p{round(q * 100, 1):g}": h.quantile(q) for q in levels}


@dataclass(slots=True)
class GraphEdge:
    """Calls from one (service, version) to another in a window; ``connection_type`` is ``virtual_node``
    when one side sent no span (the virtual ``user``/``unknown`` callers, or a destination that was
    uninstrumented, external or never reached: see ``flags``)."""

    client: str
    server: str
    client_version: str
    server_version: str
    connection_type: str
    flags: str
    calls: int
    failed: int
    client_nanos: int
    server_nanos: int
    client_histogram: Histogram
    server_histogram: Histogram


@dataclass(slots=True)
class SeriesPoint:
    time_s: int
    calls: int
    errors: int
    nanos: int
    histogram: Histogram


@dataclass(slots=True)
class Series:
    """Per-step RED values of one service (and operation, when grouped by operation)."""

    labels: Mapping[str, str]
    points: list[SeriesPoint]


@dataclass(slots=True)
class OperationStats:
    service: str
    operation: str
    kind: str
    calls: int
    errors: int
    nanos: int
    histogram: Histogram


@dataclass(slots=True)
class ErrorGroup:
    service: str
    operation: str
    http_status_code: str
    response_flags: str
    count: int
    trace_ids: list[str]


@dataclass(slots=True)
class Outlier:
    trace_id: str
    span_start_ns: int
    duration_ns: int


@dataclass(slots=True)
class AttributeSkew:
    """How often an attribute value appears among outliers versus all spans of the operation."""

    key: str
    value: str
    outlier_share: float
    baseline_share: float
