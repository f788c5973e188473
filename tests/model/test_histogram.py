"""The latency histogram the analytics tables store: quantiles within ±4.5%, exact power-of-two bounds."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from meshtrace.model.analytics import Histogram

MS = 1_000_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1_000, 60 * 10**9), min_size=1, max_size=300), st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_quantiles_are_within_the_bucket_error(durations: list[int], q: float) -> None:
    got = Histogram.of(durations).quantile(q)
    assert got is not None
    ordered = sorted(durations)
    # The true quantile lies between the order statistics around rank q·n; the estimate may be off by one
    # bucket width (2^(1/8) ≈ 9%) from them.
    low = ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
    high = ordered[min(math.ceil(q * len(ordered)), len(ordered) - 1)]
    assert low / 2 ** (1 / 8) <= got <= high * 2 ** (1 / 8)


def test_cumulative_counts_at_powers_of_two() -> None:
    h = Histogram.of([MS // 2, MS, 3 * MS, 4 * MS - 1, 5 * MS, 2000 * MS])
    assert h.cumulative([0.001, 0.002, 0.004, 0.008, 16.384]) == [1, 2, 4, 5, 6]
    assert h.total == 6
    assert Histogram().quantile(0.5) is None


def test_merge_and_sum_map_form() -> None:
    a = Histogram.from_sum_map([[0, 8], [2, 1]])
    a.merge(Histogram.from_sum_map([[8, 16], [3, 0]]))
    assert a.counts == {0: 2, 8: 4}
