"""What every exporter shares (upstream's exporterhelper): a bounded sending queue and retries.

- ``sending_queue``: ``queue_size`` requests, drained by ``num_consumers`` workers. A full queue refuses
  new data with a retryable error (the receiver tells the sender to retry). With ``storage:
  file_storage/<name>`` the queue is a write-ahead log in that extension's directory: a request is taken
  once it is on disk, survives ``kill -9``, and is sent after a restart (at least once).
- ``retry_on_failure``: exponential backoff from ``initial_interval`` (× ``multiplier``, ± jitter, at most
  ``max_interval``, at least the server's own retry delay) until ``max_elapsed_time``; then the data is
  dropped and counted. Permanent errors (INVALID_ARGUMENT, 400, 401, ...) are dropped at once.
- ``timeout``: the limit of one attempt.
- Shutdown: a persistent queue keeps what it holds for the next start; a memory queue gets one last
  attempt per request (no more backoff), within 5 seconds, and reports what it could not send.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import model_validator

from meshtrace.collector.component import Component, Host
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import PermanentError, RetryableError
from meshtrace.store.wal import DurableWaiter, WriteAheadLog

log = logging.getLogger(__name__)


class QueueSettings(Settings):
    enabled: bool = True
    num_consumers: int = 10
    queue_size: int = 1000
    storage: str | None = None
    sizer: Literal["requests", "items", "bytes"] = "requests"
    blocking: bool = False
    wait_for_result: bool = False
    batch: Any = None

    @model_validator(mode="after")
    def _supported(self) -> QueueSettings:
        if self.batch is not None:
            raise ValueError("'batch' (batching inside the queue) is not supported; use the batch processor")
        if self.sizer != "requests":
            raise ValueError("only the 'requests' sizer is supported")
        return self


class RetrySettings(Settings):
    enabled: bool = True
    initial_interval: Seconds = 5.0
    randomization_factor: float = 0.5
    multiplier: float = 1.5
    max_interval: Seconds = 30.0
    max_elapsed_time: Seconds = 300.0


class _KeepForLater(Exception):
    """Shutdown interrupted the retries of a persistent queue's request: it is sent after the restart."""


@dataclass(slots=True)
class Queued:
    batch: Batch
    seq: int = 0  # the log record, for a persistent queue


