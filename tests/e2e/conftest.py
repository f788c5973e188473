"""End-to-end tests run ``meshtrace serve`` as a real process on random loopback ports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshtrace.testing.bookinfo import BookinfoTrace, export_request
from meshtrace.testing.server import ServerProcess as BaseServerProcess
from meshtrace.testing.server import ServerStartError

TOKENS = {"acme": "tok-acme", "beta": "tok-beta"}


def wait_until(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {getattr(check, '__name__', check)}")
        time.sleep(interval)


class ServerProcess(BaseServerProcess):
    """The package's server process, failing the test (with the server's log) when it cannot start."""

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        try:
            super().wait_ready(timeout)
        except ServerStartError as exc:
            pytest.fail(str(exc))
        return self

    def api(self, token: str | None = TOKENS["acme"]) -> httpx.Client:
        return super().api(token)


def post_traces(server: ServerProcess, traces: list[BookinfoTrace], token: str = TOKENS["acme"]) -> None:
    """Send Bookinfo traces over OTLP/HTTP (protobuf); fails the test unless accepted."""
    response = httpx.post(
        f"{server.otlp_http}/v1/traces",
        content=export_request(traces).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", "Authentication": token},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def token_args() -> list[str]:
    return [arg for tenant, token in TOKENS.items() for arg in ("--token", f"{tenant}={token}")]


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers inside a test; every one still running at the end is killed (by its PID)."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir, *args, env=env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A backend for a module's mesh: tenants acme and beta, inserts every 50 ms."""
    proc = ServerProcess(tmp_path_factory.mktemp("backend"), *token_args(), "--flush-interval", "50ms").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("server"), *token_args(), "--flush-interval", "50ms").start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


def stored(server: ServerProcess, token: str = TOKENS["acme"]) -> tuple[int, int, int]:
    """(spans, traces, distinct spans) stored for the tenant of ``token``."""
    doc = server.api(token).get("/meshtrace/v1/stats").raise_for_status().json()
    return doc["spans"], doc["traces"], doc["distinctSpans"]


def jaeger_trace(server: ServerProcess, trace_id: str, token: str = TOKENS["acme"], spans: int = 1) -> dict[str, Any]:
    """Poll the Jaeger API until the trace has at least ``spans`` spans."""

    def fetch() -> dict[str, Any] | None:
        response = server.api(token).get(f"/api/traces/{trace_id}")
        if response.status_code == 200 and len(response.json()["data"][0]["spans"]) >= spans:
            return response.json()["data"][0]
        return None

    return wait_until(fetch)
