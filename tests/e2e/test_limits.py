"""Request and query limits, each with an error that says which limit and what to do."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.errors import QueryTimeout
from meshtrace.store.engine import CACHE_SHARES, ChdbEngine, TimeLimited
from meshtrace.testing.bookinfo import bookinfo_trace, export_request
from meshtrace.testing.console import large_trace

from .conftest import TOKENS, ServerProcess, stored, token_args, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
HEADERS = {"Content-Type": "application/x-protobuf", "Authentication": TOKENS["acme"]}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("limits"),
        *token_args(),
        "--flush-interval", "50ms", "--max-request-spans", "50", "--max-trace-spans", "30",
        "--store-cache", "64MiB",
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0


def test_a_request_with_too_many_spans_is_refused_whole(limited: ServerProcess) -> None:
    rng = random.Random(3)
    big = export_request([bookinfo_trace(rng, time.time_ns()) for _ in range(8)])
    spans = sum(len(ss.spans) for rs in big.resource_spans for ss in rs.scope_spans)
    assert spans > 50
    response = httpx.post(f"{limited.otlp_http}/v1/traces", content=big.SerializeToString(), headers=HEADERS)
    assert response.status_code == 413  # not retryable: the same request would be refused again
    message = status_pb2.Status.FromString(response.content).message
    assert f"the request has {spans} spans; at most 50" in message
    assert "--max-request-spans" in message
    assert "send_batch_max_size" in message
    with grpc.insecure_channel(limited.grpc) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            export(big.SerializeToString(), metadata=(("authentication", TOKENS["acme"]),), timeout=10)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-request-spans" in caught.value.details()
    assert stored(limited)[0] == 0  # nothing of it was kept
    small = export_request([bookinfo_trace(rng, time.time_ns())])
    ok = httpx.post(f"{limited.otlp_http}/v1/traces", content=small.SerializeToString(), headers=HEADERS)
    assert ok.status_code == 200
    wait_until(lambda: stored(limited)[0] == sum(len(ss.spans) for rs in small.resource_spans for ss in rs.scope_spans))


def test_a_trace_over_the_limit_is_returned_cut_with_a_warning(limited: ServerProcess) -> None:
    trace_id, whole = large_trace(100, seed=5)
    spans = list(whole.resource_spans[0].scope_spans[0].spans)
    before = stored(limited)[0]
    for part in (spans[:40], spans[40:80], spans[80:]):  # each request under the request limit
        request = ExportTraceServiceRequest()
        request.resource_spans.add().CopyFrom(whole.resource_spans[0])
        del request.resource_spans[0].scope_spans[0].spans[:]
        request.resource_spans[0].scope_spans[0].spans.extend(part)
        response = httpx.post(f"{limited.otlp_http}/v1/traces", content=request.SerializeToString(), headers=HEADERS)
        assert response.status_code == 200
    wait_until(lambda: stored(limited)[0] == before + 100)
    api = limited.api()
    jaeger = api.get(f"/api/traces/{trace_id}").json()["data"][0]
    assert len(jaeger["spans"]) == 30
    assert jaeger["warnings"] == [
        "this trace has more than 30 spans: only its first 30 are shown (the backend's --max-trace-spans)"
    ]
    first = sorted(spans, key=lambda s: s.start_time_unix_nano)[:30]
    got = {s["spanID"] for s in jaeger["spans"]}
    want = {s.span_id.hex() for s in first}
    assert got == want  # the earliest ones
    native = api.get(f"/meshtrace/v1/traces/{trace_id}").json()
    assert native["spanCount"] == 30
    assert "--max-trace-spans" in native["warnings"][0]


def test_a_query_past_the_timeout_is_stopped(chdb_engine: ChdbEngine, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"ran longer than 1s .*--query-timeout.*narrow the time range"):
        TimeLimited(chdb_engine, 1).query("SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 0")
    assert time.monotonic() - started < 10


def test_the_engines_memory_is_on_metrics_and_its_caches_are_bounded(limited: ServerProcess) -> None:
    """ClickHouse sizes its caches for a server of its own (5 GiB for marks alone); embedded, meshtrace
    bounds them with --store-cache and shows what they hold."""
    rng = random.Random(11)
    request = export_request([bookinfo_trace(rng, time.time_ns()) for _ in range(3)])
    assert httpx.post(f"{limited.otlp_http}/v1/traces", content=request.SerializeToString(), headers=HEADERS).is_success
    api = limited.api()
    wait_until(lambda: api.get("/api/traces", params={"service": "productpage.default"}).json()["data"])

    def memory() -> dict[str, float]:
        lines = api.get("/metrics").text.splitlines()
        prefix = 'meshtrace_store_memory_bytes{kind="'
        return {
            line[len(prefix) :].partition('"')[0]: float(line.rpartition(" ")[2])
            for line in lines
            if line.startswith(prefix)
        }

    kinds = {"tracked", "mark_cache", "primary_index_cache", "index_mark_cache", "query_condition_cache"}
    assert kinds <= set(memory())
    text = api.get("/metrics").text
    assert 'meshtrace_heap_bytes{kind="in_use"}' in text
    assert 'meshtrace_heap_bytes{kind="free"}' in text
    assert "meshtrace_heap_returned_bytes_total" in text
    wait_until(lambda: memory()["mark_cache"] > 0 and memory()["tracked"] > 0, timeout=15)  # read, not zeros
    config = (limited.data_dir / "clickhouse" / "meshtrace-engine.xml").read_text()
    assert f"<mark_cache_size>{32 << 20}</mark_cache_size>" in config


def test_the_cache_bound_reaches_the_engine(tmp_path: Path) -> None:
    """chdb reads its configuration once per process: checked in a process of its own."""
    script = (
        "import sys; from meshtrace.store.engine import ChdbEngine\n"
        "engine = ChdbEngine(sys.argv[1], cache_bytes=64 << 20)\n"
        'print(dict(engine.query("SELECT name, value FROM system.server_settings WHERE name IN '
        "('mark_cache_size', 'primary_index_cache_size', 'index_mark_cache_size')\")))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    got = {name: int(value) for name, value in ast.literal_eval(out.stdout.strip()).items()}
    assert got == {name: int((64 << 20) * CACHE_SHARES[name]) for name in got}
    assert got["mark_cache_size"] == 32 << 20  # not ClickHouse's 5 GiB
