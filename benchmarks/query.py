"""Query benchmark: Jaeger, Tempo, native and analytics latencies over a store of ≥5M Bookinfo spans.

Loads Bookinfo traffic (unique trace ids, spread over the last 6 hours) through the real ingest path,
waits for merges to settle, then times each query over HTTP: median and p95 of ``--repeat`` runs after
one warm-up, each run with a different trace id or value where the query takes one. Prints JSON.

    .venv/bin/python benchmarks/query.py [--spans 5000000] [--keep DIR]

``--keep DIR`` keeps the loaded store in DIR and reuses it on the next run (no reload).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from common import machine, process_stat
from meshtrace.testing.bookinfo import export_request, traffic
from meshtrace.testing.server import ServerProcess

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "bench-token"
HOURS = 6


async def load(target: str, spans_wanted: int, samples: dict[str, list[str]]) -> int:
    """Send Bookinfo traffic until ``spans_wanted`` spans are acknowledged; keep some ids and values to query."""
    traces_wanted = spans_wanted // 8 + 1
    interval = HOURS * 3600 * 10**9 // traces_wanted
    stream = traffic(seed=7, start_ns=time.time_ns() - HOURS * 3600 * 10**9, count=traces_wanted, interval_ns=interval)
    rng = random.Random(7)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
    sent = 0

    async def produce(progress: Progress, task: Any) -> None:
        nonlocal sent
        batch, spans = [], 0
        for trace in stream:
            batch.append(trace)
            spans += len(trace.spans)
            if rng.random() < 0.0005:
                samples["trace_ids"].append(trace.hex_id)
                request_id = next(
                    kv.value.string_value for kv in trace.spans[0].span.attributes if kv.key == "guid:x-request-id"
                )
                samples["request_ids"].append(request_id)
            if spans >= 512:
                await queue.put(export_request(batch).SerializeToString())
                sent += spans
                progress.update(task, completed=sent)
                batch, spans = [], 0
                if sent >= spans_wanted:
                    break
                await asyncio.sleep(0)
        for _ in range(4):
            await queue.put(None)

    async def send(channel: grpc.aio.Channel) -> None:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        while (body := await queue.get()) is not None:
            delay = 0.1
            while True:
                try:
                    await export(body, metadata=(("authentication", TOKEN),), timeout=60)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(delay)  # backpressure: the store is behind
                    delay = min(delay * 2, 2.0)

    columns = (
        TextColumn("loading spans"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("load", total=spans_wanted)
        async with grpc.aio.insecure_channel(target) as channel:
            await asyncio.gather(produce(progress, task), *(send(channel) for _ in range(4)))
    return sent


def wait_idle(pid: int, limit_s: float = 600.0) -> None:
    """Until the server uses under 5% of a core over 3 s (background merges done), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = process_stat(pid)[0]
        time.sleep(3)
        if process_stat(pid)[0] - before < 0.15:
            return


