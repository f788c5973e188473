"""``meshtrace traffic``: requests to the gateway at a steady rate and concurrency, with a progress bar
and a summary (status codes, latency percentiles)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass(slots=True)
class Summary:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.startswith(("2", "3")))

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def send(
    url: str,
    count: int,
    rate: float | None,
    concurrency: int,
    on_done: object = None,
    headers: dict[str, str] | None = None,
) -> Summary:
    """``count`` GETs of ``url``; ``rate`` per second at most (``None``: as fast as ``concurrency`` allows)."""
    summary = Summary()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            begin = time.monotonic()
            try:
                response = await client.get(url, headers=headers)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            summary.latencies.append(time.monotonic() - begin)
            summary.statuses[status] += 1
            summary.sent += 1
            if callable(on_done):
                on_done()

    async with httpx.AsyncClient(timeout=30.0, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
    summary.seconds = time.monotonic() - started
    return summary
