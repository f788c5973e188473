"""Acknowledged means durable: kill -9 during ingest loses no acknowledged span; overload is refused, not queued."""

from __future__ import annotations

import random
import threading
import time

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from meshtrace.testing.bookinfo import export_request, traffic

from .conftest import TOKENS, stored, token_args, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METADATA = (("authentication", TOKENS["acme"]),)


def requests(count: int, traces_per_request: int, seed: int) -> list[tuple[bytes, int, list[str]]]:
    """(body, span count, trace ids) of distinct Bookinfo requests."""
    stream = traffic(seed, time.time_ns() - 60 * 10**9, count * traces_per_request, interval_ns=10**6)
    out = []
    for _ in range(count):
        traces = [next(stream) for _ in range(traces_per_request)]
        out.append(
            (export_request(traces).SerializeToString(), sum(len(t.spans) for t in traces), [t.hex_id for t in traces])
        )
    return out


def test_kill_9_during_ingest_loses_no_acknowledged_span(tmp_path, servers):
    server = servers(tmp_path / "data", *token_args(), "--flush-interval", "100ms")
    work = requests(600, 8, seed=5)
    acked: list[tuple[int, list[str]]] = []
    sent = 0
    lock = threading.Lock()
    next_index = iter(range(len(work)))

    def sender() -> None:
        nonlocal sent
        with grpc.insecure_channel(server.grpc) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                body, spans, trace_ids = work[index]
                with lock:
                    sent += spans
                try:
                    export(body, metadata=METADATA, timeout=10)
                except grpc.RpcError:
                    return  # the server is gone
                with lock:
                    acked.append((spans, trace_ids))

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= 150, timeout=60)
    server.kill()  # SIGKILL while requests are in flight and batches are pending
    for thread in threads:
        thread.join(30)
    acked_spans = sum(spans for spans, _ in acked)
    assert 150 <= len(acked) < len(work), "the kill must land mid-traffic"

    restarted = servers(tmp_path / "data", *token_args())
    spans_stored, _, _ = stored(restarted)
    assert acked_spans <= spans_stored <= sent  # all acknowledged spans, and nothing stored twice
    api = restarted.api()
    for _, trace_ids in acked[-40:]:  # the newest acknowledgements were the most at risk
        for trace_id in trace_ids:
            trace = api.get(f"/api/traces/{trace_id}")
            assert trace.status_code == 200, trace_id
    assert "replayed" in restarted.log()
    assert restarted.stop() == 0


def test_overload_is_refused_with_retry_after_and_nothing_acknowledged_is_lost(tmp_path, servers):
    server = servers(
        tmp_path / "data", *token_args(), "--max-pending", "200kB", "--flush-interval", "1h", "--flush-spans", "1000000"
    )
    work = requests(20, 4, seed=9)
    acked_spans = 0
    refused = None
    with httpx.Client(timeout=30) as client:
        for body, spans, _ in work:
            response = client.post(
                f"{server.otlp_http}/v1/traces",
                content=body,
                headers={"Content-Type": "application/x-protobuf", "Authentication": TOKENS["acme"]},
            )
            if response.status_code == 503:
                refused = response
                break
            assert response.status_code == 200
            acked_spans += spans
    assert refused is not None, "a 200 kB backlog must refuse more"
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert "behind" in status_pb2.Status.FromString(refused.content).message

    with grpc.insecure_channel(server.grpc) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            export(work[-1][0], metadata=METADATA, timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    details = dict(caught.value.trailing_metadata())["grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert info.retry_delay.seconds >= 1
    ready = server.api(None).get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["ingest queue full: refusing writes until the store catches up"]

    assert server.stop() == 0  # a clean stop inserts everything acknowledged
    restarted = servers(tmp_path / "data", *token_args())
    assert stored(restarted)[0] == acked_spans
    assert "replayed" not in restarted.log()
    assert restarted.stop() == 0


def test_random_traffic_round_trips_exactly(tmp_path, servers):
    """Many small concurrent requests from several tenants: every span ends up stored once, under its tenant."""
    server = servers(tmp_path / "data", *token_args(), "--flush-interval", "20ms")
    rng = random.Random(3)
    expected = {"acme": 0, "beta": 0}
    with httpx.Client(timeout=30) as client:
        for i, (body, spans, _) in enumerate(requests(60, 2, seed=13)):
            tenant = rng.choice(list(expected))
            response = client.post(
                f"{server.otlp_http}/v1/traces",
                content=body,
                headers={"Content-Type": "application/x-protobuf", "Authentication": TOKENS[tenant]},
            )
            assert response.status_code == 200, i
            expected[tenant] += spans
    for tenant, spans in expected.items():
        wait_until(lambda tenant=tenant, spans=spans: stored(server, TOKENS[tenant])[0] == spans)
    assert server.stop() == 0
