"""``meshtrace collector`` between real senders and a real backend: the seed's config, Rotel, outages."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from meshtrace.listen import free_port
from meshtrace.testing.bookinfo import export_request, traffic
from meshtrace.testing.server import CollectorProcess, ServerStartError

from ..collector.conftest import seed_collector_config
from .conftest import TOKENS, ServerProcess, stored, token_args, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ON_LOOPBACK = [
    "--set", "receivers::otlp::protocols::grpc::endpoint=127.0.0.1:0",
    "--set", "receivers::otlp::protocols::http::endpoint=127.0.0.1:0",
    "--set", "service::telemetry::metrics::address=127.0.0.1:0",
]  # fmt: skip


@pytest.fixture
def collectors() -> Iterator[Callable[..., CollectorProcess]]:
    started: list[CollectorProcess] = []

    def start(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> CollectorProcess:
        proc = CollectorProcess(data_dir, *args, env=env)
        started.append(proc)
        try:
            return proc.start()  # type: ignore[return-value]
        except ServerStartError as exc:
            pytest.fail(str(exc))

    yield start
    for proc in started:
        proc.kill()


def send_sdk(exporter: object, service: str, count: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    tracer = provider.get_tracer("e2e")
    for i in range(count):
        with tracer.start_as_current_span(f"request-{i}"), tracer.start_as_current_span("db"):
            pass
    assert provider.force_flush(10_000)
    provider.shutdown()


def test_the_seed_config_forwards_sdk_spans_to_the_backend(tmp_path, servers, collectors):
    backend = servers(tmp_path / "backend", *token_args(), "--flush-interval", "50ms")
    config = tmp_path / "otel-collector.yaml"
    config.write_text(seed_collector_config(backend.grpc, TOKENS["acme"]))
    collector = collectors(
        tmp_path / "collector",
        "--config",
        str(config),
        *ON_LOOPBACK,
        "--set",
        "extensions::health_check::endpoint=127.0.0.1:0",
    )
    send_sdk(GrpcExporter(endpoint=collector.receiver("otlp", "grpc"), insecure=True), "seed-grpc", 20)
    send_sdk(HttpExporter(endpoint=f"http://{collector.receiver('otlp', 'http')}/v1/traces"), "seed-http", 20)
    wait_until(lambda: stored(backend) == (80, 40, 80))  # the backend checked the collector's token
    # The operations table is filled by a view of the same insert, committed just after the spans.
    wait_until(lambda: {"seed-grpc", "seed-http"} <= set(backend.api().get("/api/services").json()["data"]))
    assert httpx.get(f"http://{collector.addresses['health_check']}/").json()["status"] == "Server available"
    metrics = httpx.get(f"http://{collector.addresses['telemetry']}/metrics").text
    assert 'otelcol_receiver_accepted_spans_total{receiver="otlp",transport="grpc"} 40.0' in metrics
    assert 'otelcol_exporter_sent_spans_total{exporter="otlp"} 80.0' in metrics
    log = collector.log()
    assert "Span #0" in log  # the deprecated logging exporter, run as debug with verbosity detailed
    assert "Trace ID       :" in log
    assert "removed upstream in v0.111.0" in log
    assert collector.stop() == 0


def rotel(tmp_path: Path, grpc_port: int, http_port: int, target: str, *extra: str) -> subprocess.Popen[bytes]:
    binary = str(resources.files("rotel") / "rotel-agent")
    with open(tmp_path / f"rotel-{grpc_port}.log", "wb") as log:
        return subprocess.Popen(
            [binary, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--otlp-http-endpoint",
             f"127.0.0.1:{http_port}", "--exporter", "otlp", "--otlp-exporter-endpoint", target,
             "--otlp-exporter-protocol", "grpc", "--batch-timeout", "100ms", *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_port(port: int) -> None:
    def is_open() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(is_open, timeout=30)


def test_rotel_in_both_directions(tmp_path, servers, collectors):
    """SDK → meshtrace collector → Rotel → meshtrace backend: our exporter into Rotel's receiver, and
    Rotel's OTLP exporter with the Authentication header into our backend. Every span arrives."""
    backend = servers(tmp_path / "backend", *token_args(), "--flush-interval", "50ms")
    grpc_port, http_port = free_port(), free_port()
    proc = rotel(
        tmp_path,
        grpc_port,
        http_port,
        f"http://{backend.grpc}",
        "--otlp-exporter-custom-headers",
        f"Authentication={TOKENS['acme']}",
    )
    try:
        wait_port(grpc_port)
        config = tmp_path / "to-rotel.yaml"
        config.write_text(
            "receivers: {otlp: {protocols: {grpc: {endpoint: 127.0.0.1:0}}}}\n"
            "processors: {batch: {timeout: 50ms}}\n"
            f"exporters: {{otlp: {{endpoint: '127.0.0.1:{grpc_port}', tls: {{insecure: true}}}}}}\n"
            "service: {telemetry: {metrics: {level: none}}, "
            "pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}}}\n"
        )
        collector = collectors(tmp_path / "collector", "--config", str(config))
        with grpc.insecure_channel(collector.receiver()) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            stream = traffic(3, time.time_ns() - 10**9, 200)
            sent = 0
            for _ in range(20):
                batch = [next(stream) for _ in range(10)]
                export(export_request(batch).SerializeToString(), timeout=10)
                sent += sum(len(t.spans) for t in batch)
        wait_until(lambda: stored(backend)[2] == sent, timeout=30)
        # and Rotel straight into the backend, from an OpenTelemetry SDK
        send_sdk(GrpcExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True), "via-rotel", 25)
        wait_until(lambda: stored(backend)[2] == sent + 50, timeout=30)
        assert collector.stop() == 0
    finally:
        proc.terminate()
        proc.wait(30)


