"""TraceQL syntax tree. ``str(node)`` prints canonical TraceQL that parses back to an equal tree."""

from __future__ import annotations

from dataclasses import dataclass

# Intrinsics by canonical name: the legacy unscoped spellings map here, the scoped ones too.
SPAN_INTRINSICS = ("name", "status", "statusMessage", "kind", "duration")
TRACE_INTRINSICS = ("traceDuration", "rootName", "rootServiceName")
SCOPED = {
    "span:name": "name",
    "span:status": "status",
    "span:statusMessage": "statusMessage",
    "span:kind": "kind",
    "span:duration": "duration",
    "trace:duration": "traceDuration",
    "trace:rootName": "rootName",
    "trace:rootService": "rootServiceName",
}
STATUS_VALUES = ("error", "ok", "unset")
KIND_VALUES = ("server", "client", "producer", "consumer", "internal", "unspecified")
ATTRIBUTE_SCOPES = ("span", "resource", "")  # "" = unscoped ``.x``: span, else resource


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name(text: str) -> str:
    plain = text and all(c.isalnum() or c in "._-/:" for c in text) and not text[0].isdigit()
    return text if plain else _quote(text)


@dataclass(frozen=True, slots=True)
class Attribute:
    scope: str  # "span", "resource" or "" (unscoped)
    name: str

    def __str__(self) -> str:
        return f"{self.scope}.{_name(self.name)}"


@dataclass(frozen=True, slots=True)
class Intrinsic:
    name: str  # canonical: one of SPAN_INTRINSICS or TRACE_INTRINSICS

    @property
    def trace_level(self) -> bool:
        return self.name in TRACE_INTRINSICS

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Literal:
    """``kind``: string, int, float, duration (value in ns), bool, nil, status, spankind."""

    kind: str
    value: str | int | float | bool | None
    text: str = ""  # the duration as written, kept for printing

    def __str__(self) -> str:
        if self.kind == "string":
            return _quote(str(self.value))
        if self.kind == "duration":
            return self.text
        if self.kind == "bool":
            return "true" if self.value else "false"
        if self.kind == "nil":
            return "nil"
        if self.kind == "float":
            text = repr(self.value)
            return text if "." in text or "e" in text else text + ".0"
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Binary:
    """A comparison (``= != > >= < <= =~ !~``), logic (``&& ||``) or arithmetic (``+ - * / % ^``)."""

    op: str
    left: Field
    right: Field

    def __str__(self) -> str:
        p = PRECEDENCE[self.op]
        right_assoc = self.op == "^"
        left = _wrap(self.left, p + 1 if right_assoc else p)
        right = _wrap(self.right, p if right_assoc else p + 1)
        return f"{left} {self.op} {right}"


@dataclass(frozen=True, slots=True)
class Not:
    operand: Field

    def __str__(self) -> str:
        return f"!{_wrap(self.operand, 99)}"


Field = Attribute | Intrinsic | Literal | Binary | Not

COMPARISONS = ("=", "!=", ">", ">=", "<", "<=", "=~", "!~")
LOGIC = ("&&", "||")
ARITHMETIC = ("+", "-", "*", "/", "%", "^")
PRECEDENCE = {"||": 1, "&&": 2, **dict.fromkeys(COMPARISONS, 3), "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "^": 6}
SPANSET_PRECEDENCE = {"||": 1, "&&": 2, ">": 3, ">>": 3, "<": 3, "<<": 3, "~": 3}


def _wrap(node: object, min_precedence: int) -> str:
    text = str(node)
    if isinstance(node, Binary) and PRECEDENCE[node.op] < min_precedence:
        return f"({text})"
    if isinstance(node, SpansetOp) and SPANSET_PRECEDENCE[node.op] < min_precedence:
        return f"({text})"
    return text


@dataclass(frozen=True, slots=True)
class SpansetFilter:
    expr: Field | None  # None: ``{ }``, every span

    def __str__(self) -> str:
        return "{ }" if self.expr is None else "{ " + str(self.expr) + " }"


@dataclass(frozen=True, slots=True)
class SpansetOp:
    """``&&`` / ``||`` between spansets, or a structural operator ``> >> < << ~``."""

    op: str
    left: SpansetExpr
    right: SpansetExpr

    def __str__(self) -> str:
        p = SPANSET_PRECEDENCE[self.op]
        return f"{_wrap(self.left, p)} {self.op} {_wrap(self.right, p + 1)}"


SpansetExpr = SpansetFilter | SpansetOp
SPANSET_OPS = ("&&", "||", ">", ">>", "<", "<<", "~")


@dataclass(frozen=True, slots=True)
class Aggregate:
    """``count() > 3``, ``avg(duration) > 20ms``: keeps spansets whose aggregate compares true."""

    fn: str  # count, avg, min, max, sum
    field: Field | None
    op: str
    value: Literal

    def __str__(self) -> str:
        inner = "" if self.field is None else str(self.field)
        return f"{self.fn}({inner}) {self.op} {self.value}"


@dataclass(frozen=True, slots=True)
class By:
    fields: tuple[Field, ...]

    def __str__(self) -> str:
        return "by(" + ", ".join(str(f) for f in self.fields) + ")"


@dataclass(frozen=True, slots=True)
class Select:
    fields: tuple[Field, ...]

    def __str__(self) -> str:
        return "select(" + ", ".join(str(f) for f in self.fields) + ")"


Stage = Aggregate | By | Select


@dataclass(frozen=True, slots=True)
class Query:
    spansets: SpansetExpr
    stages: tuple[Stage, ...] = ()

    def __str__(self) -> str:
        return " | ".join([str(self.spansets), *(str(s) for s in self.stages)])

    def filters(self) -> list[SpansetFilter]:
        out: list[SpansetFilter] = []
        todo: list[SpansetExpr] = [self.spansets]
        while todo:
            node = todo.pop()
            if isinstance(node, SpansetFilter):
                out.append(node)
            else:
                todo.extend((node.right, node.left))
        return out
