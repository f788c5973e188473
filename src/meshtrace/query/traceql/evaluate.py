"""TraceQL evaluated on one loaded trace: the exact semantics, after SQL has narrowed the candidates.

Values: attributes are stored as text (as the Collector's ClickHouse exporter renders them), so an
attribute compares as a string with a string literal, as a number with a number literal when its text
is a number (Istio's ``http.status_code`` is a string attribute; ``= 200`` and ``= "200"`` both match),
as a boolean with ``true``/``false``. A missing attribute matches only ``= nil``; every other comparison
with it is false, ``!=`` included, as in Tempo. Regular expressions match the whole value.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from meshtrace.model.spans import Span, Trace
from meshtrace.query.params import parse_duration_ns

from .ast import (
    Aggregate,
    Attribute,
    Binary,
    By,
    Field,
    Intrinsic,
    Literal,
    Not,
    Query,
    Select,
    SpansetExpr,
    SpansetFilter,
)

MISSING: Any = object()


@dataclass(slots=True)
class Context:
    """Per-trace facts the trace-level intrinsics and structural operators need."""

    trace: Trace
    root: Span
    by_id: dict[str, Span]
    children: dict[str, list[Span]]

    @classmethod
    def of(cls, trace: Trace) -> Context:
        by_id = {s.span_id: s for s in trace.spans}
        children: dict[str, list[Span]] = {}
        for s in trace.spans:
            if s.parent_span_id in by_id and s.parent_span_id != s.span_id:
                children.setdefault(s.parent_span_id, []).append(s)
        return cls(trace, trace.root, by_id, children)

    @property
    def duration_ns(self) -> int:
        return self.trace.end_ns - self.trace.start_ns


def value_of(node: Field, span: Span, ctx: Context) -> Any:
    if isinstance(node, Attribute):
        if node.scope == "span":
            return span.attributes.get(node.name, MISSING)
        if node.scope == "resource":
            if node.name == "service.name":
                return span.service
            return span.resource.get(node.name, MISSING)
        found = span.attributes.get(node.name, MISSING)
        if found is MISSING:
            found = span.service if node.name == "service.name" else span.resource.get(node.name, MISSING)
        return found
    if isinstance(node, Intrinsic):
        return _intrinsic(node.name, span, ctx)
    if isinstance(node, Literal):
        return MISSING if node.kind == "nil" else node.value
    if isinstance(node, Not):
        return not truthy(node.operand, span, ctx)
    if node.op in ("&&", "||"):
        left = truthy(node.left, span, ctx)
        if node.op == "&&":
            return left and truthy(node.right, span, ctx)
        return left or truthy(node.right, span, ctx)
    if node.op in ("+", "-", "*", "/", "%", "^"):
        a, b = _number(value_of(node.left, span, ctx)), _number(value_of(node.right, span, ctx))
        if a is None or b is None:
            return MISSING
        try:
            return _ARITHMETIC[node.op](a, b)
        except (ZeroDivisionError, OverflowError, ValueError):
            return MISSING
    return compare(node, span, ctx)


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "%": math.fmod,
    "^": lambda a, b: a**b,
}


def _intrinsic(name: str, span: Span, ctx: Context) -> Any:
    if name == "name":
        return span.name
    if name == "status":
        return span.status_code.value.lower()
    if name == "statusMessage":
        return span.status_message
    if name == "kind":
        return span.kind.value.lower()
    if name == "duration":
        return span.duration_ns
    if name == "traceDuration":
        return ctx.duration_ns
    if name == "rootName":
        return ctx.root.name
    if name == "rootServiceName":
        return ctx.root.service
    return MISSING


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is MISSING:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=256)
def regex(pattern: str) -> re.Pattern[str]:
    """A TraceQL regex compiled for whole-value matching; raises ``re.error`` when invalid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning for '[[': RE2 reads it literally, as Python does today
        return re.compile(pattern, re.DOTALL)


def _coerce(value: Any, like: Literal) -> Any:
    """An attribute's text as the literal's type, or MISSING when it is not one."""
    if not isinstance(value, str) or like.kind == "string":
        return value
    if like.kind in ("int", "float"):
        number = _number(value)
        return MISSING if number is None else number
    if like.kind == "bool":
        return {"true": True, "false": False}.get(value, MISSING)
    if like.kind == "duration":
        try:
            return parse_duration_ns(value)
        except Exception:
            return MISSING
    return value


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def compare(node: Binary, span: Span, ctx: Context) -> bool:
    left, right = node.left, node.right
    if isinstance(left, Literal) and not isinstance(right, Literal):
        left, right = right, left
        op = {">": "<", "<": ">", ">=": "<=", "<=": ">="}.get(node.op, node.op)
    else:
        op = node.op
    a = value_of(left, span, ctx)
    if isinstance(right, Literal) and right.kind == "nil":
        return (a is MISSING) == (op == "=")
    b = value_of(right, span, ctx)
    if a is MISSING or b is MISSING:
        return False
    if isinstance(right, Literal):
        a = _coerce(a, right)
        if a is MISSING:
            return False
    if op in ("=~", "!~"):
        matched = regex(str(b)).fullmatch(str(a)) is not None
        return matched if op == "=~" else not matched
    if isinstance(a, str) != isinstance(b, str):
        na, nb = _number(a), _number(b)
        if na is None or nb is None:
            return False
        a, b = na, nb
    try:
        return _ORDER[op](a, b)
    except TypeError:
        return False


