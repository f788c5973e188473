"""Collector benchmark: spans/s through otlp receiver → batch → otlp exporter into a sink, for
``meshtrace collector`` and for Rotel (a Rust OpenTelemetry collector) doing the same, in one run.

Senders: 4 concurrent OTLP/gRPC callers replaying pre-built 512-span Bookinfo requests. The sink (its own
process) counts the spans it receives by decoding every request. Both collectors export without
compression, so the pipeline is measured rather than gzip. Prints one JSON object.

    .venv/bin/python benchmarks/collector.py [--seconds 20] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import grpc

from common import machine, process_stat, start_sink
from meshtrace.listen import free_port
from meshtrace.testing.bookinfo import requests_of, traffic
from meshtrace.testing.server import CollectorProcess

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


async def drive(target: str, bodies: list[bytes], concurrency: int, seconds: float) -> int:
    """Send for ``seconds``; returns the number of requests acknowledged."""
    acked = 0
    stop_at = time.monotonic() + seconds
    counter = iter(range(10**12))
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)

        async def worker() -> None:
            nonlocal acked
            while time.monotonic() < stop_at:
                try:
                    await export(bodies[next(counter) % len(bodies)], timeout=30)
                    acked += 1
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return acked


def measure(name: str, target: str, pid: int, bodies: list[bytes], spans: Any, args: argparse.Namespace) -> dict:
    asyncio.run(drive(target, bodies, args.concurrency, 2.0))  # warm-up
    time.sleep(1.0)
    before, cpu_before, started = spans.value, process_stat(pid)[0], time.monotonic()
    acked = asyncio.run(drive(target, bodies, args.concurrency, args.seconds))
    sent_spans = acked * 512
    deadline = time.monotonic() + 30
    while spans.value - before < sent_spans and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    delivered = spans.value - before
    return {
        "collector": name,
        "spans_per_s_delivered": round(delivered / elapsed),
        "spans_acknowledged": sent_spans,
        "spans_delivered": delivered,
        "collector_cpu_cores": round((process_stat(pid)[0] - cpu_before) / elapsed, 2),
        "collector_rss_mib": round(process_stat(pid)[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    bodies = list(requests_of(traffic(seed=2, start_ns=time.time_ns() - 3600 * 10**9, count=12_000), 512))[:200]
    bodies = [b for b in bodies if b]  # requests of whole traces, ~512 spans each
    sink, sink_port, spans = start_sink()
    results = []
    with tempfile.TemporaryDirectory(prefix="meshtrace-cbench-") as tmp:
        config = Path(tmp) / "passthrough.yaml"
        config.write_text(
            "receivers: {otlp: {protocols: {grpc: {endpoint: 127.0.0.1:0, max_recv_msg_size_mib: 64}}}}\n"
            "processors: {batch: {}}\n"
            f"exporters: {{otlp: {{endpoint: '127.0.0.1:{sink_port}', compression: none, tls: {{insecure: true}}}}}}\n"
            "service: {telemetry: {metrics: {level: none}}, "
            "pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}}}\n"
        )
        ours = CollectorProcess(Path(tmp) / "meshtrace", "--config", str(config)).start()
        try:
            results.append(measure("meshtrace collector", ours.receiver(), ours.pid, bodies, spans, args))
        finally:
            ours.stop()
        port = free_port()
        rotel = subprocess.Popen(
            [str(resources.files("rotel") / "rotel-agent"), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{port}",
             "--otlp-http-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "otlp", "--otlp-exporter-endpoint",
             f"http://127.0.0.1:{sink_port}", "--otlp-exporter-protocol", "grpc", "--otlp-exporter-compression",
             "none", "--batch-max-size", "8192", "--batch-timeout", "200ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            results.append(measure("rotel", f"127.0.0.1:{port}", rotel.pid, bodies, spans, args))
        finally:
            rotel.terminate()
            rotel.wait(30)
    sink.terminate()
    ratio = results[0]["spans_per_s_delivered"] / max(results[1]["spans_per_s_delivered"], 1)
    print(json.dumps({
        "benchmark": "collector",
        "machine": machine(),
        "config": {"pipeline": "otlp receiver → batch → otlp exporter (no compression) → sink",
                   "concurrency": args.concurrency, "spans_per_request": 512, "seconds": args.seconds},
        "results": results,
        "meshtrace_to_rotel_ratio": round(ratio, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
