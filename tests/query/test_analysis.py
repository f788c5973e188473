"""Critical path, self time, root cause and comparison on hand-built traces with known answers."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshtrace.model.spans import Span, SpanKind, StatusCode, Trace
from meshtrace.query.analysis import compare, critical_path, critical_time, root_cause, self_time

TID = "0" * 31 + "1"


def span(span_id: str, parent: str, start: int, end: int, *, service: str = "svc", error: bool = False) -> Span:
    return Span(
        TID,
        span_id,
        parent,
        f"op-{span_id}",
        SpanKind.SERVER,
        service,
        start,
        end - start,
        StatusCode.ERROR if error else StatusCode.UNSET,
    )


def concurrent() -> Trace:
    """A [0,100] with B [10,60] and C [20,90] running at once, then D [92,98]; C calls E [30,50];
    D's child F [95,120] outlives it."""
    return Trace(
        TID,
        [
            span("a", "", 0, 100),
            span("b", "a", 10, 60),
            span("c", "a", 20, 90),
            span("e", "c", 30, 50),
            span("d", "a", 92, 98),
            span("f", "d", 95, 120),
        ],
    )


def test_critical_path_skips_the_concurrent_child() -> None:
    path = [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(concurrent())]
    assert path == [
        ("a", 98, 100),
        ("f", 95, 98),  # clipped to its parent
        ("d", 92, 95),
        ("a", 90, 92),
        ("c", 50, 90),
        ("e", 30, 50),
        ("c", 20, 30),
        ("a", 0, 20),
    ]
    assert critical_time(concurrent()) == {"a": 24, "f": 3, "d": 3, "c": 50, "e": 20}


def test_self_time_subtracts_the_union_of_children() -> None:
    assert self_time(concurrent()) == {"a": 14, "b": 50, "c": 50, "e": 20, "d": 3, "f": 25}


def test_root_cause_is_the_deepest_first_failure() -> None:
    trace = concurrent()
    assert root_cause(trace) is None
    for s in trace.spans:
        s.status_code = StatusCode.ERROR if s.span_id in ("a", "c", "e", "d") else StatusCode.UNSET
    cause = root_cause(trace)
    assert cause is not None
    assert cause.span_id == "e"


def test_compare_two_traces_explains_the_whole_difference() -> None:
    a = concurrent()
    b = Trace(
        TID,
        [
            span("a", "", 0, 140),
            span("b", "a", 10, 60),
            span("c", "a", 20, 130),  # 40 longer
            span("e", "c", 30, 50),
            span("g", "c", 60, 125, service="other"),  # new, on the path
            span("d", "a", 132, 138),
        ],
    )
    result = compare([a], [b])
    assert result.difference_ns == 40
    assert sum(d.contribution_ns for d in result.deltas) == 40
    by_name = {d.path[-1][1]: d for d in result.deltas}
    assert by_name["op-g"].status == "extra"
    assert by_name["op-g"].contribution_ns == 65
    assert by_name["op-f"].status == "missing"
    assert by_name["op-c"].a_duration_ns == 70
    assert by_name["op-c"].b_duration_ns == 110
    assert result.deltas[0].path[-1][1] == "op-g"  # largest contribution first
    contributions = [abs(d.contribution_ns) for d in result.deltas]
    assert contributions == sorted(contributions, reverse=True)


def _random_trace(seed: int, n: int) -> Trace:
    rng = random.Random(seed)
    spans = [span("s0", "", 0, 1000)]
    for i in range(1, n):
        parent = rng.choice(spans)
        start = rng.randrange(parent.start_ns, parent.end_ns)
        end = min(parent.end_ns + rng.randrange(0, 50), start + rng.randrange(1, 400))
        spans.append(span(f"s{i}", parent.span_id, start, max(end, start + 1)))
    return Trace(TID, spans)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 60))
def test_critical_path_tiles_the_root(seed: int, n: int) -> None:
    trace = _random_trace(seed, n)
    path = sorted(critical_path(trace), key=lambda s: s.start_ns)
    assert path[0].start_ns == 0
    assert path[-1].end_ns == 1000
    for before, after in itertools.pairwise(path):
        assert before.end_ns == after.start_ns  # no gap, no overlap
    assert sum(critical_time(trace).values()) == 1000
    assert all(v >= 0 for v in self_time(trace).values())


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 40))
def test_comparison_contributions_sum_to_the_difference(seed_a: int, seed_b: int, n: int) -> None:
    a, b = _random_trace(seed_a, n), _random_trace(seed_b, n)
    result = compare([a], [b])
    assert abs(sum(d.contribution_ns for d in result.deltas) - result.difference_ns) < 1e-6


def test_deep_chain_does_not_recurse() -> None:
    spans = [span("s0", "", 0, 100_000)]
    for i in range(1, 20_000):
        spans.append(span(f"s{i}", f"s{i - 1}", i, 100_000 - i))
    trace = Trace(TID, spans)
    assert sum(critical_time(trace).values()) == 100_000
    assert root_cause(trace) is None
