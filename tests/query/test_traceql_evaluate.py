"""TraceQL semantics on a hand-built trace: typed comparisons of text attributes, nil, structure, pipelines."""

from __future__ import annotations

import pytest

from meshtrace.model.spans import Span, SpanKind, StatusCode, Trace
from meshtrace.query.traceql import evaluate, parse

TID = "ab" * 16


def _span(sid: str, parent: str, service: str, kind: SpanKind, start: int, dur: int, **attrs: str) -> Span:
    error = attrs.pop("error", "") == "1"
    return Span(
        TID,
        sid,
        parent,
        f"{service}-op",
        kind,
        service,
        start,
        dur,
        StatusCode.ERROR if error else StatusCode.UNSET,
        attributes=attrs,
        resource={"service.name": service, "k8s.ns": "default"},
    )


TRACE = Trace(
    TID,
    [
        _span("g", "", "gateway", SpanKind.SERVER, 0, 100_000_000, **{"http.status_code": "200"}),
        _span("p", "g", "page", SpanKind.SERVER, 1_000_000, 90_000_000, **{"http.status_code": "200", "retry": "true"}),
        _span(
            "pc",
            "p",
            "page",
            SpanKind.CLIENT,
            2_000_000,
            50_000_000,
            **{"http.status_code": "503", "error": "1", "response_flags": "UF"},
        ),
        _span("pd", "p", "page", SpanKind.CLIENT, 60_000_000, 5_000_000, **{"http.status_code": "200", "ratio": "0.5"}),
        _span("d", "pd", "details", SpanKind.SERVER, 61_000_000, 3_000_000, **{"http.status_code": "200"}),
    ],
)


def matched(q: str) -> list[str]:
    return sorted(s.span_id for ss in evaluate(parse(q), TRACE) for s in ss.spans)


@pytest.mark.parametrize(
    ("q", "spans"),
    [
        ('{ span.http.status_code = "503" }', ["pc"]),
        ("{ span.http.status_code = 503 }", ["pc"]),  # a number literal compares numerically with text
        ("{ span.http.status_code >= 500 }", ["pc"]),
        ('{ span.http.status_code > "3" }', ["pc"]),  # string order: "503" > "3", "200" < "3"
        ("{ span.ratio < 0.6 }", ["pd"]),
        ("{ span.retry = true }", ["p"]),
        ("{ span.retry }", ["p"]),
        ("{ span.retry != true }", []),  # missing attributes never compare, != included
        ("{ span.response_flags = nil }", ["d", "g", "p", "pd"]),
        ("{ span.response_flags != nil }", ["pc"]),
        ('{ span.response_flags != "UF" }', []),
        ('{ resource.k8s.ns = "default" && kind = client }', ["pc", "pd"]),
        ('{ .k8s.ns = "default" && .http.status_code = "503" }', ["pc"]),  # unscoped: span, then resource
        ('{ .service.name = "details" }', ["d"]),
        ("{ status = error }", ["pc"]),
        ("{ status != error && kind = server && duration > 50ms }", ["g", "p"]),
        ('{ name =~ "pa.*" }', ["p", "pc", "pd"]),
        ('{ name =~ "pa" }', []),  # anchored
        ('{ name !~ "pa.*" }', ["d", "g"]),
        ("{ traceDuration >= 100ms && kind = client }", ["pc", "pd"]),
        ('{ rootServiceName = "gateway" && rootName = "gateway-op" && span.ratio = 0.5 }', ["pd"]),
        ("{ span.http.status_code / 100 >= 5 }", ["pc"]),
        ("{ !(kind = server) }", ["pc", "pd"]),
        ('{ resource.service.name = "page" } > { kind = server }', ["d"]),
        ('{ resource.service.name = "gateway" } >> { status = error }', ["pc"]),
        ('{ resource.service.name = "details" } < { }', ["pd"]),
        ('{ resource.service.name = "details" } << { kind = server }', ["g", "p"]),
        ("{ status = error } ~ { kind = client }", ["pd"]),
        ('{ resource.service.name = "details" } && { status = error }', ["d", "pc"]),
        ('{ resource.service.name = "nope" } && { status = error }', []),
        ('{ resource.service.name = "nope" } || { status = error }', ["pc"]),
        ("{ } | count() > 4", ["d", "g", "p", "pc", "pd"]),
        ("{ } | count() > 5", []),
        ("{ kind = client } | avg(duration) > 27ms", ["pc", "pd"]),
        ("{ kind = client } | avg(duration) > 28ms", []),
        ("{ } | max(span.http.status_code) = 503", ["d", "g", "p", "pc", "pd"]),
    ],
)
def test_semantics(q: str, spans: list[str]) -> None:
    assert matched(q) == spans


def test_by_splits_spansets_and_aggregates_apply_per_group() -> None:
    sets = evaluate(parse("{ } | by(resource.service.name) | count() > 1"), TRACE)
    assert sorted((s.by["by(resource.service.name)"], len(s.spans)) for s in sets) == [("page", 3)]


def test_select_is_carried_to_the_spansets() -> None:
    [spanset] = evaluate(parse("{ status = error } | select(span.response_flags, name)"), TRACE)
    assert [str(f) for f in spanset.select] == ["span.response_flags", "name"]


def test_regex_with_brackets_parses_without_warnings() -> None:
    assert matched('{ name =~ "[[a]-op" }') == []
