"""The write path: admission → write-ahead log → acknowledgement; one thread inserts batches behind it.

``write`` returns when the request is durable in the log (after its group fsync), not when it is in the
tables: this is what lets a few senders, each waiting for its acknowledgement, still fill 10k-span
inserts. The inserter thread takes whatever is pending when ``flush_spans`` spans have gathered or the
oldest has waited ``flush_interval``, inserts it into the ``Null`` table (ClickHouse decodes the OTLP
bytes itself) with the batch's deduplication token, then advances the log's checkpoint.

An insert that got no answer, or ran out of disk, memory or parts (``StoreUnavailable``), may have
committed in whole or in part (one materialized view's table has the rows, another not): it is repeated
as it was, same token, never split; only inserts the store refused outright are split to find records it
will never take (after an unanswered attempt, only a refusal to parse the data: ``StoreRejectedInput``).

Memory is bounded: requests not yet inserted are kept in memory (and on disk); past ``max_pending_bytes``
new requests are refused with ``Overloaded`` and a Retry-After estimated from the insert rate.

Without a log (``wal=None``), ``write`` waits for the insert itself.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from meshtrace.errors import Overloaded, StoreError, StoreRejectedInput, StoreUnavailable
from meshtrace.store.api import SpanBatch
from meshtrace.store.engine import Engine
from meshtrace.store.schema import WIRE_MESSAGE, Schema, wire_schema
from meshtrace.store.wal import DurableWaiter, Record, Recovery, WriteAheadLog

log = logging.getLogger(__name__)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_rows(records: list[Record]) -> bytes:
    """Length-delimited ``Row`` messages: each request's bytes followed by its tenant (field 1001)."""
    parts: list[bytes] = []
    for record in records:
        tenant = record.label.encode()
        suffix = b"\xca\x3e" + _varint(len(tenant)) + tenant  # tag of field 1001, wire type 2
        parts += (_varint(len(record.payload) + len(suffix)), record.payload, suffix)
    return b"".join(parts)


@dataclass(slots=True)
class WriterStats:
    """Counters the metrics endpoint and the status page read (updated by the inserter thread)."""

    committed_spans: int = 0
    committed_batches: int = 0
    failed_inserts: int = 0
    set_aside_spans: int = 0
    last_insert_seconds: float = 0.0
    last_error: str = ""


