"""Small fixes applied to every trace before it is shown, in order (Jaeger's adjusters, in spirit).

Order matters: ``dedupe_spans`` relies on ``sort_spans`` having put equal spans next to each other, and
``clock_skew`` runs first so the order reflects the adjusted times. ``?raw=true`` skips them all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from meshtrace.model.spans import Span, SpanKind, Trace

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


def _host(span: Span) -> str:
    return span.resource.get("host.name") or span.resource.get("k8s.pod.name") or span.service


def _text(delta_ns: int) -> str:
    sign = "+" if delta_ns > 0 else "-"
    magnitude = abs(delta_ns)
    if magnitude >= 1_000_000_000:
        return f"{sign}{magnitude / 1e9:.3f}s"
    return f"{sign}{magnitude / 1e6:.3f}ms"


def clock_skew(trace: Trace) -> Trace:
    """Undo clock differences between the hosts of a call's two sides.

    A SERVER span can only run while the CLIENT span that called it waits. One recorded on another host
    that starts before its caller or ends after it shows that host's clock, not the call: it is moved
    into its caller (centred, leaving equal network time either side, as Jaeger's adjuster does), and
    everything under it on the same host moves with it. A callee longer than its caller is left alone
    (nothing says where it belongs). Each moved span says so in its warnings."""
    by_id = {s.span_id: s for s in trace.spans}
    children: dict[str, list[Span]] = {}
    for span in trace.spans:
        if span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append(span)
    roots = [s for s in trace.spans if s.parent_span_id not in by_id]
    shift: dict[str, int] = {s.span_id: 0 for s in roots}
    queue = deque(roots)
    moved = 0
    while queue:
        parent = queue.popleft()
        for child in children.get(parent.span_id, ()):
            if child.span_id in shift:
                continue  # a cycle or a repeated id: visit once
            delta = shift[parent.span_id] if _host(child) == _host(parent) else 0
            if (
                _host(child) != _host(parent)
                and parent.kind is SpanKind.CLIENT
                and child.kind is SpanKind.SERVER
                and child.duration_ns <= parent.duration_ns
                and (child.start_ns < parent.start_ns or child.end_ns > parent.end_ns)
            ):
                delta = parent.start_ns + (parent.duration_ns - child.duration_ns) // 2 - child.start_ns
                child.warnings.append(
                    f"clock skew: moved {_text(delta)} to fit inside its caller on {_host(parent)} "
                    "(the two hosts' clocks differ)"
                )
            elif delta:
                child.warnings.append(f"clock skew: moved {_text(delta)} with its parent on the same host")
            if delta:
                moved += 1
                child.start_ns += delta
                for event in child.events:
                    event.time_ns += delta
            shift[child.span_id] = delta
            queue.append(child)
    if moved:
        trace.warnings.append(f"clock skew: {moved} spans moved to fit their callers (?raw=true shows the times sent)")
    return trace


STANDARD: tuple[Adjuster, ...] = (clock_skew, sort_spans, dedupe_spans)


def adjust(trace: Trace, adjusters: tuple[Adjuster, ...] = STANDARD) -> Trace:
    for adjuster in adjusters:
        trace = adjuster(trace)
    return trace
