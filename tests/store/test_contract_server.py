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
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshtrace.errors import ConfigError, StoreError, StoreUnavailable
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


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseHttpProcess, Path]]:
    """The HTTP interface over TLS, with a self-signed certificate for 127.0.0.1 (a private CA's, in effect)."""
    work = tmp_path_factory.mktemp("clickhouse-https")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ClickHouseHttpProcess(work, tls=(cert, key)).start()
    try:
        yield server, cert
    finally:
        server.kill()


def test_tls_with_a_private_ca(tls_server: tuple[ClickHouseHttpProcess, Path]) -> None:
    server, cert = tls_server
    url = server.url("tls")
    assert url.startswith("clickhouses://")
    trusted = ServerEngine(parse_server_url(f"{url}?ca_cert={cert}"))
    try:
        assert trusted.query("SELECT 1 + {n:UInt8}", {"n": 1}) == [[2]]
    finally:
        trusted.close()
    with pytest.raises(StoreUnavailable) as caught:
        ServerEngine(parse_server_url(url))  # the system's CAs do not know it
    assert str(caught.value).endswith("TLS: certificate verify failed: self-signed certificate"), caught.value
    unchecked = ServerEngine(parse_server_url(f"{url}?verify=false"))
    unchecked.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("clickhouse://h/db?clustr=x", "unknown store URL parameter clustr"),
        ("clickhouses://h/db?ca_cert=/no/such.pem", "is not a file"),
    ],
)
def test_store_url_mistakes_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_server_url(url)
    assert caught.value.path == "store"
