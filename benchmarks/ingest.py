"""Ingest benchmark: pre-built 512-span Istio-like OTLP requests over gRPC to a fresh ``meshtrace serve``.

Prints one JSON object: spans/s acknowledged and stored (stored is verified by counting the store),
p50/p99 export latency, server RSS and CPU, bytes per span on disk.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--concurrency 4] [-- extra serve flags]

Traffic goes to 127.0.0.1 only; the run stops by itself after warm-up + measurement + drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from rich.progress import Progress

from common import machine, metric, process_stat
from meshtrace.testing.bookinfo import BookinfoTrace, export_request, traffic
from meshtrace.testing.server import ServerProcess

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "bench-token"


def grouped_traces(count: int, spans_per_request: int, start_ns: int, interval_ns: int) -> list[list[BookinfoTrace]]:
    """``count`` groups of whole Bookinfo traces, about ``spans_per_request`` spans each (one request each)."""
    groups: list[list[BookinfoTrace]] = []
    stream = traffic(seed=1, start_ns=start_ns, count=10**9, interval_ns=interval_ns)
    with Progress(transient=True) as progress:
        task = progress.add_task("building requests", total=count)
        for _ in range(count):
            traces, spans = [], 0
            while spans < spans_per_request:
                trace = next(stream)
                traces.append(trace)
                spans += len(trace.spans)
            groups.append(traces)
            progress.advance(task)
    return groups


def build_requests(count: int, spans_per_request: int) -> list[tuple[bytes, int]]:
    """Distinct requests of about ``spans_per_request`` whole Bookinfo traces each."""
    groups = grouped_traces(count, spans_per_request, time.time_ns() - 3600 * 10**9, 2 * 10**6)
    return [(export_request(traces).SerializeToString(), sum(len(t.spans) for t in traces)) for traces in groups]


async def drive(
    target: str, requests: list[tuple[bytes, int]], concurrency: int, warmup: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    acked = {"warmup": 0, "measured": 0, "errors": 0}
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    counter = iter(range(10**12))
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)

        async def worker() -> None:
            while (now := time.monotonic()) < stop_at:
                body, spans = requests[next(counter) % len(requests)]
                try:
                    await export(body, metadata=(("authentication", TOKEN),), timeout=30)
                except grpc.aio.AioRpcError:
                    acked["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                done = time.monotonic()
                if now >= measure_from:
                    latencies.append(done - now)
                    acked["measured"] += spans
                else:
                    acked["warmup"] += spans

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, **acked, "measure_from": measure_from, "stop_at": stop_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds (after warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="distinct pre-built requests, sent in a cycle")
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("serve_args", nargs="*", help="extra flags for meshtrace serve (after --)")
    args = parser.parse_args()

    requests = build_requests(args.requests, args.spans_per_request)
    mean_bytes = statistics.mean(len(b) for b, _ in requests)
    with tempfile.TemporaryDirectory(prefix="meshtrace-bench-") as data:
        server = ServerProcess(Path(data), "--token", f"bench={TOKEN}", *args.serve_args).start()
        try:
            rss_max = 0.0
            sampling = True

            def sample() -> None:
                nonlocal rss_max
                while sampling:
                    rss_max = max(rss_max, process_stat(server.pid)[1])
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            api = server.api(TOKEN)

            def count() -> int:
                return int(api.get("/meshtrace/v1/stats").json()["spans"])

            loop_result: dict[str, Any] = {}

            def client() -> None:
                loop_result.update(
                    asyncio.run(drive(server.grpc, requests, args.concurrency, args.warmup, args.seconds))
                )

            thread = threading.Thread(target=client)
            thread.start()
            time.sleep(args.warmup)
            stored_before = count()  # the stored rate is counted from the start of the measurement
            cpu_before = process_stat(server.pid)[0]
            thread.join()
            acked_total = loop_result["warmup"] + loop_result["measured"]
            deadline = time.monotonic() + 300
            while (stored_now := count()) < acked_total and time.monotonic() < deadline:
                time.sleep(0.05)
            drained_at = time.monotonic()
            cpu_after = process_stat(server.pid)[0]
            sampling = False
            time.sleep(5)  # let merges settle before measuring bytes on disk
            metrics = api.get("/metrics").text
            latencies = sorted(loop_result["latencies"])
            window = drained_at - loop_result["measure_from"]
            report = {
                "benchmark": "ingest",
                "machine": machine(),
                "config": {
                    "concurrency": args.concurrency,
                    "spans_per_request": args.spans_per_request,
                    "request_bytes_mean": round(mean_bytes),
                    "distinct_requests": args.requests,
                    "seconds": args.seconds,
                    "serve_args": args.serve_args,
                },
                "spans_per_s_acknowledged": round(loop_result["measured"] / args.seconds),
                "spans_per_s_stored": round((stored_now - stored_before) / window),
                "stored_equals_acknowledged": stored_now == acked_total,
                "export_latency_ms": {
                    "p50": round(latencies[len(latencies) // 2] * 1000, 1),
                    "p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
                    "max": round(latencies[-1] * 1000, 1),
                },
                "errors": loop_result["errors"],
                "server_cpu_cores": round((cpu_after - cpu_before) / window, 2),
                "server_rss_mib_max": round(rss_max),
                "bytes_per_span_on_disk": round(
                    metric(metrics, "meshtrace_store_bytes") / max(metric(metrics, "meshtrace_store_spans"), 1), 1
                ),
                "spans_stored": stored_now,
            }
            print(json.dumps(report, indent=2))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