def timed(fn: Any, args_list: list[Any]) -> dict[str, float]:
    fn(args_list[0])  # warm-up
    times = []
    for args in args_list[1:]:
        started = time.perf_counter()
        fn(args)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(len(times) * 0.95)], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", help="directory to keep (and reuse) the loaded store in")
    args = parser.parse_args()

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="meshtrace-qbench-"))
    samples_file = workdir / "samples.json"
    server = ServerProcess(workdir / "data", "--token", f"bench={TOKEN}", "--retention", "7d").start()
    try:
        api = server.api(TOKEN)
        load_seconds = None
        if samples_file.exists():
            samples = json.loads(samples_file.read_text())
        else:
            samples = {"trace_ids": [], "request_ids": []}
            started = time.monotonic()
            sent = asyncio.run(load(server.grpc, args.spans, samples))
            while api.get("/meshtrace/v1/stats").json()["spans"] < sent:
                time.sleep(0.5)
            load_seconds = round(time.monotonic() - started, 1)
            samples_file.write_text(json.dumps(samples))
        wait_idle(server.pid)  # merges and the service graph finished: what users see
        stats = api.get("/meshtrace/v1/stats").json()
        n = args.repeat + 1
        ids = (samples["trace_ids"] * n)[:n]
        request_ids = (samples["request_ids"] * n)[:n]

        def get(path: str, **params: Any) -> Any:
            response = api.get(path, params=params)
            response.raise_for_status()
            return response.json()

        now_us = time.time_ns() // 1000
        results = {
            "trace by id (Jaeger /api/traces/{id})": timed(lambda t: get(f"/api/traces/{t}"), ids),
            "trace by id (native)": timed(lambda t: get(f"/meshtrace/v1/traces/{t}"), ids),
            "search service + minDuration, 48h, limit 20": timed(
                lambda _: get("/api/traces", service="reviews.default", minDuration="100ms", limit="20"), [0] * n
            ),
            "search service + operation + duration, last 15 min": timed(
                lambda _: get(
                    "/api/traces",
                    service="reviews.default",
                    operation="reviews.default.svc.cluster.local:9080/*",
                    minDuration="60ms",
                    limit="20",
                    start=str(now_us - 15 * 60 * 10**6),
                    end=str(now_us),
                ),
                [0] * n,
            ),
            "search hot attribute http.status_code=503, 48h": timed(
                lambda _: get("/api/traces", service="ratings.default", tags='{"http.status_code":"503"}', limit="20"),
                [0] * n,
            ),
            "search attribute x-request-id (one trace), 48h": timed(
                lambda r: get(
                    "/api/traces", service="productpage.default", tags=json.dumps({"guid:x-request-id": r}), limit="20"
                ),
                request_ids,
            ),
            "services": timed(lambda _: get("/api/services"), [0] * n),
            "operations": timed(lambda _: get("/api/operations", service="reviews.default"), [0] * n),
            "dependencies, 24h": timed(lambda _: get("/api/dependencies", lookback=str(24 * 3600 * 1000)), [0] * n),
        }
        end_s = time.time_ns() // 10**9 + 60
        six_h = {"start": str(end_s - 6 * 3600 - 120), "end": str(end_s)}
        trace_ids = (samples["trace_ids"] * n)[:n]
        analytics = {
            "service graph, 1h": timed(lambda _: get("/meshtrace/v1/servicegraph", lookback="1h"), [0] * n),
            "service graph, 24h": timed(lambda _: get("/meshtrace/v1/servicegraph", lookback="24h"), [0] * n),
            "RED of one service, 24h, 5 min step": timed(
                lambda _: get("/meshtrace/v1/red", service="reviews.default", lookback="24h", step="5m"), [0] * n
            ),
            "RED of every service by operation, 24h": timed(
                lambda _: get("/meshtrace/v1/red", byOperation="true", lookback="24h", step="5m"), [0] * n
            ),
            "Jaeger SPM latencies p95, 1h": timed(
                lambda _: get(
                    "/api/metrics/latencies",
                    service="productpage.default",
                    quantile="0.95",
                    groupByOperation="true",
                    step="60000",
                    ratePer="600000",
                ),
                [0] * n,
            ),
            "impact ranking, 24h": timed(lambda _: get("/meshtrace/v1/impact", lookback="24h"), [0] * n),
            "error groups, 6h": timed(lambda _: get("/meshtrace/v1/errors", lookback="6h"), [0] * n),
            "outliers of an operation, 6h": timed(
                lambda _: get(
                    "/meshtrace/v1/outliers",
                    service="reviews.default",
                    operation="reviews.default.svc.cluster.local:9080/*",
                    lookback="6h",
                ),
                [0] * n,
            ),
            "trace analysis (critical path, self time)": timed(
                lambda t: get(f"/meshtrace/v1/traces/{t}/analysis"), trace_ids
            ),
            "TraceQL single spanset (Grafana builder), 6h": timed(
                lambda _: get(
                    "/tempo/api/search",
                    limit="20",
                    **six_h,
                    q='{resource.service.name="ratings.default" && status=error && duration>1ms}',
                ),
                [0] * n,
            ),
            "TraceQL Kiali shape, 6h": timed(
                lambda _: get(
                    "/tempo/api/search",
                    limit="20",
                    spss="10",
                    **six_h,
                    q='{ .service.name = "reviews.default" } && { } | select(status, .node_id, name)',
                ),
                [0] * n,
            ),
            "TraceQL structural (reviews > ratings errors), 6h": timed(
                lambda _: get(
                    "/tempo/api/search",
                    limit="20",
                    **six_h,
                    q='{ resource.service.name = "reviews.default" } > '
                    '{ resource.service.name = "ratings.default" && status = error }',
                ),
                [0] * n,
            ),
            "Tempo trace by id v2 (protobuf)": timed(
                lambda t: api.get(f"/tempo/api/v2/traces/{t}", headers={"Accept": "application/protobuf"}), trace_ids
            ),
        }
        report = {
            "benchmark": "query",
            "machine": machine(),
            "spans_stored": stats["spans"],
            "traces_stored": stats["traces"],
            "load_seconds": load_seconds,
            "repeat": args.repeat,
            "queries": results,
            "analytics": analytics,
        }
        print(json.dumps(report, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
