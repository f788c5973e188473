"""The write path on a ClickHouse server that goes away under it: the server's HTTP interface on the
embedded engine, in a child process killed with SIGKILL and started again on the same port and data."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshtrace.listen import free_port
from meshtrace.store import Store, StoreOptions
from meshtrace.store.api import SpanBatch
from meshtrace.store.engine import ServerEngine, parse_server_url
from meshtrace.store.schema import Schema
from meshtrace.testing.clickhouse_http import ClickHouseHttpProcess

from .test_writer import batch

UNPARSABLE = SpanBatch("acme", b"\x0a\x05not-a-protobuf-message", 1)


def test_a_batch_unanswered_then_refused_as_unparsable_is_split(tmp_path: Path) -> None:
    """An insert that got no answer may have committed, so a later refusal of it does not allow a split
    (its rows would go in again under other tokens), except when the store cannot parse the very bytes:
    then no attempt wrote anything. The record it cannot parse is set aside, the others land once."""
    clickhouse = ClickHouseHttpProcess(tmp_path / "clickhouse", free_port()).start()
    url = clickhouse.url("writer")
    engine = ServerEngine(parse_server_url(url))
    options = StoreOptions(data_dir=str(tmp_path / "data"), url=url, flush_interval=0.5, flush_spans=10**6)
    store = Store.create(engine, Schema(database="writer", embedded=False), options)

    async def go() -> None:
        await store.start()
        clickhouse.kill()
        # Acknowledged (in the log) together, so the inserter takes them as one batch.
        await asyncio.gather(store.writer.write(batch(1)), store.writer.write(UNPARSABLE), store.writer.write(batch(2)))
        for _ in range(100):
            if store.writer.stats.failed_inserts:
                break
            await asyncio.sleep(0.1)
        assert "Connection refused" in store.writer.stats.last_error
        clickhouse.start()
        for _ in range(300):
            if store.writer.stats.set_aside_spans:
                break
            await asyncio.sleep(0.1)
        assert store.writer.stats.set_aside_spans == 1, store.writer.stats.last_error
        await store.writer.sync()
        assert store.reader.count("acme") == (18, 2, 18)
        kept = list((tmp_path / "data" / "wal" / "set-aside").iterdir())
        assert [path.read_bytes() for path in kept] == [UNPARSABLE.payload]
        await store.close()

    try:
        asyncio.run(go())
    finally:
        clickhouse.kill()
