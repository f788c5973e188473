"""A backend on a ClickHouse server (``--store clickhouse://...``) when the server is not there: at start,
and while running. The server is ClickHouse's HTTP interface on the embedded engine, in a child process
killed with SIGKILL; each test counts the spans acknowledged against the spans stored."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from google.rpc import status_pb2

from meshtrace.testing.clickhouse_http import ClickHouseHttpProcess

from .conftest import TOKENS, ServerProcess, stored, token_args, wait_until
from .test_durability import requests

HEADERS = {"Content-Type": "application/x-protobuf", "Authentication": TOKENS["acme"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_waits_for_clickhouse_alive_not_ready_and_refusing_retryably(tmp_path: Path) -> None:
    clickhouse = ClickHouseHttpProcess(tmp_path / "clickhouse", free_port())
    http, otlp = free_port(), free_port()
    server = ServerProcess(
        tmp_path / "backend", *token_args(), "--store", clickhouse.url("waited"), "--store-wait", "2m",
        "--http", f"127.0.0.1:{http}", "--otlp-http", f"127.0.0.1:{otlp}", "--flush-interval", "50ms",
    )  # fmt: skip
    server.launch()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=10) as api:

            def waiting() -> list[str] | None:
                try:
                    problems = api.get("/readyz").json()["problems"]
                except httpx.TransportError:
                    return None  # not listening yet
                assert problems, "not ready while the store is not open"
                return problems if problems != ["opening the store"] else None  # the first attempt runs

            problems = wait_until(waiting, timeout=30)
            assert problems[0].startswith("waiting for the store: cannot reach ClickHouse server at 127.0.0.1:")
            assert problems[0].endswith("Connection refused"), problems
            assert api.get("/healthz").status_code == 200  # alive: a liveness probe does not restart it
            search = api.get("/api/services", headers={"Authentication": TOKENS["acme"]})
            assert search.status_code == 503
            assert "starting" in search.json()["errors"][0]["msg"]
            (body, spans, _), *_ = requests(1, 4, seed=41)
            refused = httpx.post(f"http://127.0.0.1:{otlp}/v1/traces", content=body, headers=HEADERS, timeout=10)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "5"
            assert status_pb2.Status.FromString(refused.content).code == 14  # UNAVAILABLE: the Collector retries

            clickhouse.start()  # the server comes up: the backend opens the store by itself
            server.wait_ready(60)
            assert api.get("/readyz").status_code == 200
            response = httpx.post(f"{server.otlp_http}/v1/traces", content=body, headers=HEADERS, timeout=10)
            assert response.status_code == 200, response.text
            wait_until(lambda: stored(server)[0] == spans)
        log = server.log()
        assert "cannot open the store (attempt 1" in log
        assert "Connection refused" in log
        assert "Retrying" not in log  # the HTTP client's own retry chatter stays out of the log
        assert server.stop() == 0
    finally:
        server.kill()
        clickhouse.kill()


def test_serve_gives_up_after_store_wait_with_exit_code_1(tmp_path: Path) -> None:
    url = f"clickhouse://127.0.0.1:{free_port()}/nowhere"
    server = ServerProcess(tmp_path, "--no-auth", "--store", url, "--store-wait", "2s").launch()
    assert server.proc is not None
    began = time.monotonic()
    assert server.proc.wait(30) == 1
    assert time.monotonic() - began < 20
    log = " ".join(server.log().split())
    assert "cannot reach ClickHouse server at 127.0.0.1:" in log
    assert "Connection refused" in log
    assert "gave up after" in log
    assert "--store-wait" in log


def test_clickhouse_unreachable_while_running_loses_nothing_acknowledged(tmp_path: Path, servers) -> None:
    """SIGKILL the ClickHouse server under traffic: exports are still acknowledged (the write-ahead log
    holds them), /readyz and queries say why, and everything reaches ClickHouse once it is back; the same
    again with the backend killed too while ClickHouse is down, so the log is replayed at its restart."""
    clickhouse = ClickHouseHttpProcess(tmp_path / "clickhouse").start()
    args = (*token_args(), "--store", clickhouse.url("faults"), "--flush-interval", "50ms")
    try:
        server = servers(tmp_path / "backend", *args)
        work = requests(240, 6, seed=43)
        acked = 0
        with httpx.Client(timeout=30) as client:

            def send(batch: list[tuple[bytes, int, list[str]]]) -> None:
                nonlocal acked
                for body, spans, _ in batch:
                    response = client.post(f"{server.otlp_http}/v1/traces", content=body, headers=HEADERS)
                    assert response.status_code == 200, response.text  # the log takes them
                    acked += spans

            send(work[:40])
            wait_until(lambda: stored(server)[0] == acked)
            clickhouse.kill()
            send(work[40:120])  # acknowledged while nothing can be inserted
            problems = wait_until(lambda: server.api(None).get("/readyz").json()["problems"] or None)
            assert problems[0].startswith("store writes failing:")
            assert "Connection refused" in problems[0]
            down = server.api().get("/meshtrace/v1/stats")
            assert down.status_code == 503
            assert "Connection refused" in down.json()["error"]["message"]

            clickhouse.start()  # back on the same port with the same data: the backlog goes in by itself
            spans, _, distinct = wait_until(lambda: (s := stored(server))[0] >= acked and s, timeout=60)
            assert spans == distinct == acked  # each once: no insert without an answer was split and repeated
            wait_until(lambda: server.api(None).get("/readyz").status_code == 200, timeout=30)

            clickhouse.kill()
            send(work[120:])
            server.kill()  # the acknowledged backlog now lives only in the write-ahead log
        clickhouse.start()
        restarted = servers(tmp_path / "backend", *args)
        assert "replayed" in restarted.log()
        spans, _, distinct = wait_until(lambda: (s := stored(restarted))[0] >= acked and s, timeout=60)
        assert spans == distinct == acked == sum(s for _, s, _ in work)
        assert restarted.stop() == 0
    finally:
        clickhouse.kill()
