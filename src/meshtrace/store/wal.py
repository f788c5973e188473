"""Write-ahead log: what lets the backend acknowledge a request before ClickHouse has inserted it.

Why: with acknowledgements only after an insert, four senders can never put more than four requests
into one insert, and an insert costs ~30 ms whatever its size. Acknowledging on the log and inserting
10k-span batches behind it is what makes both durability and throughput possible.

Layout: ``<dir>/<first-seq>.wal`` segments of records, and ``checkpoint.json`` holding the log's epoch,
the watermark (every record up to it is committed), the ranges committed above it (several inserters
finish out of order) and the ranges being inserted right now. A record is ``magic | length | crc32 | seq |
item count | label | payload`` (the label is what the record belongs to: a tenant in the store, a signal
in a collector's persistent queue); a torn record at the end of the last segment (a crash in mid-append)
is cut off on open. Replay skips the committed ranges and re-inserts in-flight ranges with their original
boundaries, so ClickHouse's insert deduplication (keyed by epoch and range) applies each batch exactly
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson

from meshtrace.errors import StoreError

log = logging.getLogger(__name__)

_MAGIC = 0x4D54574C  # "MTWL"
_HEAD = struct.Struct("<III")  # magic, body length, crc32(body)
_BODY = struct.Struct("<QIH")  # seq, item count, label length
_SUFFIX = ".wal"
_CHECKPOINT = "checkpoint.json"


@dataclass(slots=True)
class Record:
    seq: int
    label: str
    count: int
    payload: bytes


@dataclass(slots=True)
class Recovery:
    """What a restart finds: batches that were being inserted, and records never inserted."""

    inflight: list[list[Record]] = field(default_factory=list)
    pending: list[Record] = field(default_factory=list)

    @property
    def item_count(self) -> int:
        return sum(r.count for batch in self.inflight for r in batch) + sum(r.count for r in self.pending)


class WriteAheadLog:
    """Append-only record log with group fsync. ``append`` is thread-safe and does not wait for disk."""

    def __init__(self, directory: str, *, fsync: bool = True, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.epoch = ""
        self.committed = 0
        self._inflight: dict[int, int] = {}  # first -> last of inserts running now
        self._outstanding: set[int] = set()  # taken for insertion, not yet committed
        self._done: list[tuple[int, int]] = []  # committed ranges above the watermark, ascending
        self._highest_done = 0
        self._lock = threading.Lock()
        self._next_seq = 1
        self._fd = -1
        self._segment_first = 0
        self._segment_size = 0
        self._segments: list[int] = []  # first seq of each segment file, ascending
        # group fsync state
        self._appended = 0
        self._synced = 0
        self._to_close: list[int] = []
        self._sync_cond = threading.Condition(self._lock)
        self._sync_thread: threading.Thread | None = None
        self._closing = False
        self._on_synced: Callable[[int], None] | None = None
        self.broken: str = ""

    # -- opening and replay ---------------------------------------------------------------------

    def open(self, on_synced: Callable[[int], None] | None = None) -> Recovery:
        """Read the checkpoint and segments, cut a torn tail, and return what must be (re)inserted."""
        os.makedirs(self.directory, exist_ok=True)
        self._on_synced = on_synced
        checkpoint = self._read_checkpoint()
        self.epoch = checkpoint.get("epoch") or uuid.uuid4().hex[:12]
        self.committed = int(checkpoint.get("committed", 0))
        inflight_ranges = [(int(a), int(b)) for a, b in checkpoint.get("inflight", [])]
        self._done = [(int(a), int(b)) for a, b in checkpoint.get("done", []) if int(b) > self.committed]
        self._highest_done = max([self.committed, *(b for _, b in self._done)])
        self._segments = sorted(
            int(name[: -len(_SUFFIX)]) for name in os.listdir(self.directory) if name.endswith(_SUFFIX)
        )
        recovery = Recovery()
        by_range: dict[tuple[int, int], list[Record]] = {r: [] for r in inflight_ranges}
        last_seq = self.committed
        for index, first in enumerate(self._segments):
            is_last = index == len(self._segments) - 1
            for record in self._scan(first, truncate_torn=is_last):
                last_seq = max(last_seq, record.seq)
                if record.seq <= self.committed or any(a <= record.seq <= b for a, b in self._done):
                    continue
                home = next((r for r in inflight_ranges if r[0] <= record.seq <= r[1]), None)
                if home is not None:
                    by_range[home].append(record)
                else:
                    recovery.pending.append(record)
        recovery.inflight = [batch for batch in by_range.values() if batch]
        # Not committed, whatever order they are inserted in now: the watermark must wait for each.
        self._outstanding.update(r.seq for batch in (*recovery.inflight, recovery.pending) for r in batch)
        self._next_seq = last_seq + 1
        self._appended = self._synced = last_seq
        self._open_segment(self._next_seq)
        self._write_checkpoint()
        if self.fsync:
            self._sync_thread = threading.Thread(target=self._sync_loop, name="meshtrace-wal-fsync", daemon=True)
            self._sync_thread.start()
        return recovery

    def _scan(self, first: int, *, truncate_torn: bool) -> Iterator[Record]:
        path = self._segment_path(first)
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            record, end = _decode(data, offset)
            if record is None:
                if truncate_torn:
                    log.warning("write-ahead log: cutting a torn record at %s:%d (a crash mid-append)", path, offset)
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                else:
                    log.error("write-ahead log: %s is corrupt at offset %d; skipping its remainder", path, offset)
                return
            yield record
            offset = end

    def _read_checkpoint(self) -> dict:
        path = os.path.join(self.directory, _CHECKPOINT)
        try:
            with open(path, "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"write-ahead log checkpoint {path} is unreadable: {exc}") from exc

    def _write_checkpoint(self) -> None:
        state = {
            "epoch": self.epoch,
            "committed": self.committed,
            "done": [[a, b] for a, b in self._done],
            "inflight": sorted([a, b] for a, b in self._inflight.items()),
        }
        path = os.path.join(self.directory, _CHECKPOINT)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(state))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(self.directory)

    # -- appending --------------------------------------------------------------------------------

    def _segment_path(self, first: int) -> str:
        return os.path.join(self.directory, f"{first:020d}{_SUFFIX}")

    def _open_segment(self, first: int) -> None:
        path = self._segment_path(first)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_size = os.fstat(self._fd).st_size
        if first not in self._segments:
            self._segments.append(first)
            if self.fsync:
                _fsync_dir(self.directory)
        self._segment_first = first

    def append(self, label: str, count: int, payload: bytes) -> int:
        """Write one record to the OS (not yet fsynced); return its sequence number."""
        label_b = label.encode()
        with self._lock:
            if self.broken:
                raise StoreError(f"write-ahead log is unusable: {self.broken}")
            seq = self._next_seq
            body_head = _BODY.pack(seq, count, len(label_b))
            crc = zlib.crc32(payload, zlib.crc32(label_b, zlib.crc32(body_head)))
            length = _BODY.size + len(label_b) + len(payload)
            if self._segment_size > 0 and self._segment_size + _HEAD.size + length > self.segment_bytes:
                self._rotate(seq)
            parts = [_HEAD.pack(_MAGIC, length, crc), body_head, label_b, payload]
            total = _HEAD.size + length
            try:
                written = os.writev(self._fd, parts)
                if written != total:
                    os.write(self._fd, b"".join(parts)[written:])
            except OSError as exc:
                # Leave no partial record behind: later records must stay readable.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._segment_size)
                raise StoreError(f"cannot append to the write-ahead log in {self.directory}: {exc}") from exc
            self._segment_size += total
            self._next_seq = seq + 1
            self._appended = seq
            if self.fsync:
                self._sync_cond.notify()
        if not self.fsync and self._on_synced is not None:
            self._on_synced(seq)
        return seq

    def _rotate(self, next_first: int) -> None:
        # The old segment is fsynced and closed by the fsync thread, off the caller's thread.
        if self.fsync:
            self._to_close.append(self._fd)
        else:
            os.close(self._fd)
        self._open_segment(next_first)

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while self._appended <= self._synced and not self._closing:
                    self._sync_cond.wait()
                if self._appended <= self._synced and self._closing:
                    return
                target, fd, old = self._appended, self._fd, self._to_close
                self._to_close = []
            try:
                for old_fd in old:
                    os.fsync(old_fd)
                    os.close(old_fd)
                os.fsync(fd)
            except OSError as exc:
                log.error("write-ahead log fsync failed: %s", exc)
                with self._lock:
                    self.broken = f"fsync failed: {exc}"
                return
            with self._lock:
                self._synced = target
            if self._on_synced is not None:
                self._on_synced(target)

    @property
    def synced_seq(self) -> int:
        """The highest sequence number known to be on disk."""
        return self._synced

    # -- checkpointing ----------------------------------------------------------------------------

    def begin(self, first: int, last: int) -> None:
        """Records ``first..last`` were taken for insertion; the watermark cannot pass them until committed.

        Call it before any later record can be taken (under the lock that hands records out), or a later
        batch committing first would move the watermark over these."""
        with self._lock:
            self._outstanding.update(range(first, last + 1))

    def mark_inflight(self, first: int, last: int) -> None:
        """Record an insert's boundaries before it runs, so a replay repeats it with the same token."""
        with self._lock:
            self._inflight[first] = last
            self._write_checkpoint()

    def mark_failed(self, first: int, last: int) -> None:
        """No attempt at ``first..last`` committed anything (each was refused): a replay need not keep
        these boundaries. Its records stay outstanding for the next attempt."""
        with self._lock:
            if self._inflight.get(first) == last:
                del self._inflight[first]

    def mark_committed(self, first: int, last: int) -> None:
        """``first..last`` are in the tables (or set aside): advance the watermark, drop old segments."""
        with self._lock:
            if self._inflight.get(first) == last:
                del self._inflight[first]
            self._outstanding.difference_update(range(first, last + 1))
            self._highest_done = max(self._highest_done, last)
            watermark = min(self._outstanding) - 1 if self._outstanding else self._highest_done
            self.committed = max(self.committed, watermark)
            self._done = _merge([*self._done, (first, last)], above=self.committed)
            self._write_checkpoint()
            while len(self._segments) > 1 and self._segments[1] - 1 <= self.committed:
                first_seq = self._segments.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._segment_path(first_seq))

    def set_aside(self, record: Record) -> str:
        """Keep a record the store refuses (its raw OTLP bytes) in ``<dir>/set-aside/``; return the path."""
        directory = os.path.join(self.directory, "set-aside")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{record.seq:020d}-{record.label}.otlp.pb")
        with open(path, "wb") as f:
            f.write(record.payload)
        return path

    def token(self, first: int, last: int) -> str:
        """The insert deduplication token of a batch."""
        return f"meshtrace-{self.epoch}-{first}-{last}"

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._sync_cond.notify_all()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=10)
        with self._lock:
            for fd in [*self._to_close, self._fd]:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        if self.fsync:
                            os.fsync(fd)
                        os.close(fd)
            self._to_close = []
            self._fd = -1


