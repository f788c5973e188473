from __future__ import annotations

import pytest

from meshtrace.errors import InvalidQuery
from meshtrace.model.ids import normalize_span_id, normalize_trace_id
from meshtrace.query.params import parse_duration_ns, parse_jaeger_tags, parse_size, parse_time_ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("300ns", 300),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("1.5ms", 1_500_000),
        ("2s", 2 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("1m0.5s", 60_500_000_000),
        ("7d", 7 * 86400 * 10**9),
        (".5s", 500_000_000),
    ],
)
def test_go_durations(text, ns):
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "10", "ms", "1x", "-1s", "1s garbage", "1 s"])
def test_bad_durations(text):
    with pytest.raises(InvalidQuery):
        parse_duration_ns(text)


def test_sizes():
    assert parse_size("16MiB") == 16 << 20
    assert parse_size("500kB") == 500_000
    assert parse_size("1048576") == 1 << 20
    with pytest.raises(InvalidQuery):
        parse_size("lots")


def test_times():
    assert parse_time_ns("1700000000000000", name="start", unit_ns=1000) == 1_700_000_000_000_000_000
    assert parse_time_ns("2023-11-14T22:13:20Z", name="start", unit_ns=1) == 1_700_000_000_000_000_000
    with pytest.raises(InvalidQuery, match="start"):
        parse_time_ns("yesterday", name="start", unit_ns=1)


def test_jaeger_tags_json_and_pairs():
    tags = parse_jaeger_tags(['{"http.status_code":"500","error":true}', '{"n": 3}'], ["response_flags:UF", "a:b:c"])
    assert tags == {"http.status_code": "500", "error": "true", "n": "3", "response_flags": "UF", "a": "b:c"}
    for bad in (["{oops"], ["[1]"]):
        with pytest.raises(InvalidQuery):
            parse_jaeger_tags(bad, [])
    with pytest.raises(InvalidQuery):
        parse_jaeger_tags([], ["novalue"])


def test_ids():
    assert normalize_trace_id("ABC") == "0" * 29 + "abc"
    assert normalize_trace_id("4bf92f3577b34da6a3ce929d0e0e4736") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert normalize_span_id("00F067AA0BA902B7") == "00f067aa0ba902b7"
    for bad in ("", "xyz", "0" * 32, "1" * 33):
        with pytest.raises(InvalidQuery):
            normalize_trace_id(bad)
