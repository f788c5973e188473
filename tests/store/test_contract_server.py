"""The storage contract on a ClickHouse server, through the server-mode engine (clickhouse-connect over HTTP).

With ``MESHTRACE_TEST_CLICKHOUSE_URL`` set (e.g. ``clickhouse://default:@127.0.0.1:8123/meshtrace_test``)
it runs against that server; otherwise against ClickHouse's HTTP interface served by the embedded engine
in a child process (``meshtrace.testing.clickhouse_http``), so the server-mode code runs in every build.
Either way a database of its own is created and dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from meshtrace.errors import StoreError, StoreUnavailable
from meshtrace.store import Store, StoreOptions
from meshtrace.store.engine import ServerAddress, ServerEngine, parse_server_url
from meshtrace.store.schema import Schema
from meshtrace.testing.clickhouse_http import ClickHouseHttpProcess
from meshtrace.testing.contract import StoreContract

URL = os.environ.get("MESHTRACE_TEST_CLICKHOUSE_URL")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if URL:
        yield URL
        return
    server = ClickHouseHttpProcess(tmp_path_factory.mktemp("clickhouse-http"), password="s3cret").start()
    try:
        yield server.url("meshtrace_test")
    finally:
        server.kill()


class TestServerStore(StoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
        address = parse_server_url(server_url)
        engine = ServerEngine(address)
        schema = Schema(database=f"{address.database}_{uuid.uuid4().hex[:8]}", embedded=False)
        options = StoreOptions(
            data_dir=str(tmp_path_factory.mktemp("server-store")), url=server_url, flush_interval=0.05
        )
        store = Store.create(engine, schema, options)
        asyncio.run(store.start())
        yield store
        asyncio.run(store.writer.close())
        engine.execute(f"DROP DATABASE IF EXISTS `{schema.database}`")
        engine.close()


def test_a_wrong_password_is_a_clear_store_error(server_url: str) -> None:
    wrong = dataclasses.replace(parse_server_url(server_url), password="wrong")
    with pytest.raises(StoreError, match=r"cannot reach ClickHouse server.*(516|Authentication failed)"):
        ServerEngine(wrong)


def test_an_unreachable_server_says_connection_refused() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreUnavailable) as caught:
        ServerEngine(ServerAddress("127.0.0.1", port, "db", "default", "", False))
    assert str(caught.value) == f"cannot reach ClickHouse server at 127.0.0.1:{port}/db: Connection refused"


def test_a_refusal_is_told_apart_from_no_answer(server_url: str) -> None:
    """The writer splits only inserts the server refused; one without an answer may have committed."""
    engine = ServerEngine(parse_server_url(server_url))
    try:
        with pytest.raises(StoreError, match="UNKNOWN_FUNCTION") as caught:
            engine.query("SELECT no_such_function()")
        assert not isinstance(caught.value, StoreUnavailable)
    finally:
        engine.close()
