"""Small fixes applied to every trace before it is shown, in order (Jaeger's adjusters, in spirit).

Order matters: ``dedupe_spans`` relies on ``sort_spans`` having put equal spans next to each other.
"""

from __future__ import annotations

from collections.abc import Callable

from meshtrace.model.spans import Trace

Adjuster = Callable[[Trace], Trace]


def sort_spans(trace: Trace) -> Trace:
    """Spans by start time, then id: stable output for every API and test."""
    trace.spans.sort(key=lambda s: (s.start_ns, s.span_id, s.duration_ns))
    return trace


def dedupe_spans(trace: Trace) -> Trace:
    """Drop exact repeats of a span (a sender retrying a request it already got acknowledged)."""
    seen: set[tuple[str, int, int, str]] = set()
    kept = []
    for span in trace.spans:
        key = (span.span_id, span.start_ns, span.duration_ns, span.service)
        if key not in seen:
            seen.add(key)
            kept.append(span)
    trace.spans = kept
    return trace


STANDARD: tuple[Adjuster, ...] = (sort_spans, dedupe_spans)


def adjust(trace: Trace, adjusters: tuple[Adjuster, ...] = STANDARD) -> Trace:
    for adjuster in adjusters:
        trace = adjuster(trace)
    return trace
