"""Analyses of loaded traces: critical path, self time, root-cause candidate, trace comparison.

Pure functions over ``Trace`` objects, iterative (a 50k-span trace can be thousands of levels deep).

The critical path follows the usual rule: from the end of a span, walk back through the child that
finished last before the current point, then continue before that child's start; time not covered by a
child on the path is the span's own. Children running concurrently with the chosen one are off the path.
A child that outlives its parent (clock skew, async work) is clipped to the parent. The path's segments
add up exactly to the root's duration, which is what makes comparing two traces by it exact: the
per-span differences of critical-path time sum to the difference of the two traces' durations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshtrace.model.spans import Span, Trace


@dataclass(slots=True)
class Segment:
    span_id: str
    start_ns: int
    end_ns: int


def _children(trace: Trace) -> tuple[Span, dict[str, list[Span]]]:
    ids = {s.span_id for s in trace.spans}
    kids: dict[str, list[Span]] = defaultdict(list)
    for s in trace.spans:
        if s.parent_span_id and s.parent_span_id in ids and s.parent_span_id != s.span_id:
            kids[s.parent_span_id].append(s)
    return trace.root, kids


def critical_path(trace: Trace) -> list[Segment]:
    """Segments of the critical path, latest first."""
    root, kids = _children(trace)
    segments: list[Segment] = []
    # Frames: (span, cursor, remaining children sorted by end, latest first). Each frame emits its own
    # time between children on the path, descending into the child that ended last before the cursor.
    stack: list[tuple[Span, int, list[Span]]] = [
        (root, root.end_ns, sorted(kids.get(root.span_id, []), key=lambda c: (c.end_ns, c.start_ns), reverse=True))
    ]
    visited = {root.span_id}
    while stack:
        span, cursor, pending = stack.pop()
        child = None
        while pending:
            candidate = pending.pop(0)
            if candidate.span_id in visited:
                continue
            if min(candidate.end_ns, span.end_ns) <= cursor and candidate.start_ns < cursor:
                child = candidate
                break
        if child is None:
            if cursor > span.start_ns:
                segments.append(Segment(span.span_id, span.start_ns, cursor))
            continue
        child_end = min(child.end_ns, span.end_ns, cursor)
        child_start = max(child.start_ns, span.start_ns)
        if cursor > child_end:
            segments.append(Segment(span.span_id, child_end, cursor))
        # Resume the parent before the child's start, then (popped first) walk the child.
        stack.append((span, child_start, pending))
        visited.add(child.span_id)
        grandchildren = sorted(kids.get(child.span_id, []), key=lambda c: (c.end_ns, c.start_ns), reverse=True)
        clipped = Span(
            child.trace_id,
            child.span_id,
            child.parent_span_id,
            child.name,
            child.kind,
            child.service,
            child_start,
            child_end - child_start,
        )
        stack.append((clipped, child_end, grandchildren))
    return segments


def critical_time(trace: Trace) -> dict[str, int]:
    """Nanoseconds each span spends on the critical path (spans off the path are absent)."""
    out: dict[str, int] = defaultdict(int)
    for seg in critical_path(trace):
        out[seg.span_id] += seg.end_ns - seg.start_ns
    return dict(out)


def self_time(trace: Trace) -> dict[str, int]:
    """Each span's duration not covered by any of its children (children clipped to the span)."""
    _, kids = _children(trace)
    out = {}
    for span in trace.spans:
        intervals = sorted(
            (max(c.start_ns, span.start_ns), min(c.end_ns, span.end_ns)) for c in kids.get(span.span_id, [])
        )
        covered, cur_start, cur_end = 0, None, None
        for start, end in intervals:
            if end <= start:
                continue
            if cur_end is None or start > cur_end:
                if cur_end is not None and cur_start is not None:
                    covered += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        if cur_end is not None and cur_start is not None:
            covered += cur_end - cur_start
        out[span.span_id] = span.duration_ns - covered
    return out


