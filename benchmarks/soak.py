"""Soak: mixed ingest and queries at a fixed rate against one ``meshtrace serve``, for a long time.

Senders export pre-built Istio-like OTLP requests over gRPC at ``--rate`` spans/s (paced, not as fast as
possible); a query client runs a mix of searches, trace lookups, service graph, RED and TraceQL queries
over HTTP. Every 10 s a sample is written (one JSON line to ``--report``): server RSS and CPU, export and
query latency percentiles of the last 10 s (and each query's slowest), errors, spans acknowledged, stored
and pending, ClickHouse's memory by kind. At the end the senders stop, the backlog drains, and one JSON
summary is printed: RSS trend over the second half (a least-squares slope, MiB per 10 minutes), latency
percentiles per sample, error totals, and whether the store holds exactly every acknowledged span.

    .venv/bin/python benchmarks/soak.py --minutes 30 --rate 27000 --report soak.jsonl

Traffic goes to 127.0.0.1 only; the run stops by itself after ``--minutes`` plus the drain.
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
import httpx

from common import machine, metric, process_stat
from ingest import EXPORT, TOKEN, build_requests
from meshtrace.testing.server import ServerProcess

QUERIES = [
    ("/api/traces", {"service": "productpage.default", "lookback": "15m", "limit": "20"}),
    ("/api/traces", {"service": "reviews.default", "minDuration": "20ms", "lookback": "1h", "limit": "20"}),
    ("/meshtrace/v1/servicegraph", {"lookback": "1h"}),
    ("/meshtrace/v1/red", {"lookback": "1h"}),
    ("/tempo/api/search", {"q": '{ resource.service.name = "ratings.default" && status = error }', "limit": "20"}),
    ("/api/services", {}),
]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000, 1)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (per second of x)."""
    if len(points) < 2:
        return 0.0
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


