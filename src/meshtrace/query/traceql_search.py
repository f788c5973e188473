"""TraceQL search: SQL narrows the candidates, the evaluator decides, pages until ``limit`` traces match.

Candidates come newest first in pages; each page's traces are loaded whole and evaluated. The search
stops at ``limit`` matches or after ``max_inspected`` candidate traces (reported in the metrics, as
Tempo reports what it inspected), so a query SQL cannot narrow does not read the whole window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshtrace.model.spans import Trace
from meshtrace.query.service import QueryService
from meshtrace.query.traceql import Query, Spanset, evaluate
from meshtrace.store.api import TimeRange
from meshtrace.store.traceql_sql import plan


@dataclass(slots=True)
class Match:
    trace: Trace
    spansets: list[Spanset]


@dataclass(slots=True)
class SearchResult:
    matches: list[Match]
    inspected_traces: int
    inspected_spans: int


async def search(
    query: QueryService,
    tenant: str,
    traceql: Query,
    time: TimeRange,
    limit: int,
    *,
    max_inspected: int = 5000,
    trace_filter: Callable[[Trace], bool] | None = None,
) -> SearchResult:
    """``trace_filter``: a further condition on whole traces (Tempo's min/maxDuration)."""
    planned = plan(traceql)
    matches: list[Match] = []
    inspected = spans = 0
    page = max(2 * limit, 50)
    offset = 0
    while len(matches) < limit and inspected < max_inspected:
        size = min(page, max_inspected - inspected)
        found = await query.run(query.reader.traceql_candidates, tenant, time, planned, size, offset)
        if not found:
            break
        traces = await query.run(query.reader.get_trace_batch, tenant, [s.trace_id for s in found])
        for trace in traces:
            inspected += 1
            spans += len(trace.spans)
            if trace_filter is not None and not trace_filter(trace):
                continue
            sets = evaluate(traceql, trace)
            if sets:
                matches.append(Match(trace, sets))
                if len(matches) == limit:
                    break
        if len(found) < size:
            break
        offset += size
        page = min(page * 2, 1000)
    return SearchResult(matches, inspected, spans)
