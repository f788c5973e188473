"""A backend on a ClickHouse server (``--store clickhouse://...``) when the server is not there: at start,
and while running. The server is ClickHouse's HTTP interface on the embedded engine, in a child process
killed with SIGKILL; each test counts the spans acknowledged against the spans stored."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
from google.rpc import status_pb2

from meshtrace.listen import free_port
from meshtrace.testing.bookinfo import bookinfo_trace
from meshtrace.testing.clickhouse_http import ClickHouseHttpProcess

from .conftest import TOKENS, ServerProcess, jaeger_trace, post_traces, stored, token_args, wait_until
from .test_durability import requests

HEADERS = {"Content-Type": "application/x-protobuf", "Authentication": TOKENS["acme"]}


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


def test_a_stop_while_waiting_for_clickhouse_is_a_clean_stop(tmp_path: Path) -> None:
    url = f"clickhouse://127.0.0.1:{free_port()}/nowhere"
    server = ServerProcess(tmp_path, "--no-auth", "--store", url, "--store-wait", "10m").launch()
    wait_until(lambda: "cannot open the store (attempt 2" in server.log(), timeout=30)
    assert server.stop(timeout=15) == 0  # SIGTERM: no need to wait the 10 minutes out
    assert "stopped while waiting for the store" in server.log()


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


def test_replicas_on_one_clickhouse_share_ingest_queries_and_one_graph_builder(tmp_path: Path, servers) -> None:
    """Backends are stateless: two `meshtrace serve` processes on one ClickHouse server each take exports
    and answer for everything; one builds the service graph, each call counted once, and when it stops
    (a rolling restart) the other takes over and goes on counting."""
    clickhouse = ClickHouseHttpProcess(tmp_path / "clickhouse").start()
    args = (*token_args(), "--store", clickhouse.url("replicas"), "--flush-interval", "50ms", "--graph-wait", "1s")
    try:
        first = servers(tmp_path / "first", *args)
        second = servers(tmp_path / "second", *args)
        leaders = wait_until(lambda: [s for s in (first, second) if _leading(s)] or None)
        assert len(leaders) == 1
        rng = random.Random(44)
        sent: list[str] = []
        total = 0
        for round_ in range(4):  # alternate replicas, v3 only so every trace has reviews → ratings
            traces = [bookinfo_trace(rng, time.time_ns(), reviews_version="v3") for _ in range(10)]
            post_traces((first, second)[round_ % 2], traces)
            sent += [t.hex_id for t in traces]
            total += sum(len(t.spans) for t in traces)
        for replica in (first, second):
            wait_until(lambda r=replica: stored(r)[0] == total)
            assert jaeger_trace(replica, sent[0])["traceID"] == sent[0]  # sent to the first replica
            assert jaeger_trace(replica, sent[-1])["traceID"] == sent[-1]  # sent to the second
        wait_until(lambda: _calls(second, "reviews.default", "ratings.default") == 40, timeout=30)
        assert _calls(first, "productpage.default", "reviews.default") == 40  # built once, seen by both

        leader = leaders[0]
        other = second if leader is first else first
        assert leader.stop() == 0
        wait_until(lambda: _leading(other), timeout=10)  # its heartbeats are gone: no 15 s lease to wait out
        traces = [bookinfo_trace(rng, time.time_ns(), reviews_version="v3") for _ in range(10)]
        post_traces(other, traces)
        wait_until(lambda: _calls(other, "reviews.default", "ratings.default") == 50, timeout=30)
        assert other.stop() == 0
    finally:
        clickhouse.kill()


def _leading(server: ServerProcess) -> bool:
    return bool(server.api().get("/meshtrace/v1/status").raise_for_status().json()["serviceGraph"]["leading"])


def _calls(server: ServerProcess, parent: str, child: str) -> int:
    links = server.api().get("/meshtrace/v1/dependencies", params={"lookback": "1h"}).raise_for_status().json()
    return sum(link["callCount"] for link in links["links"] if (link["parent"], link["child"]) == (parent, child))