class Senders:
    """Threads exporting Bookinfo traces over OTLP/gRPC to ``address["grpc"]`` (a test restarting the
    collector points it at the new one) until ``stop``: the spans acknowledged, the exports refused."""

    def __init__(self, address: dict[str, str], *, seed: int, threads: int = 1, pause: float = 0.0) -> None:
        self.address, self.pause = address, pause
        self.acked: set[tuple[str, str]] = set()
        self.refused = 0
        self._stream = traffic(seed, time.time_ns() - 10**9, 10**6, interval_ns=10**6)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                traces = [next(self._stream) for _ in range(5)]
            body = export_request(traces).SerializeToString()
            try:
                with grpc.insecure_channel(self.address["grpc"]) as channel:
                    channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)(body, timeout=5)
            except grpc.RpcError:
                with self._lock:
                    self.refused += 1  # not acknowledged: a sender would retry; these spans are not counted
                time.sleep(0.05)
                continue
            with self._lock:
                self.acked.update((t.hex_id, s.span.span_id.hex()) for t in traces for s in t.spans)
            time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _durable_config(tmp_path: Path, backend_port: int) -> Path:
    """A Collector that queues in files (file_storage) and retries for 5 minutes: what it acknowledged
    survives its own kill -9 and the backend's absence."""
    storage = tmp_path / "queue"
    storage.mkdir()
    config = tmp_path / "durable.yaml"
    config.write_text(
        "receivers: {otlp: {protocols: {grpc: {endpoint: 127.0.0.1:0}}}}\n"
        "processors: {batch: {timeout: 100ms, send_batch_size: 500}}\n"
        "exporters:\n  otlp:\n"
        f"    endpoint: 127.0.0.1:{backend_port}\n"
        f"    headers: {{Authentication: {TOKENS['acme']}}}\n"
        "    tls: {insecure: true}\n"
        "    sending_queue: {storage: file_storage, num_consumers: 2}\n"
        "    retry_on_failure: {initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 300s}\n"
        f"extensions: {{file_storage: {{directory: '{storage}'}}}}\n"
        "service: {extensions: [file_storage], telemetry: {metrics: {level: none}}, "
        "pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}}}\n"
    )
    return config


def test_no_span_is_lost_when_the_backend_is_down_and_the_collector_is_killed(tmp_path, servers, collectors):
    """Spans flow while the backend is stopped for 30 s; meanwhile the collector is killed -9 and
    restarted on its file_storage queue. Every span a sender got an acknowledgement for arrives."""
    backend_port = free_port()
    backend_args = (*token_args(), "--flush-interval", "50ms")
    config = _durable_config(tmp_path, backend_port)

    def start_backend() -> ServerProcess:
        return servers(tmp_path / "backend", *backend_args, "--grpc", f"127.0.0.1:{backend_port}")

    backend = start_backend()
    collector = collectors(tmp_path / "collector", "--config", str(config))
    address = {"grpc": collector.receiver()}
    senders = Senders(address, seed=11, pause=0.02)
    acked = senders.acked
    try:
        wait_until(lambda: len(acked) > 200)
        backend.stop()  # the backend goes away while spans keep flowing
        outage_started = time.monotonic()
        time.sleep(8)
        collector.kill()  # kill -9 with a full persistent queue
        collector = collectors(tmp_path / "collector", "--config", str(config))
        address["grpc"] = collector.receiver()
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        backend = start_backend()
        time.sleep(3)
    finally:
        senders.stop()
    assert len(acked) > 1000
    wait_until(lambda: stored(backend)[2] >= len(acked), timeout=120)
    distinct = stored(backend)[2]
    assert distinct >= len(acked)  # every acknowledged span; duplicates are allowed, gaps are not
    assert "requests waiting in the persistent queue from the last run" in collector.log()
    assert collector.stop() == 0
    backend.stop()


