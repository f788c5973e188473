"""The storage contract on a ClickHouse server; runs when MESHTRACE_TEST_CLICKHOUSE_URL is set,
e.g. ``clickhouse://default:@127.0.0.1:8123/meshtrace_test`` (the database is created and dropped)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from meshtrace.store import Store, StoreOptions
from meshtrace.store.engine import ServerEngine, parse_server_url
from meshtrace.store.schema import Schema
from meshtrace.testing.contract import StoreContract

URL = os.environ.get("MESHTRACE_TEST_CLICKHOUSE_URL")


@pytest.mark.skipif(not URL, reason="set MESHTRACE_TEST_CLICKHOUSE_URL to run the contract on a ClickHouse server")
class TestServerStore(StoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
        assert URL is not None
        address = parse_server_url(URL)
        engine = ServerEngine(address)
        schema = Schema(database=f"{address.database}_{uuid.uuid4().hex[:8]}", embedded=False)
        options = StoreOptions(data_dir=str(tmp_path_factory.mktemp("server-store")), url=URL, flush_interval=0.05)
        store = Store.create(engine, schema, options)
        asyncio.run(store.start())
        yield store
        asyncio.run(store.writer.close())
        engine.execute(f"DROP DATABASE IF EXISTS `{schema.database}`")
        engine.close()
