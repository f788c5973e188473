"""The TraceQL corpus: valid queries round-trip through the printer, errors point at their column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshtrace.query.traceql import TraceQLError, TraceQLUnsupported, parse

CORPUS: dict[str, list[dict[str, Any]]] = yaml.safe_load((Path(__file__).parent / "traceql_corpus.yaml").read_text())


@pytest.mark.parametrize("case", CORPUS["valid"], ids=lambda c: c["q"])
def test_valid_query_round_trips(case: dict[str, Any]) -> None:
    tree = parse(case["q"])
    printed = str(tree)
    assert printed == case.get("canonical", case["q"])
    assert parse(printed) == tree


@pytest.mark.parametrize("case", CORPUS["parse_errors"], ids=lambda c: c["q"] or "<empty>")
def test_parse_error_points_at_the_column(case: dict[str, Any]) -> None:
    with pytest.raises(TraceQLError) as caught:
        parse(case["q"])
    assert not isinstance(caught.value, TraceQLUnsupported)
    assert case["message"] in str(caught.value)
    assert caught.value.column == case["column"], str(caught.value)
    assert str(caught.value).startswith(f"parse error at line 1, col {case['column']}: ")


@pytest.mark.parametrize("case", CORPUS["unsupported"], ids=lambda c: c["q"])
def test_unsupported_is_not_a_parse_error(case: dict[str, Any]) -> None:
    with pytest.raises(TraceQLUnsupported) as caught:
        parse(case["q"])
    assert case["message"] in str(caught.value)
    assert str(caught.value).startswith("unsupported at line 1, col ")


def test_the_tree_says_what_was_written() -> None:
    tree = parse('{ .service.name = "a" && duration > 1.5ms } >> { status = error } | select(span.x)')
    assert repr(tree).count("Attribute(scope='', name='service.name')") == 1
    assert "Literal(kind='duration', value=1500000" in repr(tree)
    assert "SpansetOp(op='>>'" in repr(tree)


@pytest.mark.parametrize(
    "query",
    [
        "{ " + "(" * 3000 + "span.a" + ")" * 3000 + " = 1 }",  # deep recursion in the parser
        "{ span.a = " + " + ".join(["1"] * 3000) + " }",  # a long chain: a deep tree to print and evaluate
        "{ span.a" + " ^ 2" * 3000 + " = 1 }",  # right-associative: found by the coverage-guided fuzzer
        "{ } | by(" + " + ".join(["span.a"] * 300) + ")",
    ],
    ids=["parentheses", "left-chain", "power-chain", "stage"],
)
def test_deeply_nested_queries_are_refused_with_an_error(query: str) -> None:
    with pytest.raises(TraceQLError, match="nests expressions more than 100 levels deep"):
        parse(query)
