"""The query service: the one layer between thin HTTP handlers and the store reader.

Reader calls block (the engine works in C++ with the GIL released), so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from meshtrace.errors import TraceNotFound
from meshtrace.model.spans import DependencyLink, Operation, SpanKind, Trace
from meshtrace.query.adjusters import adjust
from meshtrace.store.analytics import AnalyticsReader
from meshtrace.store.api import TimeRange, TraceQuery, TraceReader

T = TypeVar("T")


class QueryService:
    def __init__(self, reader: TraceReader, analytics: AnalyticsReader | None = None) -> None:
        self.reader = reader
        self.analytics = analytics

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking store call in a worker thread."""
        return await asyncio.to_thread(fn, *args)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get_trace(self, tenant: str, trace_id: str, time: TimeRange | None = None, *, raw: bool = False) -> Trace:
        trace = await self._run(self.reader.get_trace, tenant, trace_id, time)
        if trace is None:
            raise TraceNotFound(f"trace {trace_id} not found")
        return trace if raw else adjust(trace)

    async def get_traces(
        self, tenant: str, trace_ids: list[str], *, raw: bool = False
    ) -> tuple[list[Trace], list[str]]:
        """Several traces by id; returns those found and the ids that were not."""
        found, missing = [], []
        for trace_id in trace_ids:
            try:
                found.append(await self.get_trace(tenant, trace_id, raw=raw))
            except TraceNotFound:
                missing.append(trace_id)
        return found, missing

    async def find_traces(self, query: TraceQuery, *, raw: bool = False) -> list[Trace]:
        traces = await self._run(self.reader.find_traces, query)
        return traces if raw else [adjust(t) for t in traces]

    async def get_services(self, tenant: str) -> list[str]:
        return await self._run(self.reader.get_services, tenant)

    async def get_operations(self, tenant: str, service: str, kind: SpanKind | None = None) -> list[Operation]:
        return await self._run(self.reader.get_operations, tenant, service, kind)

    async def count(self, tenant: str, time: TimeRange | None = None) -> tuple[int, int, int]:
        return await self._run(self.reader.count, tenant, time)

    async def get_dependencies(self, tenant: str, time: TimeRange) -> list[DependencyLink]:
        return await self._run(self.reader.get_dependencies, tenant, time)


def window(end_ns: int | None, lookback_ns: int) -> TimeRange:
    end = end_ns if end_ns is not None else time.time_ns()
    return TimeRange(end - lookback_ns, end)
