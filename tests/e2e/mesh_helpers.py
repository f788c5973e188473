"""Reading traces of the local mesh back from the backend, and Istio's expected Bookinfo trees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from meshtrace.testing.mesh import MeshProcess
from meshtrace.testing.server import ServerStartError
from tests.e2e.conftest import TOKENS, ServerProcess, wait_until
from tests.mesh.conftest import SEED


def tutorial_mesh(directory: Path, backend: ServerProcess) -> MeshProcess:
    """``meshtrace up`` with the seed's IstioOperator, tracing to ``backend`` (tenant acme), no requests."""
    proc = MeshProcess(
        directory,
        "-f",
        str(SEED / "istio-otel-config-tutorial.yaml"),
        "--backend",
        backend.grpc,
        "--token",
        TOKENS["acme"],
        "--console",
        backend.http,
        "--requests",
        "0",
    )
    try:
        proc.start(timeout=120)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    return proc


GW = "istio-ingressgateway.istio-system"
PRODUCTPAGE = "productpage.default.svc.cluster.local:9080"

# Istio >= 1.28 with the OpenTelemetry provider (the gateway spawns an upstream span).
FULL_TREE = [
    (0, GW, "server", f"{PRODUCTPAGE}/productpage"),
    (1, GW, "client", "router outbound|9080||productpage.default.svc.cluster.local; egress"),
    (2, "productpage.default", "server", f"{PRODUCTPAGE}/productpage"),
    (3, "productpage.default", "client", "details.default.svc.cluster.local:9080/*"),
    (4, "details.default", "server", "details.default.svc.cluster.local:9080/*"),
    (3, "productpage.default", "client", "reviews.default.svc.cluster.local:9080/*"),
    (4, "reviews.default", "server", "reviews.default.svc.cluster.local:9080/*"),
    (5, "reviews.default", "client", "ratings.default.svc.cluster.local:9080/*"),
    (6, "ratings.default", "server", "ratings.default.svc.cluster.local:9080/*"),
]
WITHOUT_RATINGS = FULL_TREE[:7]


def shifted(tree: list[tuple[int, str, str, str]], by: int) -> list[tuple[int, str, str, str]]:
    return [(depth - by, *rest) for depth, *rest in tree]


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def shape(trace: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """(depth, service, kind, name) in tree order, siblings by start time."""
    processes = trace["processes"]
    ids = {s["spanID"] for s in trace["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF" and r["spanID"] in ids]
        children.setdefault(parents[0] if parents else None, []).append(span)
    out: list[tuple[int, str, str, str]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            out.append(
                (depth, processes[span["processID"]]["serviceName"], tags(span)["span.kind"], span["operationName"])
            )
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return out


def traces_since(backend: ServerProcess, service: str, since: float, limit: int = 1000) -> list[dict[str, Any]]:
    params = {"service": service, "start": str(int(since * 1_000_000)), "limit": str(limit), "lookback": "1h"}
    return list(backend.api().get("/api/traces", params=params).raise_for_status().json()["data"])


def complete_traces(
    backend: ServerProcess, service: str, since: float, count: int, sizes: set[int], timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait for ``count`` traces whose span counts are all in ``sizes``."""

    def ready() -> list[dict[str, Any]] | None:
        found = traces_since(backend, service, since)
        if len(found) >= count and all(len(t["spans"]) in sizes for t in found):
            return found
        return None

    return wait_until(ready, timeout=timeout, interval=0.5)


def stored_traces(backend: ServerProcess) -> int:
    return int(backend.api().get("/meshtrace/v1/stats").raise_for_status().json()["traces"])


def settled_count(backend: ServerProcess, quiet: float = 2.5, at_least: float = 6.0) -> int:
    """The trace count once proxies have flushed (every 5 s) and nothing arrived for ``quiet`` s."""
    started = time.monotonic()
    last, last_change = stored_traces(backend), time.monotonic()
    while True:
        time.sleep(0.5)
        now = stored_traces(backend)
        if now != last:
            last, last_change = now, time.monotonic()
        if time.monotonic() - started >= at_least and time.monotonic() - last_change >= quiet:
            return now