class Exporter(Component):
    """Subclasses implement ``send`` (one attempt, raising PermanentError or RetryableError)."""

    def __init__(
        self, component_id: str, queue: QueueSettings, retry: RetrySettings, timeout: float, telemetry: Telemetry
    ) -> None:
        self.component_id = component_id
        self.queue_settings = queue
        self.retry = retry
        self.timeout = timeout
        self.telemetry = telemetry
        self._queue: deque[Queued] = deque()
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._wal: WriteAheadLog | None = None
        self._durable: DurableWaiter | None = None
        self._stopping = False

    async def send(self, batch: Batch) -> None:
        raise NotImplementedError

    # -- the consumer side ------------------------------------------------------------------------

    async def consume(self, batch: Batch) -> None:
        if not self.queue_settings.enabled:
            await self._send_with_retry(batch)
            return
        if self._stopping:
            raise RetryableError(f"{self.component_id} is shutting down", retry_after=5)
        if len(self._queue) + self._in_flight >= self.queue_settings.queue_size:
            self.telemetry.enqueue_failed[batch.signal].labels(self.component_id).inc(batch.items)
            raise RetryableError("sending queue is full", retry_after=1)
        # The queue keeps the bytes only: a parsed message costs several times their size in memory.
        item = Queued(Batch(batch.signal, raw=batch.raw, items=batch.items))
        if self._wal is not None:
            item.seq = self._wal.append(batch.signal.value, batch.items, batch.raw)
            self._wal.begin(item.seq, item.seq)  # outstanding until sent: the log's watermark waits for it
            assert self._durable is not None
            await self._durable.wait(item.seq)
        self._queue.append(item)
        self._gauge()
        self._ready.set()

    def _gauge(self) -> None:
        size = len(self._queue) + self._in_flight
        for signal in Signal:
            self.telemetry.queue_size.labels(self.component_id, signal.value).set(size)

    # -- the sending side -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                if self._stopping:
                    return
                await self._ready.wait()
            item = self._queue.popleft()
            self._in_flight += 1
            try:
                await self._send_with_retry(item.batch)
            except (PermanentError, RetryableError):
                pass  # logged and counted by _send_with_retry; the data is dropped
            except _KeepForLater:
                self._in_flight -= 1
                return
            except asyncio.CancelledError:
                # Shutdown interrupted the send: a persistent queue keeps the record for the next start.
                self._in_flight -= 1
                raise
            self._in_flight -= 1
            if self._wal is not None and item.seq:
                self._wal.mark_committed(item.seq, item.seq)
            self._gauge()

    async def _send_with_retry(self, batch: Batch) -> None:
        started = time.monotonic()
        interval = self.retry.initial_interval
        sent, failed = self.telemetry.sent[batch.signal], self.telemetry.send_failed[batch.signal]
        while True:
            try:
                await asyncio.wait_for(self.send(batch), self.timeout)
                sent.labels(self.component_id).inc(batch.items)
                return
            except PermanentError as exc:
                failed.labels(self.component_id).inc(batch.items)
                log.error(
                    "%s: dropping %d %s, the destination refused them: %s",
                    self.component_id,
                    batch.items,
                    batch.signal.item_name,
                    exc,
                )
                raise
            except (RetryableError, TimeoutError) as exc:
                retry_after = getattr(exc, "retry_after", None) or 0.0
                error = exc if isinstance(exc, RetryableError) else RetryableError("request timed out")
            except Exception as exc:
                log.warning("%s: unexpected error sending: %r", self.component_id, exc)
                retry_after, error = 0.0, RetryableError(str(exc))
            delay = max(retry_after, interval * (1 + self.retry.randomization_factor * (2 * random.random() - 1)))  # noqa: S311
            elapsed = time.monotonic() - started
            if self._stopping and self._wal is not None:
                raise _KeepForLater from error
            if not self.retry.enabled or elapsed + delay > self.retry.max_elapsed_time or self._stopping:
                failed.labels(self.component_id).inc(batch.items)
                log.error(
                    "%s: dropping %d %s after %.0fs of retries: %s",
                    self.component_id,
                    batch.items,
                    batch.signal.item_name,
                    elapsed,
                    error,
                )
                raise error
            log.warning("%s: export failed, retrying in %.1fs: %s", self.component_id, delay, error)
            await asyncio.sleep(delay)
            interval = min(interval * self.retry.multiplier, self.retry.max_interval)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: Host) -> None:
        storage_id = self.queue_settings.storage
        if self.queue_settings.enabled and storage_id:
            storage = host.extension(storage_id)
            if storage is None:
                raise PermanentError(f'{self.component_id}: storage "{storage_id}" is not an extension of this service')
            directory = storage.directory_for("exporter", self.component_id)
            self._wal = WriteAheadLog(directory, fsync=storage.fsync)
            self._durable = DurableWaiter(self._wal)
            self._durable.loop = asyncio.get_running_loop()
            recovery = await asyncio.to_thread(self._wal.open, self._durable.on_synced)
            for record in [r for batch in recovery.inflight for r in batch] + recovery.pending:
                self._queue.append(
                    Queued(Batch(Signal(record.label), raw=record.payload, items=record.count), record.seq)
                )
            if self._queue:
                log.info(
                    "%s: %d requests waiting in the persistent queue from the last run",
                    self.component_id,
                    len(self._queue),
                )
        if self.queue_settings.enabled:
            for signal in Signal:
                self.telemetry.queue_capacity.labels(self.component_id, signal.value).set(
                    self.queue_settings.queue_size
                )
            self._workers = [
                asyncio.create_task(self._worker()) for _ in range(max(1, self.queue_settings.num_consumers))
            ]
            if self._queue:
                self._ready.set()
            self._gauge()

    async def shutdown(self) -> None:
        self._stopping = True
        self._ready.set()
        if self._workers:
            persistent = self._wal is not None
            # A memory queue gets one last attempt per request, within 5 s; a persistent one keeps it for later.
            limit = 1.0 if persistent else 5.0
            _, pending = await asyncio.wait(self._workers, timeout=limit)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            lost = len(self._queue)
            if lost and not persistent:
                log.error("%s: %d queued requests could not be sent before shutdown", self.component_id, lost)
            self._workers = []
        if self._wal is not None:
            await asyncio.to_thread(self._wal.close)
            self._wal = None
        await self.close()

    async def close(self) -> None:
        """Release connections (subclasses)."""
        return None
