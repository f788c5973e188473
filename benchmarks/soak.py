"""Soak: mixed ingest and queries at a fixed rate against one ``meshtrace serve``, for a long time.

Senders export Istio-like OTLP requests over gRPC at ``--rate`` spans/s (paced, not as fast as possible;
``--rate max``: as fast as the server acknowledges, which measures the maximum under the same queries; each
pass over the pre-built requests is new traffic, ``Requests``); a query client runs a mix of searches, trace
lookups, service graph, RED and TraceQL queries over HTTP. Every 10 s a sample is written (one JSON line to
``--report``): server RSS and CPU, export and query latency percentiles of the last 10 s (and each query's
slowest), errors, spans acknowledged, stored and pending, ClickHouse's memory by kind, the heap. At the end the
senders stop, the backlog drains, and one JSON summary is printed: RSS trend over the second half (a
least-squares slope, MiB per 10 minutes), latency percentiles per sample, error totals, and whether the store
holds exactly every acknowledged span.

    .venv/bin/python benchmarks/soak.py --minutes 5 --rate max --report max.jsonl      # the mixed maximum
    .venv/bin/python benchmarks/soak.py --minutes 30 --rate 20000 --report soak.jsonl  # then 80% of it

Traffic goes to 127.0.0.1 only; the run stops by itself after ``--minutes`` plus the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

from common import machine, metric, process_stat
from ingest import EXPORT, TOKEN, grouped_traces
from meshtrace.testing.bookinfo import export_request
from meshtrace.testing.server import ServerProcess

MAX_RATE_GUESS = 30_000.0  # spans/s the data's timestamps advance at when finding the maximum
MAX_IN_FLIGHT = 4  # senders at once when finding the maximum (as the ingest benchmark)
QUERIES = [
    ("/api/traces", {"service": "productpage.default", "lookback": "15m", "limit": "20"}),
    ("/api/traces", {"service": "reviews.default", "minDuration": "20ms", "lookback": "1h", "limit": "20"}),
    ("/meshtrace/v1/servicegraph", {"lookback": "1h"}),
    ("/meshtrace/v1/red", {"lookback": "1h"}),
    ("/tempo/api/search", {"q": '{ resource.service.name = "ratings.default" && status = error }', "limit": "20"}),
    ("/api/services", {}),
]


class Requests:
    """Pre-built export requests, sent in a cycle as new traffic: every pass gives the traces new ids and
    moves their times on by the time a pass takes at ``rate``, so searches see recent data and traces keep
    their size (re-sending the same traces would make them grow, and their times age out of the windows).
    Trace ids and timestamps are patched in the encoded bytes at offsets found once."""

    def __init__(self, count: int, spans_per_request: int, rate: float) -> None:
        self.items: list[tuple[bytes, int, list[int], list[tuple[int, int]]]] = []
        traces_per_request = grouped_traces(count, spans_per_request, 0, 10**6)
        total = sum(len(t.spans) for traces in traces_per_request for t in traces)
        last = max(p.span.end_time_unix_nano for traces in traces_per_request for t in traces for p in t.spans)
        self.period_ns = int(total / rate * 1e9)  # one pass at the offered rate
        base = time.time_ns() - last  # the first pass ends now
        for traces in traces_per_request:
            for trace in traces:
                for item in trace.spans:
                    item.span.start_time_unix_nano += base
                    item.span.end_time_unix_nano += base
            body = export_request(traces).SerializeToString()
            trace_ids = {t.trace_id for t in traces}
            ids = [i + 2 for i in _find_all(body, b"\x0a\x10") if body[i + 2 : i + 18] in trace_ids]
            stamps = {
                struct.pack("<Q", value)
                for t in traces
                for p in t.spans
                for value in (p.span.start_time_unix_nano, p.span.end_time_unix_nano)
            }
            times = [
                (i + 1, struct.unpack_from("<Q", body, i + 1)[0])
                for tag in (b"\x39", b"\x41")
                for i in _find_all(body, tag)
                if body[i + 1 : i + 9] in stamps
            ]
            self.items.append((body, sum(len(t.spans) for t in traces), ids, times))

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int) -> tuple[bytes, int]:
        body, spans, ids, times = self.items[index % len(self.items)]
        cycle = index // len(self.items)
        if not cycle:
            return body, spans
        out = bytearray(body)
        stamp = struct.pack(">I", cycle)
        for offset in ids:
            out[offset + 12 : offset + 16] = stamp
        shift = cycle * self.period_ns
        for offset, value in times:
            struct.pack_into("<Q", out, offset, value + shift)
        return bytes(out), spans


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, start = [], 0
    while (i := data.find(needle, start)) >= 0:
        found.append(i)
        start = i + 1
    return found


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000, 1)


def _stored_rate(samples: list[dict[str, Any]]) -> int | None:
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    return round((last["stored_spans"] - first["stored_spans"]) / (last["t_s"] - first["t_s"]))


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


async def send(target: str, requests: Requests, rate: float | None, stop_at: float, win: Window) -> None:
    """Pace requests to ``rate`` spans/s: each is due at (spans sent so far) / rate after the start. With
    no rate, as fast as the server acknowledges (``MAX_IN_FLIGHT`` requests at a time): the maximum."""
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
            delay = start + sent_spans / rate - time.monotonic() if rate else 0
            if delay > 0:
                await asyncio.sleep(delay)
            body, spans = requests.get(index)
            index += 1
            sent_spans += spans
            task = asyncio.create_task(one(body, spans))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) >= (MAX_IN_FLIGHT if rate is None else 64):  # wait rather than pile requests up
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)


def by_kind(metrics: str, name: str) -> dict[str, float]:
    """A gauge labelled by ``kind`` (the engine's memory, the heap), in MiB."""
    out = {}
    prefix = name + '{kind="'
    for line in metrics.splitlines():
        if line.startswith(prefix):
            kind, _, value = line[len(prefix) :].partition('"} ')
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
    parser.add_argument(
        "--rate",
        default="27000",
        help="spans/s offered, or 'max': as fast as acknowledged, with the same queries (the mixed maximum)",
    )
    parser.add_argument("--requests", type=int, default=1000, help="distinct pre-built requests, sent in a cycle")
    parser.add_argument("--query-interval", type=float, default=0.5, help="pause between queries (s)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--report", type=Path, default=Path("soak.jsonl"), help="samples, one JSON line each")
    parser.add_argument("serve_args", nargs="*", help="extra flags for meshtrace serve (after --)")
    args = parser.parse_args()

    rate = None if args.rate == "max" else float(args.rate)
    requests = Requests(args.requests, 512, rate or MAX_RATE_GUESS)
    with tempfile.TemporaryDirectory(prefix="meshtrace-soak-") as data:
        server = ServerProcess(Path(data), "--token", f"bench={TOKEN}", *args.serve_args).start()
        try:
            api = server.api(TOKEN)
            win = Window()
            start = time.monotonic()
            stop_at = start + args.minutes * 60
            sender = threading.Thread(
                target=lambda: asyncio.run(send(server.grpc, requests, rate, stop_at, win)), daemon=True
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
                        "store_memory_mib": by_kind(metrics, "meshtrace_store_memory_bytes"),
                        "heap_mib": {
                            **by_kind(metrics, "meshtrace_heap_bytes"),
                            "returned": round(metric(metrics, "meshtrace_heap_returned_bytes_total") / 2**20, 1),
                        },
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
                # What the store took in over the second half: with --rate max, the sustained maximum (the
                # first minutes also fill the write-ahead log up to --max-pending).
                "spans_per_s_stored_second_half": _stored_rate(samples[len(samples) // 2 :]),
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
