"""The ``memory_limiter`` processor: refuses data with a retryable error while memory is over its limit.

Resident memory is checked every ``check_interval``, and again when data arrives if the last check is
more than 10 ms old (reading it costs microseconds; between interval checks a burst of large requests
would otherwise overshoot). Above ``limit - spike_limit`` (the soft limit) new data is refused with
"data refused due to high memory usage" — senders retry later; above the hard limit a garbage
collection is forced too. Put it first in a pipeline, as upstream recommends: receivers then refuse
before decoding anything.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Any

from pydantic import model_validator

from meshtrace.collector.component import Component, Consumer, Host
from meshtrace.collector.data import Batch
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.collector.telemetry import Telemetry, rss_bytes
from meshtrace.errors import RetryableError

log = logging.getLogger(__name__)
MIB = 1 << 20


class MemoryLimiterSettings(Settings):
    check_interval: Seconds = 0
    limit_mib: int = 0
    spike_limit_mib: int = 0
    limit_percentage: int = 0
    spike_limit_percentage: int = 0

    @model_validator(mode="after")
    def _limits(self) -> MemoryLimiterSettings:
        if self.check_interval <= 0:
            raise ValueError("'check_interval' must be greater than zero")
        if self.limit_mib <= 0 and self.limit_percentage <= 0:
            raise ValueError("'limit_mib' or 'limit_percentage' must be greater than zero")
        if self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            raise ValueError("'spike_limit_mib' must be smaller than 'limit_mib'")
        return self

    def limits(self) -> tuple[int, int]:
        """(hard, soft) limits in bytes."""
        if self.limit_mib:
            hard = self.limit_mib * MIB
            spike = self.spike_limit_mib * MIB if self.spike_limit_mib else hard // 5
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            hard = total * self.limit_percentage // 100
            spike = total * self.spike_limit_percentage // 100 if self.spike_limit_percentage else hard // 5
        return hard, hard - spike


class MemoryLimiter(Component):
    def __init__(
        self, component_id: str, settings: MemoryLimiterSettings, next_consumer: Consumer, telemetry: Telemetry
    ) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer
        self.telemetry = telemetry
        self.hard, self.soft = settings.limits()
        self.refusing = False
        self._checked = 0.0
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        self._checked = time.monotonic()
        rss = rss_bytes()
        if rss > self.hard:
            gc.collect()
            rss = rss_bytes()
        refusing = rss > self.soft
        if refusing != self.refusing:
            log.warning(
                "%s: memory %s MiB, soft limit %s MiB: %s",
                self.component_id,
                rss // MIB,
                self.soft // MIB,
                "refusing data" if refusing else "accepting data again",
            )
        self.refusing = refusing

    async def _watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.settings.check_interval)

    def refusal(self) -> RetryableError | None:
        if time.monotonic() - self._checked > min(self.settings.check_interval, 0.01):
            self.check()
        if self.refusing:
            return RetryableError("data refused due to high memory usage", retry_after=self.settings.check_interval)
        return None

    async def consume(self, batch: Batch) -> None:
        error = self.refusal()
        if error is not None:
            self.telemetry.refused_memory.labels(self.component_id).inc(batch.items)
            raise error
        await self.next.consume(batch)

    async def start(self, host: Host) -> None:
        self.check()
        self._task = asyncio.create_task(self._watch())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _create(component_id: str, settings: MemoryLimiterSettings, ctx: Any) -> MemoryLimiter:
    return MemoryLimiter(component_id, settings, ctx.next_consumer, ctx.telemetry)


register(Factory("processor", "memory_limiter", MemoryLimiterSettings, _create))