class Window:
    """What happened since the last sample (shared by the sender, query and sampling threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.export: list[float] = []
        self.query: list[float] = []
        self.by_query: dict[str, list[float]] = {}
        self.export_errors = 0
        self.query_errors = 0
        self.acked = 0

    def take(self) -> tuple[list[float], list[float], dict[str, list[float]], int, int]:
        with self.lock:
            out = (self.export, self.query, self.by_query, self.export_errors, self.query_errors)
            self.export, self.query, self.by_query, self.export_errors, self.query_errors = [], [], {}, 0, 0
        return out


async def send(target: str, requests: list[tuple[bytes, int]], rate: float, stop_at: float, win: Window) -> None:
    """Pace requests to ``rate`` spans/s: each is due at (spans sent so far) / rate after the start."""
    start = time.monotonic()
    sent_spans = 0
    index = 0
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        pending: set[asyncio.Task[None]] = set()

        async def one(body: bytes, spans: int) -> None:
            began = time.monotonic()
            try:
                await export(body, metadata=(("authentication", TOKEN),), timeout=30)
            except grpc.aio.AioRpcError:
                with win.lock:
                    win.export_errors += 1
                return
            with win.lock:
                win.export.append(time.monotonic() - began)
                win.acked += spans

        while time.monotonic() < stop_at:
            due = start + sent_spans / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body, spans = requests[index % len(requests)]
            index += 1
            sent_spans += spans
            task = asyncio.create_task(one(body, spans))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) > 64:  # the server is behind: wait rather than pile up requests
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)


def store_memory(metrics: str) -> dict[str, float]:
    """``meshtrace_store_memory_bytes`` by kind, in MiB (ClickHouse's tracked memory and caches)."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith('meshtrace_store_memory_bytes{kind="'):
            kind, _, value = line[len('meshtrace_store_memory_bytes{kind="') :].partition('"} ')
            out[kind] = round(float(value) / 2**20, 1)
    return out


def query_loop(api: httpx.Client, stop_at: float, win: Window, interval: float) -> None:
    trace_id = ""
    n = 0
    while time.monotonic() < stop_at:
        index = n % (len(QUERIES) + 1)
        n += 1
        if index == len(QUERIES):
            if not trace_id:
                continue
            path, params, name = f"/api/traces/{trace_id}", {}, "trace by id"
        else:
            path, params = QUERIES[index]
            name = f"{index}:{path}"
        began = time.monotonic()
        try:
            response = api.get(path, params=params, timeout=60)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        with win.lock:
            if ok:
                win.query.append(time.monotonic() - began)
                win.by_query.setdefault(name, []).append(time.monotonic() - began)
            else:
                win.query_errors += 1
        if ok and path == "/api/traces" and response.json()["data"]:
            trace_id = response.json()["data"][0]["traceID"]
        time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=27_000, help="spans/s offered (80%% of the measured maximum)")
    parser.add_argument("--requests", type=int, default=1000, help="distinct pre-built requests, sent in a cycle")
    parser.add_argument("--query-interval", type=float, default=0.5, help="pause between queries (s)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--report", type=Path, default=Path("soak.jsonl"), help="samples, one JSON line each")
    parser.add_argument("serve_args", nargs="*", help="extra flags for meshtrace serve (after --)")
    args = parser.parse_args()

    requests = build_requests(args.requests, 512)
    with tempfile.TemporaryDirectory(prefix="meshtrace-soak-") as data:
        server = ServerProcess(Path(data), "--token", f"bench={TOKEN}", *args.serve_args).start()
        try:
            api = server.api(TOKEN)
            win = Window()
            start = time.monotonic()
            stop_at = start + args.minutes * 60
            sender = threading.Thread(
                target=lambda: asyncio.run(send(server.grpc, requests, args.rate, stop_at, win)), daemon=True
            )
            querier = threading.Thread(
                target=query_loop, args=(server.api(TOKEN), stop_at, win, args.query_interval), daemon=True
            )
            sender.start()
            querier.start()
            samples: list[dict[str, Any]] = []
            cpu_prev, _ = process_stat(server.pid)
            with args.report.open("w") as report:
                while time.monotonic() < stop_at:
                    time.sleep(min(args.sample, max(stop_at - time.monotonic(), 0.1)))
                    exports, queries, by_query, export_errors, query_errors = win.take()
                    cpu, rss = process_stat(server.pid)
                    metrics = api.get("/metrics").text
                    sample = {
                        "t_s": round(time.monotonic() - start, 1),
                        "rss_mib": round(rss),
                        "cpu_cores": round((cpu - cpu_prev) / args.sample, 2),
                        "acked_spans": win.acked,
                        "stored_spans": int(metric(metrics, "meshtrace_store_spans")),
                        "pending_spans": int(metric(metrics, "meshtrace_ingest_pending_spans")),
                        "exports": len(exports),
                        "export_ms": {"p50": _pct(exports, 0.5), "p99": _pct(exports, 0.99)},
                        "queries": len(queries),
                        "query_ms": {"p50": _pct(queries, 0.5), "p99": _pct(queries, 0.99)},
                        "query_max_ms": {name: _pct(times, 1.0) for name, times in sorted(by_query.items())},
                        "export_errors": export_errors,
                        "query_errors": query_errors,
                        "store_memory_mib": store_memory(metrics),
                    }
                    cpu_prev = cpu
                    samples.append(sample)
                    report.write(json.dumps(sample) + "\n")
                    report.flush()
            sender.join(60)
            querier.join(90)
            deadline = time.monotonic() + 300
            while (stored := int(api.get("/meshtrace/v1/stats").json()["spans"])) < win.acked:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            second_half = [(s["t_s"], s["rss_mib"]) for s in samples[len(samples) // 2 :]]
            summary = {
                "benchmark": "soak",
                "machine": machine(),
                "config": {"minutes": args.minutes, "rate": args.rate, "serve_args": args.serve_args},
                "samples": len(samples),
                "spans_acknowledged": win.acked,
                "spans_stored": stored,
                "stored_equals_acknowledged": stored == win.acked,
                "spans_per_s_acknowledged": round(win.acked / (args.minutes * 60)),
                "export_errors": sum(s["export_errors"] for s in samples),
                "query_errors": sum(s["query_errors"] for s in samples),
                "queries": sum(s["queries"] for s in samples),
                "rss_mib": {
                    "first": samples[0]["rss_mib"] if samples else None,
                    "max": max((s["rss_mib"] for s in samples), default=None),
                    "last": samples[-1]["rss_mib"] if samples else None,
                    "second_half_slope_mib_per_10min": round(_slope(second_half) * 600, 1),
                },
                "export_p99_ms_worst_sample": max((s["export_ms"]["p99"] or 0 for s in samples), default=None),
                "export_p99_ms_median_sample": statistics.median(s["export_ms"]["p99"] or 0 for s in samples)
                if samples
                else None,
                "query_p99_ms_worst_sample": max((s["query_ms"]["p99"] or 0 for s in samples), default=None),
                "query_p50_ms_median_sample": statistics.median(s["query_ms"]["p50"] or 0 for s in samples)
                if samples
                else None,
                "query_max_ms_by_query": {
                    name: {
                        "first_minute": max(s["query_max_ms"].get(name) or 0 for s in samples[:6]),
                        "last_minute": max(s["query_max_ms"].get(name) or 0 for s in samples[-6:]),
                        "worst": max(s["query_max_ms"].get(name) or 0 for s in samples),
                    }
                    for name in sorted({name for s in samples for name in s["query_max_ms"]})
                },
                "pending_spans_max": max((s["pending_spans"] for s in samples), default=None),
                "report": str(args.report),
            }
            print(json.dumps(summary, indent=2))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
