"""The write path's promises: durable acknowledgements, exactly-once replay, bounded memory."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from meshtrace.errors import Overloaded
from meshtrace.store import Store, StoreOptions
from meshtrace.store.api import SpanBatch
from meshtrace.store.wal import Record, WriteAheadLog
from meshtrace.store.writer import encode_rows
from meshtrace.testing.bookinfo import bookinfo_trace, export_request
from tests.conftest import new_store


def batch(seed: int, tenant: str = "acme") -> SpanBatch:
    trace = bookinfo_trace(random.Random(seed), time.time_ns() - 10**9, reviews_version="v2")
    return SpanBatch(tenant, export_request([trace]).SerializeToString(), len(trace.spans))


def test_acknowledged_writes_become_visible(chdb_engine, tmp_path):
    store = new_store(chdb_engine, tmp_path, flush_interval=0.05)

    async def go():
        await store.start()
        await asyncio.gather(*(store.writer.write(batch(i)) for i in range(20)))
        await store.writer.sync()
        assert store.reader.count("acme") == (20 * 9, 20, 20 * 9)
        await store.close()

    asyncio.run(go())


def test_close_inserts_everything_acknowledged(chdb_engine, tmp_path):
    store = new_store(chdb_engine, tmp_path, flush_interval=60)

    async def go():
        await store.start()
        for i in range(3):
            await store.writer.write(batch(i))
        assert store.reader.count("acme") == (0, 0, 0)
        await store.close()
        assert store.reader.count("acme") == (27, 3, 27)

    asyncio.run(go())


def logged(engine, tmp_path, count: int) -> tuple[Store, WriteAheadLog, list[Record]]:
    """A store whose log holds ``count`` acknowledged batches of 9 spans, none inserted by the writer."""
    store = new_store(engine, tmp_path)
    wal = store.writer.wal
    assert wal is not None
    wal.open()
    records = [
        Record(wal.append("acme", b.span_count, b.payload), "acme", b.span_count, b.payload)
        for b in (batch(i) for i in range(count))
    ]
    return store, wal, records


def test_replay_after_crash_applies_each_batch_exactly_once(chdb_engine, tmp_path):
    """The process dies after inserting records 1..3 but before checkpointing them. On restart the
    replay inserts 1..3 again with the same token (ClickHouse drops it) and then 4..5."""
    store, wal, records = logged(chdb_engine, tmp_path, 5)
    wal.begin(1, 3)
    wal.mark_inflight(1, 3)
    chdb_engine.insert(store.schema.otlp_in, encode_rows(records[:3]), "Protobuf", store.writer.settings_for(1, 3))
    wal.close()  # ...and here the process dies
    assert store.reader.count("acme") == (27, 3, 27)

    restarted = Store.create(chdb_engine, store.schema, StoreOptions(data_dir=str(tmp_path)), owns_engine=False)

    async def restart():
        recovery = await restarted.start()
        assert [[r.seq for r in b] for b in recovery.inflight] == [[1, 2, 3]]
        assert [r.seq for r in recovery.pending] == [4, 5]
        assert restarted.reader.count("acme") == (45, 5, 45)  # not 72: the in-flight range was deduplicated
        await restarted.close()

    asyncio.run(restart())


def test_replay_skips_a_batch_committed_out_of_order(chdb_engine, tmp_path):
    """Two inserters: 3..4 commits while the insert of 1..2 has no answer yet (it did commit), then the
    process dies. The replay repeats 1..2 with its token and inserts only 5 besides: 3..4 went in once."""
    store, wal, records = logged(chdb_engine, tmp_path, 5)
    for first, last in ((1, 2), (3, 4)):
        wal.begin(first, last)
        wal.mark_inflight(first, last)
        rows = encode_rows(records[first - 1 : last])
        chdb_engine.insert(store.schema.otlp_in, rows, "Protobuf", store.writer.settings_for(first, last))
    wal.mark_committed(3, 4)
    wal.close()  # ...and here the process dies, before the answer about 1..2
    restarted = Store.create(chdb_engine, store.schema, StoreOptions(data_dir=str(tmp_path)), owns_engine=False)

    async def restart():
        recovery = await restarted.start()
        assert [[r.seq for r in b] for b in recovery.inflight] == [[1, 2]]
        assert [r.seq for r in recovery.pending] == [5]
        assert restarted.reader.count("acme") == (45, 5, 45)
        await restarted.close()

    asyncio.run(restart())


def test_memory_is_bounded_when_the_store_falls_behind(chdb_engine, tmp_path):
    one = batch(1)
    store = new_store(
        chdb_engine, tmp_path, flush_interval=60, flush_spans=10**6, max_pending_bytes=3 * len(one.payload) + 10
    )

    async def go():
        await store.start()
        for _ in range(3):
            await store.writer.write(one)
        with pytest.raises(Overloaded) as refused:
            await store.writer.write(one)
        assert refused.value.retry_after >= 1
        assert store.writer.pending_bytes == 3 * len(one.payload)
        await store.close()  # the three acknowledged ones still land
        assert store.reader.count("acme")[0] == 27

    asyncio.run(go())


def test_a_record_the_engine_refuses_is_set_aside_and_the_rest_lands(chdb_engine, tmp_path):
    store = new_store(chdb_engine, tmp_path, flush_interval=0.05)

    async def go():
        await store.start()
        await asyncio.gather(
            store.writer.write(batch(1)),
            store.writer.write(SpanBatch("acme", b"\x0a\x05not-a-protobuf-message", 1)),
            store.writer.write(batch(2)),
        )
        for _ in range(200):
            if store.writer.stats.set_aside_spans:
                break
            await asyncio.sleep(0.1)
        await store.writer.sync()
        assert store.reader.count("acme") == (18, 2, 18)
        assert store.writer.stats.set_aside_spans == 1
        kept = list((tmp_path / "wal" / "set-aside").iterdir())
        assert len(kept) == 1
        assert kept[0].read_bytes() == b"\x0a\x05not-a-protobuf-message"
        await store.close()

    asyncio.run(go())


def test_without_a_log_writes_wait_for_the_insert(chdb_engine, tmp_path):
    store = new_store(chdb_engine, tmp_path, wal=False, flush_interval=0.01)

    async def go():
        await store.start()
        await store.writer.write(batch(3))
        assert store.reader.count("acme") == (9, 1, 9)  # visible the moment write returns
        await store.close()

    asyncio.run(go())
