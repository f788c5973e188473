"""TraceQL lexer and recursive-descent parser (phases 1 and 2 of the reference's subset).

Errors carry the 1-based column of the offending token, so the API can point at it. Syntax that is
valid TraceQL but not implemented here (metrics functions, union and negated structural operators,
``event.``/``link.`` scopes, hints) raises ``TraceQLUnsupported`` rather than a parse error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshtrace.errors import InvalidQuery

from .ast import (
    ARITHMETIC,
    COMPARISONS,
    KIND_VALUES,
    SCOPED,
    SPAN_INTRINSICS,
    STATUS_VALUES,
    TRACE_INTRINSICS,
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
    SpansetOp,
    Stage,
)
from .evaluate import regex


class TraceQLError(InvalidQuery):
    """A query that is not valid TraceQL; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"parse error at line 1, col {column}: {message}")
        self.column = column
        self.reason = message


class TraceQLUnsupported(TraceQLError):
    def __init__(self, message: str, column: int) -> None:
        InvalidQuery.__init__(self, f"unsupported at line 1, col {column}: {message}")
        self.column = column
        self.reason = message


_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_UNSUPPORTED_SCOPES = ("event", "link", "instrumentation", "event:", "link:", "instrumentation:")
_FUNCTIONS = ("count", "avg", "min", "max", "sum", "by", "select")
_UNSUPPORTED_FUNCTIONS = (
    "rate",
    "count_over_time",
    "quantile_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "histogram_over_time",
    "compare",
    "coalesce",
    "with",
    "topk",
    "bottomk",
)
_RE2_UNSUPPORTED = re.compile(r"\\[1-9]|\(\?[=!]|\(\?<[=!]|\(\?>|[*+?}]\+")

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
    |(?P<duration>\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h)(?![\w.]))
    |(?P<number>\d+\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?(?![\w.]))
    |(?P<scoped>(?:span|trace|event|link|instrumentation):[A-Za-z_]+)
    |(?P<attr>(?:span|resource|event|link|instrumentation|parent)?\.(?:"(?:[^"\\]|\\.)*"|[^\s{}()=~!<>&|^,+*/%"]*))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>&>>|&<<|!>>|!<<|&&|\|\||>>|<<|>=|<=|!=|=~|!~|&>|&<|&~|!>|!<|[{}()|,=<>~!+\-*/%^])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string, duration, number, scoped, attr, ident, op, end
    text: str
    pos: int  # 0-based offset

    @property
    def column(self) -> int:
        return self.pos + 1


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TraceQLError(f"unexpected character {text[pos]!r}", pos + 1)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), text[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    # -- tokens -----------------------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("op", "ident") and self.tok.text in texts

    def expect(self, text: str, what: str | None = None) -> Token:
        if self.tok.text != text or self.tok.kind not in ("op", "ident"):
            raise TraceQLError(f"expected {what or repr(text)}, found {self._found()}", self.tok.column)
        return self.take()

    def _found(self) -> str:
        return "end of query" if self.tok.kind == "end" else repr(self.tok.text)

    # -- query and spansets -----------------------------------------------------------------------

    def query(self) -> Query:
        if self.tok.kind == "end":
            raise TraceQLError("empty query: try { }", 1)
        if self.tok.kind == "ident" and self.tok.text in _UNSUPPORTED_FUNCTIONS:
            raise TraceQLUnsupported(f"{self.tok.text}() is not supported", self.tok.column)
        spansets = self.spanset_or()
        stages: list[Stage] = []
        while self.at("|"):
            self.take()
            stages.append(self.stage())
        if self.tok.kind == "ident" and self.tok.text == "with":
            raise TraceQLUnsupported("query hints (with(...)) are not supported", self.tok.column)
        if self.tok.kind != "end":
            raise TraceQLError(f"unexpected {self._found()}", self.tok.column)
        return Query(spansets, tuple(stages))

    def spanset_or(self) -> SpansetExpr:
        node = self.spanset_and()
        while self.at("||"):
            self.take()
            node = SpansetOp("||", node, self.spanset_and())
        return node

    def spanset_and(self) -> SpansetExpr:
        node = self.spanset_structural()
        while self.at("&&"):
            self.take()
            node = SpansetOp("&&", node, self.spanset_structural())
        return node

    def spanset_structural(self) -> SpansetExpr:
        node = self.spanset_primary()
        while True:
            if self.at(">", ">>", "<", "<<", "~"):
                op = self.take().text
                node = SpansetOp(op, node, self.spanset_primary())
            elif self.at("&>", "&>>", "&<", "&<<", "&~", "!>", "!>>", "!<", "!<<", "!~"):
                raise TraceQLUnsupported(f"the {self.tok.text} operator is not supported", self.tok.column)
            else:
                return node

    def spanset_primary(self) -> SpansetExpr:
        if self.at("("):
            self.take()
            node = self.spanset_or()
            if self.at("|"):
                raise TraceQLUnsupported("pipelines inside parentheses are not supported", self.tok.column)
            self.expect(")")
            return node
        start = self.expect("{", 'a spanset such as { span.http.method = "GET" }')
        if self.at("}"):
            self.take()
            return SpansetFilter(None)
        expr = self.field_or()
        if not self.at("}"):
            raise TraceQLError(
                f"expected '}}' to close the spanset opened at col {start.column}, found {self._found()}",
                self.tok.column,
            )
        self.take()
        _check_boolean(expr, start.column)
        return SpansetFilter(expr)

    # -- pipeline stages --------------------------------------------------------------------------

    def stage(self) -> Stage:
        tok = self.tok
        if tok.kind != "ident" or tok.text not in _FUNCTIONS:
            if tok.kind == "ident" and tok.text in _UNSUPPORTED_FUNCTIONS:
                raise TraceQLUnsupported(f"{tok.text}() is not supported", tok.column)
            if tok.kind == "op" and tok.text == "{":
                raise TraceQLUnsupported("spanset filters after a pipe are not supported", tok.column)
            raise TraceQLError(
                f"expected count(), avg(), min(), max(), sum(), by() or select() after '|', found {self._found()}",
                tok.column,
            )
        self.take()
        self.expect("(")
        if tok.text in ("by", "select"):
            fields = [self.field_or()]
            while self.at(","):
                self.take()
                fields.append(self.field_or())
            self.expect(")")
            return By(tuple(fields)) if tok.text == "by" else Select(tuple(fields))
        field: Field | None = None
        if tok.text != "count":
            field = self.field_or()
        self.expect(")")
        if not self.at(*COMPARISONS) or self.tok.text in ("=~", "!~"):
            raise TraceQLError(f"{tok.text}() must be compared, e.g. {tok.text}() > 2", self.tok.column)
        op = self.take().text
        value = self.literal_only()
        return Aggregate(tok.text, field, op, value)

    def literal_only(self) -> Literal:
        negative = False
        if self.at("-"):
            self.take()
            negative = True
        node = self.field_primary()
        if not isinstance(node, Literal) or node.kind not in ("int", "float", "duration"):
            raise TraceQLError("expected a number or a duration", self.tokens[self.i - 1].column)
        if negative:
            assert isinstance(node.value, int | float)
            return Literal(node.kind, -node.value, "-" + node.text if node.text else "")
        return node

    # -- field expressions ------------------------------------------------------------------------

    def field_or(self) -> Field:
        node = self.field_and()
        while self.at("||"):
            self.take()
            node = Binary("||", node, self.field_and())
        return node

    def field_and(self) -> Field:
        node = self.field_comparison()
        while self.at("&&"):
            self.take()
            node = Binary("&&", node, self.field_comparison())
        return node

    def field_comparison(self) -> Field:
        left = self.field_sum()
        if self.at(*COMPARISONS):
            tok = self.take()
            right = self.field_sum()
            node = Binary(tok.text, left, right)
            _check_comparison(node, tok.column)
            return node
        return left

    def field_sum(self) -> Field:
        node = self.field_product()
        while self.at("+", "-"):
            op = self.take().text
            node = Binary(op, node, self.field_product())
        return node

    def field_product(self) -> Field:
        node = self.field_power()
        while self.at("*", "/", "%"):
            op = self.take().text
            node = Binary(op, node, self.field_power())
        return node

    def field_power(self) -> Field:
        node = self.field_unary()
        if self.at("^"):
            self.take()
            return Binary("^", node, self.field_power())
        return node

    def field_unary(self) -> Field:
        if self.at("!"):
            self.take()
            return Not(self.field_unary())
        if self.at("-"):
            tok = self.take()
            operand = self.field_unary()
            if isinstance(operand, Literal) and operand.kind in ("int", "float", "duration"):
                assert isinstance(operand.value, int | float)
                return Literal(operand.kind, -operand.value, "-" + operand.text if operand.text else "")
            raise TraceQLError("'-' applies to numbers and durations only", tok.column)
        return self.field_primary()

    def field_primary(self) -> Field:
        tok = self.tok
        if self.at("("):
            self.take()
            node = self.field_or()
            self.expect(")")
            return node
        if tok.kind == "string":
            self.take()
            return Literal("string", _unquote(tok.text))
        if tok.kind == "duration":
            self.take()
            number, unit = re.fullmatch(r"([\d.]+)(\D+)", tok.text).groups()  # type: ignore[union-attr]
            return Literal("duration", round(float(number) * _DURATION_NS[unit]), tok.text)
        if tok.kind == "number":
            self.take()
            if re.fullmatch(r"\d+", tok.text):
                return Literal("int", int(tok.text))
            return Literal("float", float(tok.text))
        if tok.kind == "scoped":
            self.take()
            if tok.text.split(":")[0] in ("event", "link", "instrumentation"):
                raise TraceQLUnsupported(f"{tok.text} is not supported", tok.column)
            if tok.text not in SCOPED:
                raise TraceQLError(f"unknown intrinsic {tok.text}", tok.column)
            return Intrinsic(SCOPED[tok.text])
        if tok.kind == "attr":
            self.take()
            scope, _, name = tok.text.partition(".")
            if scope in _UNSUPPORTED_SCOPES or scope == "parent":
                raise TraceQLUnsupported(f"the {scope}. scope is not supported", tok.column)
            if name.startswith('"'):
                name = _unquote(name)
            if not name:
                raise TraceQLError("attribute name missing after '.'", tok.column)
            return Attribute(scope, name)
        if tok.kind == "ident":
            self.take()
            word = tok.text
            if word in SPAN_INTRINSICS or word in TRACE_INTRINSICS:
                return Intrinsic(word)
            if word in ("true", "false"):
                return Literal("bool", word == "true")
            if word == "nil":
                return Literal("nil", None)
            if word in STATUS_VALUES:
                return Literal("status", word)
            if word in KIND_VALUES:
                return Literal("spankind", word)
            if word in ("childCount", "parent", "rootService", "nestedSetLeft", "nestedSetRight", "nestedSetParent"):
                raise TraceQLUnsupported(f"{word} is not supported", tok.column)
            raise TraceQLError(
                f"unknown identifier {word!r}: attributes need a scope, e.g. span.{word} or .{word}", tok.column
            )
        raise TraceQLError(f"expected a field or a value, found {self._found()}", tok.column)


# -- checks ----------------------------------------------------------------------------------------


def _is_boolean(node: Field) -> bool:
    if isinstance(node, Binary):
        return node.op in COMPARISONS or node.op in ("&&", "||")
    if isinstance(node, Not):
        return _is_boolean(node.operand) or isinstance(node.operand, Attribute)
    return isinstance(node, Attribute) or (isinstance(node, Literal) and node.kind == "bool")


def _check_boolean(node: Field, column: int) -> None:
    if not _is_boolean(node):
        raise TraceQLError(f"a spanset filter needs a condition, not the value {node}", column)
    if isinstance(node, Binary) and node.op in ("&&", "||"):
        _check_boolean(node.left, column)
        _check_boolean(node.right, column)


def _check_comparison(node: Binary, column: int) -> None:
    for side, other in ((node.left, node.right), (node.right, node.left)):
        if isinstance(side, Literal) and side.kind == "status":
            if not (isinstance(other, Intrinsic) and other.name == "status"):
                raise TraceQLError(f"{side} is a status value: compare it with status", column)
            if node.op not in ("=", "!="):
                raise TraceQLError("status compares only with = or !=", column)
        if isinstance(side, Literal) and side.kind == "spankind":
            if not (isinstance(other, Intrinsic) and other.name == "kind"):
                raise TraceQLError(f"{side} is a span kind: compare it with kind", column)
            if node.op not in ("=", "!="):
                raise TraceQLError("kind compares only with = or !=", column)
        if isinstance(side, Intrinsic) and side.name in ("status", "kind") and isinstance(other, Literal):
            wanted = "status" if side.name == "status" else "spankind"
            if other.kind not in (wanted, "nil"):
                values = STATUS_VALUES if side.name == "status" else KIND_VALUES
                raise TraceQLError(f"{side.name} takes one of {', '.join(values)}, not {other}", column)
    if node.op in ("=~", "!~"):
        if not (isinstance(node.right, Literal) and node.right.kind == "string"):
            raise TraceQLError(f"{node.op} needs a string (a regular expression) on its right", column)
        pattern = str(node.right.value)
        if _RE2_UNSUPPORTED.search(pattern):
            raise TraceQLError(
                "regular expressions are RE2: no backreferences, lookaround or possessive quantifiers", column
            )
        try:
            regex(pattern)
        except re.error as exc:
            raise TraceQLError(f"invalid regular expression: {exc}", column) from None
    if node.op in ARITHMETIC:
        return


MAX_DEPTH = 100  # nesting of expressions and spanset operators; deeper would exhaust Python's stack


def _depth(query: Query) -> int:
    """How deep the query's expression trees go, walked without recursion."""
    deepest = 0
    todo: list[tuple[object, int]] = [(query.spansets, 1)]
    for stage in query.stages:
        if isinstance(stage, Aggregate) and stage.field is not None:
            todo.append((stage.field, 1))
        elif isinstance(stage, (By, Select)):
            todo += [(f, 1) for f in stage.fields]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        if isinstance(node, (Binary, SpansetOp)):
            todo += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, Not):
            todo.append((node.operand, depth + 1))
        elif isinstance(node, SpansetFilter) and node.expr is not None:
            todo.append((node.expr, depth + 1))
    return deepest


def parse(text: str) -> Query:
    """Parse a TraceQL query; raises ``TraceQLError`` (or ``TraceQLUnsupported``) with the column."""
    too_deep = f"the query nests expressions more than {MAX_DEPTH} levels deep: write it flatter"
    try:
        query = _Parser(text).query()
    except RecursionError:
        raise TraceQLError(too_deep, 1) from None
    if _depth(query) > MAX_DEPTH:
        raise TraceQLError(too_deep, 1)
    return query
