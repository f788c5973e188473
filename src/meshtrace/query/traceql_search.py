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


FIRST_CHUNK_NS = 10 * 60 * 10**9


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
    """Newest matches first. The window is searched from its end backwards in growing chunks, so the
    usual question (recent traces like this) stops early instead of ranking every match of the window.
    ``trace_filter``: a further condition on whole traces (Tempo's min/maxDuration)."""
    planned = plan(traceql)
    matches: list[Match] = []
    seen: set[str] = set()
    inspected = spans = 0
    # Two conditions on different spans of a trace could fall on both sides of a chunk boundary: such
    # plans (a HAVING clause) search the window whole.
    for chunk in time.newest_first(FIRST_CHUNK_NS) if planned.having is None else [time]:
        page, offset = max(limit, 20), 0
        while len(matches) < limit and inspected < max_inspected:
            size = min(page, max_inspected - inspected)
            found = await query.run(query.reader.traceql_candidates, tenant, chunk, planned, size, offset)
            fresh = [s.trace_id for s in found if s.trace_id not in seen]
            seen.update(fresh)
            traces = await query.run(query.reader.get_trace_batch, tenant, fresh) if fresh else []
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
        if len(matches) >= limit or inspected >= max_inspected:
            break
    matches.sort(key=lambda m: (-m.trace.start_ns, m.trace.trace_id))
    return SearchResult(matches, inspected, spans)
