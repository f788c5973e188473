"""TraceQL conditions pushed down to SQL: which traces can possibly match, newest first.

The SQL is a filter that may let through too much but never too little; the query layer then evaluates
the exact TraceQL on the loaded traces. Per spanset filter, conditions on span fields become a WHERE
clause (the span matches) and the spanset operators a HAVING clause over the trace's spans (``&&`` and
the structural operators: both sides have a matching span; ``||``: either). Conditions SQL cannot
express (trace-level intrinsics, arithmetic, negations) count as true here. When every condition is
on a column of the narrow search table (service, span name, kind, status, duration, the hot Istio
attributes), the search table is read instead of the span table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meshtrace.query.traceql.ast import (
    Attribute,
    Binary,
    Field,
    Intrinsic,
    Literal,
    Query,
    SpansetExpr,
    SpansetFilter,
)
from meshtrace.store.api import TimeRange, TraceSummary
from meshtrace.store.engine import Engine
from meshtrace.store.schema import HOT_ATTRIBUTES, Schema

_STATUS = {"error": "Error", "ok": "Ok", "unset": "Unset"}
_KIND = {
    "server": "Server",
    "client": "Client",
    "producer": "Producer",
    "consumer": "Consumer",
    "internal": "Internal",
    "unspecified": "Unspecified",
}
_INDEX_COLUMNS = {"ServiceName", "SpanName", "SpanKind", "Duration", "StatusCode", *HOT_ATTRIBUTES.values()}
_SQL_OPS = {"=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_FLIP = {">": "<", "<": ">", ">=": "<=", "<=": ">="}


@dataclass
class _Builder:
    params: dict[str, Any] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)  # column names the conditions read

    def param(self, value: Any, kind: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{kind}}}"

    def column(self, node: Field) -> tuple[str, str] | None:
        """SQL of a field and its type ("text", "number", "duration", "status", "kind")."""
        if isinstance(node, Intrinsic):
            column = {
                "name": "SpanName",
                "statusMessage": "StatusMessage",
                "duration": "Duration",
                "status": "StatusCode",
                "kind": "SpanKind",
            }.get(node.name)
            if column is None:
                return None  # trace-level: evaluated after loading
            self.columns.add(column)
            kind = {"Duration": "duration", "StatusCode": "status", "SpanKind": "kind"}.get(column, "text")
            return column, kind
        if not isinstance(node, Attribute):
            return None
        if node.name == "service.name" and node.scope in ("resource", ""):
            self.columns.add("ServiceName")
            return "ServiceName", "text"
        key = self.param(node.name, "String")
        if node.scope == "span":
            hot = HOT_ATTRIBUTES.get(node.name)
            if hot:
                self.columns.add(f"hot:{hot}")  # its own column on the search table, the map elsewhere
                return f"@{hot}|SpanAttributes[{key}]", "text"
            self.columns.add("SpanAttributes")
            return f"SpanAttributes[{key}]", "text"
        self.columns.add("ResourceAttributes")
        if node.scope == "resource":
            return f"ResourceAttributes[{key}]", "text"
        self.columns.add("SpanAttributes")
        return f"if(mapContains(SpanAttributes, {key}), SpanAttributes[{key}], ResourceAttributes[{key}])", "text"

    def presence(self, node: Field) -> str | None:
        if not isinstance(node, Attribute) or node.name == "service.name":
            return None
        key = self.param(node.name, "String")
        self.columns.update(("SpanAttributes", "ResourceAttributes"))
        if node.scope == "span":
            return f"mapContains(SpanAttributes, {key})"
        if node.scope == "resource":
            return f"mapContains(ResourceAttributes, {key})"
        return f"(mapContains(SpanAttributes, {key}) OR mapContains(ResourceAttributes, {key}))"

    def condition(self, node: Field | None) -> str | None:
        """A span-level SQL condition implied by ``node``, or None when nothing can be said."""
        if node is None:
            return None
        if isinstance(node, Attribute):
            return self.condition(Binary("=", node, Literal("bool", True)))
        if not isinstance(node, Binary):
            return None
        if node.op in ("&&", "||"):
            left, right = self.condition(node.left), self.condition(node.right)
            if node.op == "&&":
                parts = [p for p in (left, right) if p]
                return " AND ".join(f"({p})" for p in parts) if parts else None
            return f"({left}) OR ({right})" if left and right else None
        left_node, right_node, op = node.left, node.right, node.op
        if isinstance(left_node, Literal) and not isinstance(right_node, Literal):
            left_node, right_node, op = right_node, left_node, _FLIP.get(op, op)
        if not isinstance(right_node, Literal):
            return None
        return self.compare(left_node, op, right_node)

    def compare(self, node: Field, op: str, literal: Literal) -> str | None:
        if literal.kind == "nil":
            present = self.presence(node)
            if present is None:
                return None
            return f"NOT {present}" if op == "=" else present if op == "!=" else None
        found = self.column(node)
        if found is None:
            return None
        sql, kind = found
        if literal.kind == "status" and kind == "status":
            return f"{sql} {_SQL_OPS[op]} {self.param(_STATUS[str(literal.value)], 'String')}"
        if literal.kind == "spankind" and kind == "kind":
            return f"{sql} {_SQL_OPS[op]} {self.param(_KIND[str(literal.value)], 'String')}"
        if kind == "duration":
            if literal.kind in ("duration", "int", "float") and op in _SQL_OPS:
                return f"{sql} {_SQL_OPS[op]} {self.param(float(literal.value), 'Float64')}"  # type: ignore[arg-type]
            return None
        if kind != "text":
            return None
        if op in ("=~", "!~"):
            pattern = self.param(f"^(?:{literal.value})$", "String")
            return f"{'' if op == '=~' else 'NOT '}match({sql}, {pattern})"
        if literal.kind == "string":
            return f"{sql} {_SQL_OPS[op]} {self.param(literal.value, 'String')}"
        if literal.kind in ("int", "float"):
            return f"toFloat64OrNull({sql}) {_SQL_OPS[op]} {self.param(float(literal.value), 'Float64')}"  # type: ignore[arg-type]
        if literal.kind == "bool" and op in ("=", "!="):
            return f"{sql} {_SQL_OPS[op]} {self.param('true' if literal.value else 'false', 'String')}"
        return None


def _having(expr: SpansetExpr, conditions: dict[int, str | None]) -> str | None:
    if isinstance(expr, SpansetFilter):
        cond = conditions[id(expr)]
        return f"countIf({cond}) > 0" if cond else None
    left, right = _having(expr.left, conditions), _having(expr.right, conditions)
    if expr.op == "||":
        return f"({left}) OR ({right})" if left and right else None
    parts = [p for p in (left, right) if p]
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({p})" for p in parts) if parts else None


@dataclass(frozen=True, slots=True)
class Plan:
    on_index: bool
    where: str | None
    having: str | None
    params: dict[str, Any]


def plan(query: Query, *, span_table: bool = False) -> Plan:
    """``span_table``: plan for the span table even when the search table would do."""
    builder = _Builder()
    conditions = {id(f): builder.condition(f.expr) for f in query.filters()}
    on_index = not span_table and all(c in _INDEX_COLUMNS or c.startswith("hot:") for c in builder.columns)
    having = _having(query.spansets, conditions)
    pushed = [c for c in conditions.values() if c]
    # Rows matching no pushed condition count in no countIf: the WHERE clause may drop them whenever
    # HAVING decides (``{ } && {…}`` reads only the spans of the right side). Without a HAVING every
    # trace with any span is a candidate, so nothing may be dropped.
    where = " OR ".join(f"({c})" for c in pushed) if having and pushed else None
    if having is not None and len(pushed) == 1 and having == f"countIf({pushed[0]}) > 0":
        having = None  # the WHERE clause already says it
    finish = _index_sql if on_index else _span_sql
    return Plan(on_index, finish(where) if where else None, finish(having) if having else None, builder.params)


_HOT = re.compile(r"@(\w+)\|(SpanAttributes\[\{p\d+:String\}\])")


def _index_sql(sql: str) -> str:
    """Hot attributes read their search-table column …"""
    return _HOT.sub(r"\1", sql)


def _span_sql(sql: str) -> str:
    """… or the attribute map on the span table."""
    return _HOT.sub(r"\2", sql)


def candidates(
    engine: Engine, schema: Schema, tenant: str, time: TimeRange, planned: Plan, limit: int, offset: int = 0
) -> list[TraceSummary]:
    """Trace ids that may match, newest first (by their first span in the window)."""
    table = schema.span_index if planned.on_index else schema.traces
    clauses = [
        "Tenant = {tenant:String}",
        "Timestamp >= fromUnixTimestamp64Nano({t0:Int64}) AND Timestamp < fromUnixTimestamp64Nano({t1:Int64})",
    ]
    if planned.where:
        clauses.append(f"({planned.where})")
    having = f"HAVING {planned.having}" if planned.having else ""
    rows = engine.query(
        f"""SELECT TraceId, min(toUnixTimestamp64Nano(Timestamp)) AS first_start,
               max(toUnixTimestamp64Nano(Timestamp) + Duration) AS last_end
        FROM {table} WHERE {" AND ".join(clauses)}
        GROUP BY TraceId {having}
        ORDER BY first_start DESC, TraceId
        LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}""",
        {
            **planned.params,
            "tenant": tenant,
            "t0": time.start_ns,
            "t1": time.end_ns,
            "limit": limit,
            "offset": offset,
        },
    )
    return [TraceSummary(tid, int(start), int(end)) for tid, start, end in rows]