class Writer:
    """``SpanWriter`` over the ClickHouse engine, with or without a write-ahead log."""

    def __init__(
        self,
        engine: Engine,
        schema: Schema,
        wal: WriteAheadLog | None,
        *,
        flush_interval: float = 0.2,
        flush_spans: int = 10_000,
        max_pending_bytes: int = 256 << 20,
        inserters: int = 1,
        on_commit: Callable[[list[Record], float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.schema = schema
        self.wal = wal
        self.flush_interval = flush_interval
        self.flush_spans = flush_spans
        self.max_pending_bytes = max_pending_bytes
        self.stats = WriterStats()
        self._on_commit = on_commit
        self._settings: dict[str, str | int] = {
            **engine.format_schema_settings("otlp_wire.proto", wire_schema(), WIRE_MESSAGE),
            "input_format_protobuf_oneof_presence": 1,
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        self._cond = threading.Condition()
        self._pending: deque[tuple[Record, float]] = deque()  # not yet taken by the inserter
        self._pending_spans = 0
        self._unsaved_bytes = 0  # pending + being inserted
        self._committed_seq = 0
        self._appended_seq = 0
        self._seq = itertools.count(1)  # used when there is no log
        self._stopping = False
        # Without a log, acknowledgements follow commits one by one: keep commits in order.
        self.inserters = max(1, inserters) if wal is not None else 1
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._durable = DurableWaiter(wal) if wal is not None else None
        self._committed_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()
        self._rate = 0.0  # spans/s over recent inserts, for Retry-After
        self.last_refused = 0.0  # monotonic time of the last write refused as Overloaded

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> Recovery:
        """Open the log, insert what a crash left behind, then start the inserter thread."""
        self._loop = asyncio.get_running_loop()
        recovery = Recovery()
        if self.wal is not None:
            assert self._durable is not None
            self._durable.loop = self._loop
            recovery = await asyncio.to_thread(self.wal.open, self._durable.on_synced)
            self._committed_seq = self.wal.committed
            if recovery.inflight or recovery.pending:
                await asyncio.to_thread(self._replay, recovery)
            self._appended_seq = self._committed_seq = max(self._committed_seq, self.wal.committed)
        # One insert runs on one core; more inserter threads let ClickHouse use more (commits may then
        # finish out of order, which the log's watermark allows for).
        self._threads = [
            threading.Thread(target=self._insert_loop, name=f"meshtrace-inserter-{i}", daemon=True)
            for i in range(self.inserters)
        ]
        for thread in self._threads:
            thread.start()
        return recovery

    def _replay(self, recovery: Recovery) -> None:
        log.info(
            "write-ahead log: replaying %d acknowledged spans that were not yet in the tables",
            recovery.item_count,
        )
        with self._cond:
            self._unsaved_bytes += sum(len(r.payload) for b in (*recovery.inflight, recovery.pending) for r in b)
        for batch in recovery.inflight:
            self._insert(batch, retry_forever=True)
        pending = deque(recovery.pending)  # the recovery is reported to the caller as found
        while pending:
            batch, spans = [], 0
            while pending and (not batch or spans + pending[0].count <= self.flush_spans):
                spans += pending[0].count
                batch.append(pending.popleft())
            self._insert(batch, retry_forever=True)

    async def close(self) -> None:
        """Insert everything acknowledged, stop the inserter, close the log. Safe to call twice."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []
        if self.wal is not None:
            await asyncio.to_thread(self.wal.close)

    # -- the SpanWriter protocol ------------------------------------------------------------------

    async def write(self, batch: SpanBatch) -> None:
        loop = self._loop = asyncio.get_running_loop()  # wake-ups go to the loop the waiters live on
        size = len(batch.payload)
        with self._cond:
            if self._stopping:
                raise Overloaded("the backend is shutting down", retry_after=5)
            if self._unsaved_bytes and self._unsaved_bytes + size > self.max_pending_bytes:
                self.last_refused = time.monotonic()
                raise Overloaded(
                    f"the store is behind by {self._unsaved_bytes >> 20} MiB of spans; retry later",
                    retry_after=self._retry_after(),
                )
            self._unsaved_bytes += size
        try:
            if self.wal is not None:
                seq = self.wal.append(batch.tenant, batch.span_count, batch.payload)
            else:
                seq = next(self._seq)
        except StoreError:
            with self._cond:
                self._unsaved_bytes -= size
            raise
        record = Record(seq, batch.tenant, batch.span_count, batch.payload)
        committed: asyncio.Future[None] | None = None
        if self.wal is None:
            committed = loop.create_future()
            heapq.heappush(self._committed_waiters, (seq, next(self._tiebreak), committed))
        with self._cond:
            self._pending.append((record, time.monotonic()))
            self._pending_spans += record.count
            self._appended_seq = seq
            self._cond.notify()
        if committed is not None:
            await committed
        elif self._durable is not None:
            await self._durable.wait(seq)

    async def sync(self) -> None:
        """Wait until every write acknowledged before this call is visible to readers."""
        target = self._appended_seq
        if target <= self._committed_seq:
            return
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._committed_waiters, (target, next(self._tiebreak), future))
        self._wake_committed(self._committed_seq)
        await future

    # -- state for metrics and readiness ----------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._unsaved_bytes

    @property
    def pending_spans(self) -> int:
        return self._pending_spans

    def refusing(self, within: float = 5.0) -> bool:
        """Whether a write was refused for lack of room in the last ``within`` seconds."""
        return bool(self.last_refused) and time.monotonic() - self.last_refused < within

    @property
    def healthy(self) -> bool:
        return not self.stats.last_error and not (self.wal is not None and self.wal.broken)

    def _retry_after(self) -> float:
        """Seconds until the backlog is inserted at the recent insert rate (1 to 30)."""
        if self._rate <= 0:
            return 2.0
        return float(min(max(round(self._pending_spans / self._rate + 1), 1), 30))

    # -- waking waiters on the event loop ---------------------------------------------------------

    def _committed_from_thread(self, seq: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_committed, seq)

    def _wake_committed(self, seq: int) -> None:
        self._committed_seq = max(self._committed_seq, seq)
        _release(self._committed_waiters, self._committed_seq)

    def _fail_waiters(self, first: int, last: int, error: StoreError) -> None:
        def fail() -> None:
            keep = []
            while self._committed_waiters:
                item = heapq.heappop(self._committed_waiters)
                if first <= item[0] <= last and not item[2].done():
                    item[2].set_exception(error)
                else:
                    keep.append(item)
            for item in keep:
                heapq.heappush(self._committed_waiters, item)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fail)

    # -- the inserter thread ----------------------------------------------------------------------

    def _take_batch(self) -> list[Record] | None:
        with self._cond:
            while True:
                if self._pending:
                    age = time.monotonic() - self._pending[0][1]
                    if self._pending_spans >= self.flush_spans or age >= self.flush_interval or self._stopping:
                        break
                    self._cond.wait(self.flush_interval - age)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
            batch: list[Record] = []
            spans = 0
            while self._pending and (not batch or spans + self._pending[0][0].count <= self.flush_spans):
                record, _ = self._pending.popleft()
                batch.append(record)
                spans += record.count
            self._pending_spans -= spans
            if self.wal is not None:  # before another inserter can take (and commit) later records
                self.wal.begin(batch[0].seq, batch[-1].seq)
            return batch

    def _insert_loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._insert(batch, retry_forever=self.wal is not None)

    def _insert(self, batch: list[Record], *, retry_forever: bool) -> None:
        """Insert one batch; with a log behind it, keep at it until every record landed or was set aside.

        Only an insert the store refused outright is split (to find records it will never take): one that
        got no answer or ran out of a resource may have committed in part, so ``_attempt`` repeats it as it
        was, same token, until it goes in.
        """
        delay = 0.1
        while True:
            for _ in range(3):
                error = self._attempt(batch, patient=retry_forever)
                if error is None:
                    return
                if not retry_forever:
                    self._release_bytes(batch)
                    self._fail_waiters(batch[0].seq, batch[-1].seq, error)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            # Split it: if some records land, the store works and the others are suspects.
            suspects, landed = self._isolate(batch)
            if not suspects:
                return
            if landed:
                for record in suspects:
                    self._retry_or_set_aside(record)
                return
            log.warning("store refuses every part of %d spans; retrying", sum(r.count for r in batch))

    def _attempt(self, batch: list[Record], *, patient: bool = True) -> StoreError | None:
        """Insert ``batch``: ``None`` once it is in, or the store's refusal. On ``StoreUnavailable`` (no
        answer, or out of a resource) the same insert is repeated until it goes in or is refused outright;
        ``patient=False`` (no log behind the batch) returns that error too."""
        delay, unknown = 0.1, False
        while True:
            try:
                self._insert_once(batch)
                return None
            except StoreUnavailable as exc:
                self._note_failure(batch, exc)
                if not patient:
                    return exc
                unknown = True
            except StoreError as exc:
                self._note_failure(batch, exc)
                # Refused after an attempt that may have committed (in part): never split this batch, or
                # that attempt's rows would be inserted again under other tokens. Unless the store cannot
                # parse these very bytes: then no attempt at them ever wrote anything.
                if not unknown or isinstance(exc, StoreRejectedInput):
                    if self.wal is not None:  # nothing of it committed: it may be split
                        self.wal.mark_failed(batch[0].seq, batch[-1].seq)
                    return exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _isolate(self, batch: list[Record]) -> tuple[list[Record], bool]:
        """Insert halves recursively; return the records that still fail and whether any landed."""
        if len(batch) == 1:
            return batch, False
        middle = len(batch) // 2
        suspects: list[Record] = []
        landed = False
        for half in (batch[:middle], batch[middle:]):
            if self._attempt(half) is None:
                landed = True
            else:
                more, some = self._isolate(half)
                suspects += more
                landed = landed or some
        return suspects, landed

    def _retry_or_set_aside(self, record: Record, attempts: int = 4) -> None:
        for attempt in range(attempts):
            if self._attempt([record]) is None:
                return
            time.sleep(0.1 * 2**attempt)
        # Other records go in and this one never does: keep it for inspection, let the log move on.
        path = self.wal.set_aside(record) if self.wal is not None else "(nowhere: no write-ahead log)"
        log.error(
            "the store refuses %d acknowledged spans of tenant %r (log record %d): %s; kept in %s",
            record.count,
            record.label,
            record.seq,
            self.stats.last_error,
            path,
        )
        self.stats.set_aside_spans += record.count
        if self.wal is not None:
            self.wal.mark_committed(record.seq, record.seq)
        self._release_bytes([record])
        self._committed_from_thread(self.wal.committed if self.wal is not None else record.seq)

    def _note_failure(self, batch: list[Record], exc: StoreError) -> None:
        self.stats.failed_inserts += 1
        self.stats.last_error = str(exc)
        log.warning("insert of %d spans failed: %s", sum(r.count for r in batch), exc)

    def settings_for(self, first: int, last: int) -> dict[str, str | int]:
        """Insert settings of the batch ``first..last`` (its deduplication token included)."""
        settings = dict(self._settings)
        if self.wal is not None:
            settings["insert_deduplication_token"] = self.wal.token(first, last)
        return settings

    def _insert_once(self, batch: list[Record]) -> None:
        first, last = batch[0].seq, batch[-1].seq
        settings = self.settings_for(first, last)
        if self.wal is not None:
            self.wal.mark_inflight(first, last)
        started = time.perf_counter()
        try:
            self.engine.insert(self.schema.otlp_in, encode_rows(batch), "Protobuf", settings)
        except Exception as exc:
            # The range stays in flight until it commits or ``_attempt`` knows no attempt committed: a
            # replay after a crash repeats this very insert, with its token, as the next attempt would.
            if isinstance(exc, StoreError):
                raise
            # A bug must not kill the inserter thread (every writer would wait forever): log it with its
            # traceback and let the retry and set-aside logic treat it like any failed insert.
            log.exception("unexpected error inserting %d records", len(batch))
            raise StoreError(f"unexpected error: {exc!r}") from exc
        elapsed = time.perf_counter() - started
        if self.wal is not None:
            self.wal.mark_committed(first, last)
        spans = sum(r.count for r in batch)
        self.stats.committed_spans += spans
        self.stats.committed_batches += 1
        self.stats.last_insert_seconds = elapsed
        self.stats.last_error = ""
        rate = spans / max(elapsed, 1e-6)
        self._rate = 0.7 * self._rate + 0.3 * rate if self._rate else rate
        self._release_bytes(batch)
        self._committed_from_thread(self.wal.committed if self.wal is not None else last)
        if self._on_commit is not None:
            self._on_commit(batch, elapsed)

    def _release_bytes(self, batch: list[Record]) -> None:
        with self._cond:
            self._unsaved_bytes -= sum(len(r.payload) for r in batch)


def _release(heap: list[tuple[int, int, asyncio.Future[None]]], seq: int) -> None:
    while heap and heap[0][0] <= seq:
        _, _, future = heapq.heappop(heap)
        if not future.done():
            future.set_result(None)