class DurableWaiter:
    """Lets coroutines await "record ``seq`` is on disk", fed by the log's fsync thread.

    Pass ``on_synced`` to ``WriteAheadLog.open``; call ``wait(seq)`` after ``append``.
    """

    def __init__(self, wal: WriteAheadLog) -> None:
        self.wal = wal
        self.loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()

    def on_synced(self, seq: int) -> None:
        """Called from the fsync thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._release, seq)

    def _release(self, seq: int) -> None:
        while self._heap and self._heap[0][0] <= seq:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)

    async def wait(self, seq: int) -> None:
        if not self.wal.fsync:
            return  # written to the OS: survives a crash of this process, which is what was asked
        self.loop = asyncio.get_running_loop()
        future = self.loop.create_future()
        heapq.heappush(self._heap, (seq, next(self._tiebreak), future))
        self._release(self.wal.synced_seq)
        await future


def _decode(data: bytes, offset: int) -> tuple[Record | None, int]:
    if offset + _HEAD.size > len(data):
        return None, offset
    magic, length, crc = _HEAD.unpack_from(data, offset)
    start = offset + _HEAD.size
    end = start + length
    if magic != _MAGIC or length < _BODY.size or end > len(data):
        return None, offset
    body = memoryview(data)[start:end]
    if zlib.crc32(body) != crc:
        return None, offset
    seq, count, label_len = _BODY.unpack_from(body, 0)
    label_end = _BODY.size + label_len
    label = bytes(body[_BODY.size : label_end]).decode()
    return Record(seq, label, count, bytes(body[label_end:])), end


def _merge(ranges: list[tuple[int, int]], *, above: int) -> list[tuple[int, int]]:
    """Sorted, adjacent ranges joined, those at or below the watermark ``above`` dropped."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if last <= above:
            continue
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
