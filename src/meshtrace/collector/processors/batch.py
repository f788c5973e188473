"""The ``batch`` processor: gathers requests into batches of ``send_batch_size`` or every ``timeout``.

When one of the pipeline's exporters keeps its queue on disk (``sending_queue::storage``), a request is
acknowledged only once the batch holding it is in that queue: batching never hides a loss from the sender
(at the price of up to ``timeout`` of waiting when few senders are busy). Otherwise the data would be in
memory downstream too, so, as upstream, a request is acknowledged once buffered; the buffer stays bounded:
while the next stage refuses batches (a full queue), new data is refused with a retryable error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import model_validator

from meshtrace.collector.component import Component, Consumer, Host
from meshtrace.collector.data import Batch, split
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import RetryableError

log = logging.getLogger(__name__)


class BatchSettings(Settings):
    send_batch_size: int = 8192
    timeout: Seconds = 0.2
    send_batch_max_size: int = 0
    metadata_keys: list[str] = []
    metadata_cardinality_limit: int = 1000

    @model_validator(mode="after")
    def _sizes(self) -> BatchSettings:
        if self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            raise ValueError("send_batch_max_size must be greater or equal to send_batch_size")
        return self


class BatchProcessor(Component):
    def __init__(
        self,
        component_id: str,
        settings: BatchSettings,
        next_consumer: Consumer,
        telemetry: Telemetry,
        *,
        durable_downstream: bool = False,
    ) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer
        self.telemetry = telemetry
        self.durable_downstream = durable_downstream
        self._refused: RetryableError | None = None
        self._pending: list[tuple[Batch, asyncio.Future[None] | None]] = []
        self._items = 0
        self._timer: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def consume(self, batch: Batch) -> None:
        if not self.durable_downstream and self._refused is not None:
            raise self._refused
        future = asyncio.get_running_loop().create_future() if self.durable_downstream else None
        self._pending.append((batch, future))
        self._items += batch.items
        if self._items >= self.settings.send_batch_size:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._after_timeout())
        if future is not None:
            await future

    async def _after_timeout(self) -> None:
        await asyncio.sleep(self.settings.timeout)
        self._timer = None
        self._start_flush()

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._items = self._pending, [], 0
        if pending:
            task = asyncio.create_task(self._flush(pending))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, pending: list[tuple[Batch, asyncio.Future[None] | None]]) -> None:
        merged = Batch.merge(b for b, _ in pending)
        error: BaseException | None = None
        for part in split(merged, self.settings.send_batch_max_size):
            try:
                await self.next.consume(part)
                self.telemetry.batch_send_size.labels(self.component_id).inc(part.items)
            except Exception as exc:  # waiting contributors get it; nothing is swallowed
                error = exc
        self._refused = error if isinstance(error, RetryableError) else None
        if error is not None and not self.durable_downstream:
            log.error("%s: could not pass on %d items: %s", self.component_id, merged.items, error)
        for _, future in pending:
            if future is not None and not future.done():
                future.set_exception(error) if error is not None else future.set_result(None)

    async def start(self, host: Host) -> None:
        return None

    async def shutdown(self) -> None:
        self._start_flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


def _create(component_id: str, settings: BatchSettings, ctx: Any) -> BatchProcessor:
    return BatchProcessor(
        component_id, settings, ctx.next_consumer, ctx.telemetry, durable_downstream=ctx.durable_downstream
    )


register(Factory("processor", "batch", BatchSettings, _create))
