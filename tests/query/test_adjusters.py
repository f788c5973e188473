"""The clock-skew adjuster: a call's server side moved into its client side when their hosts' clocks
differ, everything under it on the same host with it, nothing else touched."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshtrace.model.spans import Event, Span, SpanKind, Trace
from meshtrace.query.adjusters import adjust, clock_skew

S = 1_000_000_000


def _span(sid: str, parent: str, kind: SpanKind, service: str, start: int, duration: int) -> Span:
    return Span("t", sid, parent, sid, kind, service, start, duration, events=[Event(start + 1, "e")])


def _chain(skew_reviews: int, skew_ratings: int) -> Trace:
    """page → (client) → reviews (server) → (client) → ratings (server); two hosts' clocks off."""
    return Trace(
        "t",
        [
            _span("a", "", SpanKind.SERVER, "productpage", 100 * S, 10 * S),
            _span("b", "a", SpanKind.CLIENT, "productpage", 101 * S, 8 * S),
            _span("c", "b", SpanKind.SERVER, "reviews", 102 * S + skew_reviews, 6 * S),
            _span("d", "c", SpanKind.CLIENT, "reviews", 103 * S + skew_reviews, 4 * S),
            _span("e", "d", SpanKind.SERVER, "ratings", 104 * S + skew_reviews + skew_ratings, 2 * S),
        ],
    )


def _by_id(trace: Trace) -> dict[str, Span]:
    return {s.span_id: s for s in trace.spans}


def test_a_skewed_callee_moves_into_its_caller_with_its_own_children() -> None:
    spans = _by_id(clock_skew(_chain(skew_reviews=5 * S, skew_ratings=0)))
    # Centred in the client span: 1 s of network time either side.
    assert spans["c"].start_ns == 102 * S
    assert spans["d"].start_ns == 103 * S  # same host: moved with it
    assert spans["c"].events[0].time_ns == 102 * S + 1
    assert spans["c"].warnings == [
        "clock skew: moved -5.000s to fit inside its caller on productpage (the two hosts' clocks differ)"
    ]
    assert spans["d"].warnings == ["clock skew: moved -5.000s with its parent on the same host"]
    # ratings' clock is as far ahead as reviews': it had to move on its own.
    assert spans["e"].start_ns == 104 * S
    assert "to fit inside its caller on reviews" in spans["e"].warnings[0]
    assert spans["a"].warnings == spans["b"].warnings == []


def test_a_callee_host_in_step_with_its_skewed_caller_moves_once() -> None:
    spans = _by_id(clock_skew(_chain(skew_reviews=5 * S, skew_ratings=-5 * S)))
    assert spans["e"].start_ns == 104 * S  # ratings had the right time: it stays
    assert spans["e"].warnings == []


def test_spans_that_fit_are_left_alone() -> None:
    trace = clock_skew(_chain(skew_reviews=0, skew_ratings=0))
    assert trace.warnings == []
    assert [s.start_ns for s in trace.spans] == [100 * S, 101 * S, 102 * S, 103 * S, 104 * S]


@given(
    st.integers(-3600 * S, 3600 * S),
    st.integers(-3600 * S, 3600 * S),
)
def test_after_adjusting_every_callee_lies_within_its_caller(skew_reviews: int, skew_ratings: int) -> None:
    trace = adjust(_chain(skew_reviews, skew_ratings))
    spans = _by_id(trace)
    assert len(trace.spans) == 5
    for child, parent in (("c", "b"), ("e", "d")):
        assert spans[parent].start_ns <= spans[child].start_ns
        assert spans[child].end_ns <= spans[parent].end_ns
    # Durations are what the hosts measured; a host's spans keep their offsets to each other.
    assert [s.duration_ns for s in trace.spans] == [10 * S, 8 * S, 6 * S, 4 * S, 2 * S]
    assert spans["d"].start_ns - spans["c"].start_ns == 1 * S
    moved = sum(1 for s in trace.spans if s.warnings)
    assert (moved == 0) == (trace.warnings == [])


def test_a_callee_longer_than_its_caller_is_not_moved() -> None:
    trace = Trace(
        "t",
        [
            _span("b", "", SpanKind.CLIENT, "productpage", 100 * S, 1 * S),
            _span("c", "b", SpanKind.SERVER, "reviews", 90 * S, 5 * S),  # async, or a broken caller
        ],
    )
    assert _by_id(clock_skew(trace))["c"].start_ns == 90 * S