def test_kill_9_of_the_collector_under_traffic_loses_no_acknowledged_span(tmp_path, servers, collectors):
    """The backend stays up; the collector is killed -9 three times at random moments while senders
    export, and restarted on its queue. Every span a sender got an acknowledgement for is stored."""
    backend_port = free_port()
    backend = servers(
        tmp_path / "backend", *token_args(), "--flush-interval", "50ms", "--grpc", f"127.0.0.1:{backend_port}"
    )
    config = _durable_config(tmp_path, backend_port)
    collector = collectors(tmp_path / "collector", "--config", str(config))
    address = {"grpc": collector.receiver()}
    rng = random.Random()
    senders = Senders(address, seed=12, threads=2)
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 2.5))
            collector.kill()
            collector = collectors(tmp_path / "collector", "--config", str(config))
            address["grpc"] = collector.receiver()
        time.sleep(1)
    finally:
        senders.stop()
    acked, refused = senders.acked, senders.refused
    assert len(acked) > 1000
    assert refused > 0, "some exports met a killed collector"
    wait_until(lambda: stored(backend)[2] >= len(acked), timeout=60)
    print(f"acknowledged {len(acked)} spans across 3 kills ({refused} exports refused)")  # pytest -s
    assert collector.stop() == 0


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_limiter_keeps_memory_under_its_limit_and_refuses_retryably(tmp_path, collectors):
    """The backend never answers, so the queue grows; past the soft limit the receiver says UNAVAILABLE."""
    dead = free_port()
    config = tmp_path / "limited.yaml"
    base = f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:0, max_recv_msg_size_mib: 16}}
processors:
  memory_limiter: {{check_interval: 100ms, limit_mib: "${{env:LIMIT}}"}}
exporters:
  otlp:
    endpoint: 127.0.0.1:{dead}
    tls: {{insecure: true}}
    sending_queue: {{queue_size: 100000}}
    retry_on_failure: {{initial_interval: 10s}}
service:
  telemetry: {{metrics: {{level: none}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [memory_limiter], exporters: [otlp]}}
"""
    config.write_text(base)
    probe = collectors(tmp_path / "probe", "--config", str(config), env={"LIMIT": "100000"})
    baseline = _rss_mib(probe.proc.pid)  # type: ignore[union-attr]
    probe.stop()
    limit = int(baseline + 120)
    collector = collectors(tmp_path / "limited", "--config", str(config), env={"LIMIT": str(limit)})
    stream = traffic(4, time.time_ns() - 10**9, 10**6)
    bodies = [export_request([next(stream) for _ in range(60)]).SerializeToString() for _ in range(20)]  # ~512 spans
    peak, accepted = 0.0, 0
    refusals: list[tuple[grpc.StatusCode, str]] = []
    with grpc.insecure_channel(collector.receiver()) as ch:
        export = ch.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for i in range(2000):
            try:
                export(bodies[i % len(bodies)], timeout=10)
                accepted += 1
            except grpc.RpcError as exc:
                refusals.append((exc.code(), exc.details()))
            peak = max(peak, _rss_mib(collector.proc.pid))  # type: ignore[union-attr]
            if len(refusals) >= 20:
                break
    assert len(refusals) >= 20, f"never refused; peak {peak:.0f} MiB, limit {limit} MiB"
    assert {code for code, _ in refusals} == {grpc.StatusCode.UNAVAILABLE}  # retryable
    assert all("data refused due to high memory usage" in details for _, details in refusals)
    assert accepted > 10
    assert peak < limit, f"peak {peak:.0f} MiB over the {limit} MiB limit"
    assert collector.stop() == 0


def test_zipkin_in_otlphttp_and_file_out(tmp_path, servers, collectors):
    backend = servers(tmp_path / "backend", *token_args(), "--flush-interval", "50ms")
    out = tmp_path / "spans.jsonl"
    config = tmp_path / "zipkin.yaml"
    config.write_text(f"""
receivers:
  zipkin: {{endpoint: 127.0.0.1:0}}
processors:
  attributes: {{actions: [{{key: cluster, value: kind, action: insert}}]}}
exporters:
  otlphttp:
    endpoint: {backend.otlp_http}
    headers: {{Authorization: "Bearer {TOKENS["acme"]}"}}
  file: {{path: {out}}}
service:
  telemetry: {{metrics: {{level: none}}}}
  pipelines:
    traces: {{receivers: [zipkin], processors: [attributes], exporters: [otlphttp, file]}}
""")
    collector = collectors(tmp_path / "collector", "--config", str(config))
    now_us = time.time_ns() // 1000
    spans = [
        {
            "traceId": "c1" * 16,
            "id": f"{i:016x}",
            "name": f"op-{i}",
            "kind": "SERVER",
            "timestamp": now_us,
            "duration": 1000,
            "localEndpoint": {"serviceName": "zipkin-svc"},
        }
        for i in range(1, 6)
    ]
    response = httpx.post(f"http://{collector.receiver('zipkin', 'http')}/api/v2/spans", json=spans)
    assert response.status_code == 202
    wait_until(lambda: stored(backend)[2] == 5)
    trace = backend.api().get(f"/api/traces/{'c1' * 16}").json()["data"][0]
    assert {t["key"]: t["value"] for t in trace["spans"][0]["tags"]}["cluster"] == "kind"
    assert collector.stop() == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    written = [s for line in lines for rs in line["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["spanId"] for s in written) == [f"{i:016x}" for i in range(1, 6)]
    assert written[0]["traceId"] == "c1" * 16  # OTLP/JSON: hex ids