def root_cause(trace: Trace) -> Span | None:
    """The first failing span with no failing descendant: where the error started, as far as the
    trace shows (an error that propagated up marks every ancestor too)."""
    _, kids = _children(trace)
    failing = [s for s in trace.spans if s.is_error]
    if not failing:
        return None
    failing_ids = {s.span_id for s in failing}

    def has_failing_descendant(span: Span) -> bool:
        todo = list(kids.get(span.span_id, []))
        while todo:
            s = todo.pop()
            if s.span_id in failing_ids:
                return True
            todo.extend(kids.get(s.span_id, []))
        return False

    leaves = [s for s in failing if not has_failing_descendant(s)]
    return min(leaves, key=lambda s: (s.end_ns, s.start_ns, s.span_id))


# -- comparison ------------------------------------------------------------------------------------

Path = tuple[tuple[str, str, int], ...]


def span_paths(trace: Trace) -> dict[Path, Span]:
    """Each span keyed by its path from the root: (service, name, n-th such sibling by start time)."""
    root, kids = _children(trace)
    out: dict[Path, Span] = {}
    stack: list[tuple[Span, Path]] = [(root, (((root.service, root.name, 0)),))]
    while stack:
        span, path = stack.pop()
        out[path] = span
        seen: dict[tuple[str, str], int] = defaultdict(int)
        for child in sorted(kids.get(span.span_id, []), key=lambda c: (c.start_ns, c.span_id)):
            n = seen[(child.service, child.name)]
            seen[(child.service, child.name)] += 1
            stack.append((child, (*path, (child.service, child.name, n))))
    return out


@dataclass(slots=True)
class PathDelta:
    """One aligned span path of two traces (or two groups: then means and presence rates)."""

    path: Path
    a_duration_ns: float | None
    b_duration_ns: float | None
    a_critical_ns: float
    b_critical_ns: float
    a_presence: float = 1.0
    b_presence: float = 1.0

    @property
    def status(self) -> str:
        if self.a_duration_ns is None:
            return "extra"  # only in B
        if self.b_duration_ns is None:
            return "missing"  # only in A
        return "both"

    @property
    def contribution_ns(self) -> float:
        """How much this span's critical-path time adds to B's duration over A's."""
        return self.b_critical_ns - self.a_critical_ns


@dataclass(slots=True)
class Comparison:
    a_duration_ns: float
    b_duration_ns: float
    deltas: list[PathDelta] = field(default_factory=list)

    @property
    def difference_ns(self) -> float:
        return self.b_duration_ns - self.a_duration_ns


def _group_profile(traces: list[Trace]) -> tuple[float, dict[Path, tuple[float, float, float]]]:
    """Mean root duration; per path: (presence rate, mean duration where present, mean critical time)."""
    n = len(traces)
    durations: dict[Path, list[int]] = defaultdict(list)
    critical: dict[Path, int] = defaultdict(int)
    total = 0
    for trace in traces:
        paths = span_paths(trace)
        crit = critical_time(trace)
        root = trace.root
        total += root.duration_ns
        for path, span in paths.items():
            durations[path].append(span.duration_ns)
            critical[path] += crit.get(span.span_id, 0)
    profile = {p: (len(d) / n, sum(d) / len(d), critical[p] / n) for p, d in durations.items()}
    return total / n, profile


def compare(a: Iterable[Trace], b: Iterable[Trace]) -> Comparison:
    """Align A and B by span path; deltas sorted by their contribution to the difference, largest first.
    With one trace per side the numbers are that trace's; with groups they are means."""
    group_a, group_b = list(a), list(b)
    if not group_a or not group_b:
        raise ValueError("both sides of a comparison need at least one trace")
    total_a, prof_a = _group_profile(group_a)
    total_b, prof_b = _group_profile(group_b)
    deltas = []
    for path in prof_a.keys() | prof_b.keys():
        pa, pb = prof_a.get(path), prof_b.get(path)
        deltas.append(
            PathDelta(
                path,
                pa[1] if pa else None,
                pb[1] if pb else None,
                pa[2] if pa else 0.0,
                pb[2] if pb else 0.0,
                pa[0] if pa else 0.0,
                pb[0] if pb else 0.0,
            )
        )
    deltas.sort(key=lambda d: (-abs(d.contribution_ns), d.status == "both", d.path))
    return Comparison(total_a, total_b, deltas)