def truthy(node: Field, span: Span, ctx: Context) -> bool:
    if isinstance(node, Attribute):
        return value_of(node, span, ctx) in (True, "true")
    value = value_of(node, span, ctx)
    return value is True


# -- spansets --------------------------------------------------------------------------------------


def _union(a: list[Span], b: list[Span]) -> list[Span]:
    seen = {s.span_id for s in a}
    return a + [s for s in b if s.span_id not in seen]


def spanset(expr: SpansetExpr, ctx: Context) -> list[Span]:
    if isinstance(expr, SpansetFilter):
        if expr.expr is None:
            return list(ctx.trace.spans)
        condition = expr.expr
        return [s for s in ctx.trace.spans if truthy(condition, s, ctx)]
    left = spanset(expr.left, ctx)
    if expr.op == "||":
        return _union(left, spanset(expr.right, ctx))
    if not left:
        return []
    right = spanset(expr.right, ctx)
    if expr.op == "&&":
        return _union(left, right) if right else []
    ids = {s.span_id for s in left}
    if expr.op == ">":
        return [s for s in right if s.parent_span_id in ids]
    if expr.op == "<":
        parents = {s.parent_span_id for s in left}
        return [s for s in right if s.span_id in parents]
    if expr.op == ">>":
        return [s for s in right if any(a.span_id in ids for a in _ancestors(s, ctx))]
    if expr.op == "<<":
        above = {a.span_id for s in left for a in _ancestors(s, ctx)}
        return [s for s in right if s.span_id in above]
    # "~": siblings (same parent, not the span itself)
    parents_of_left = {s.parent_span_id for s in left if s.parent_span_id}
    return [
        s
        for s in right
        if s.parent_span_id in parents_of_left
        and any(x.parent_span_id == s.parent_span_id and x.span_id != s.span_id for x in left)
    ]


def _ancestors(span: Span, ctx: Context) -> list[Span]:
    out, seen = [], {span.span_id}
    parent = ctx.by_id.get(span.parent_span_id)
    while parent is not None and parent.span_id not in seen:
        out.append(parent)
        seen.add(parent.span_id)
        parent = ctx.by_id.get(parent.parent_span_id)
    return out


@dataclass(slots=True)
class Spanset:
    spans: list[Span]
    by: dict[str, Any] = field(default_factory=dict)
    select: tuple[Field, ...] = ()


def _aggregate(stage: Aggregate, spans: list[Span], ctx: Context) -> float | None:
    if stage.fn == "count":
        return float(len(spans))
    assert stage.field is not None
    values = [v for v in (_number(value_of(stage.field, s, ctx)) for s in spans) if v is not None]
    if not values:
        return None
    if stage.fn == "avg":
        return sum(values) / len(values)
    if stage.fn == "min":
        return min(values)
    if stage.fn == "max":
        return max(values)
    return sum(values)


def evaluate(query: Query, trace: Trace) -> list[Spanset]:
    """The spansets of ``trace`` the query returns (empty: the trace does not match)."""
    ctx = Context.of(trace)
    matched = spanset(query.spansets, ctx)
    sets = [Spanset(matched)] if matched else []
    for stage in query.stages:
        if isinstance(stage, Aggregate):
            threshold = float(stage.value.value)  # type: ignore[arg-type]
            kept = []
            for s in sets:
                value = _aggregate(stage, s.spans, ctx)
                if value is not None and _ORDER[stage.op](value, threshold):
                    kept.append(s)
            sets = kept
        elif isinstance(stage, By):
            grouped: list[Spanset] = []
            for s in sets:
                groups: dict[tuple[Any, ...], list[Span]] = {}
                for span in s.spans:
                    key = tuple(value_of(f, span, ctx) for f in stage.fields)
                    groups.setdefault(key, []).append(span)
                for key, spans in groups.items():
                    labels = {f"by({f})": v for f, v in zip(stage.fields, key, strict=True) if v is not MISSING}
                    grouped.append(Spanset(spans, {**s.by, **labels}, s.select))
            sets = grouped
        elif isinstance(stage, Select):
            sets = [Spanset(s.spans, s.by, s.select + stage.fields) for s in sets]
    return sets
