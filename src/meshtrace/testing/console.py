"""What the console's browser tests and ``make screenshots`` share: Debian's chromium driven by
Playwright, and a backend filled with Bookinfo traffic over OTLP/HTTP."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshtrace.testing.bookinfo import (
    GATEWAY,
    MS,
    NAMESPACE,
    BookinfoTrace,
    TraceBuilder,
    bookinfo_trace,
    export_request,
    traffic,
)
from meshtrace.testing.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
S = 1_000_000_000


def launch(playwright: Any) -> Any:
    """Debian's chromium, headless (``apt-get install chromium``; Playwright's own browsers are not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def post(server: ServerProcess, request: ExportTraceServiceRequest, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/x-protobuf", **({"Authentication": token} if token else {})}
    response = httpx.post(
        f"{server.otlp_http}/v1/traces", content=request.SerializeToString(), headers=headers, timeout=60
    )
    response.raise_for_status()
    return response


@dataclass
class Demo:
    """Bookinfo traffic as sent: the mixed stream plus traces picked for each page to show."""

    traces: list[BookinfoTrace] = field(default_factory=list)
    failing: BookinfoTrace | None = None
    unreached: BookinfoTrace | None = None
    fast: BookinfoTrace | None = None
    slow: BookinfoTrace | None = None
    large_id: str = ""


def large_trace(spans: int, seed: int = 99) -> tuple[str, ExportTraceServiceRequest]:
    """One trace of ``spans`` spans (a gateway root fanning out into nested calls), for the big-trace view."""
    rng = random.Random(seed)
    trace_id = rng.randbytes(16)
    start = time.time_ns() - 5 * 60 * S
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "loadgen.default"
    scope = rs.scope_spans.add()
    made: list[Span] = []
    for i in range(spans):
        parent = made[rng.randrange(max(len(made) - 50, 0), len(made))] if made else None
        begin = (parent.start_time_unix_nano + rng.randrange(1000, 100_000)) if parent else start
        end_limit = parent.end_time_unix_nano if parent else start + 30 * S
        span = scope.spans.add(
            trace_id=trace_id,
            span_id=rng.randbytes(8),
            name=f"step-{i % 40}",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=begin,
            end_time_unix_nano=max(begin + 1000, min(end_limit, begin + rng.randrange(10**5, 10**9))),
        )
        if parent is not None:
            span.parent_span_id = parent.span_id
        span.attributes.add(key="i").value.string_value = str(i)
        made.append(span)
    return trace_id.hex(), request


def big_mesh(services: int = 60, traces: int = 300, seed: int = 12) -> list[BookinfoTrace]:
    """Istio-shaped traces through a mesh of ``services`` services in layers of 8, each service calling a
    fixed one to three services of the next layer (as real services have fixed dependencies); requests
    enter through the ingress gateway at a random first-layer service."""
    rng = random.Random(seed)
    names = [f"svc-{i:02d}" for i in range(services)]
    layers = [names[i : i + 8] for i in range(0, services, 8)]
    calls = {
        name: rng.sample(layers[d + 1], min(len(layers[d + 1]), rng.choice((1, 2, 2, 3))))
        for d in range(len(layers) - 1)
        for name in layers[d]
    }
    start = time.time_ns() - 10 * 60 * S
    out = []
    for n in range(traces):
        b = TraceBuilder(rng, start + n * S)
        t0 = b.start_ns
        attrs = {"http.status_code": "200", "response_flags": "-"}
        root = b._span(GATEWAY, "latest", Span.SPAN_KIND_SERVER, "ingress", None, t0, 50 * MS, attrs)
        todo = [(GATEWAY, "latest", root, rng.choice(layers[0]), t0 + MS, 45 * MS)]
        while todo:
            caller, version, parent, callee, begin, budget = todo.pop()
            status = 503 if rng.random() < 0.01 else 200
            server = b.hop(caller, version, parent, callee, "v1", "/", begin, budget, status_code=status)
            if server is None:
                continue
            for callee_next in calls.get(callee, []):
                if rng.random() < 0.7:
                    todo.append((f"{callee}.{NAMESPACE}", "v1", server, callee_next, begin + MS, budget // 2))
        out.append(b.trace)
    return out


def fill(
    server: ServerProcess,
    token: str | None,
    *,
    seed: int = 3,
    count: int = 200,
    large: int = 0,
    wait: Callable[[Callable[[], bool]], Any] | None = None,
) -> Demo:
    """Send ``count`` Bookinfo traces from the last 10 minutes (plus a failing, an unreached, a slow one,
    and optionally one trace of ``large`` spans); wait until the service graph counted them."""
    start = time.time_ns() - 10 * 60 * S
    demo = Demo(list(traffic(seed, start, count, interval_ns=2 * S)))
    rng = random.Random(seed + 1)
    demo.failing = bookinfo_trace(rng, start + S, reviews_version="v2", ratings_status=503)
    demo.unreached = bookinfo_trace(rng, start + 3 * S, reviews_version="v1", details_failure=True)
    demo.fast = bookinfo_trace(rng, start + 5 * S, reviews_version="v1", scale=0.5)
    demo.slow = bookinfo_trace(rng, start + 7 * S, reviews_version="v3", scale=4)
    demo.traces += [demo.failing, demo.unreached, demo.fast, demo.slow]
    for i in range(0, len(demo.traces), 100):
        post(server, export_request(demo.traces[i : i + 100]), token)
    if large:
        demo.large_id, request = large_trace(large)
        post(server, request, token)
    headers = {"Authentication": token} if token else {}
    expected = sum(len(t.spans) for t in demo.traces) + large

    def settled() -> bool:
        graph = httpx.get(f"{server.http}/meshtrace/v1/servicegraph", headers=headers, timeout=30).json()
        stats = httpx.get(f"{server.http}/meshtrace/v1/stats", headers=headers, timeout=30).json()
        roots = sum(e["calls"] for e in graph["edges"] if e["source"] == "user")
        return stats["spans"] == expected and roots >= len(demo.traces)

    if wait is not None:
        wait(settled)
    else:
        deadline = time.monotonic() + 90
        while not settled():
            if time.monotonic() > deadline:
                raise TimeoutError("the backend did not count the demo traffic within 90 s")
            time.sleep(0.5)
    return demo
