"""End-to-end tests run ``meshtrace serve`` as a real process on random loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

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


class ServerProcess:
    """One ``meshtrace serve`` process we started (and only ever signal by its PID)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = args
        self.ready_file = data_dir / "ready.json"
        self.log_path = data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, Any] = {}
        self._clients: dict[str | None, httpx.Client] = {}

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshtrace",
                "serve",
                "--data",
                str(self.data_dir),
                "--grpc",
                "127.0.0.1:0",
                "--otlp-http",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--ready-file",
                str(self.ready_file),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"meshtrace serve exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"meshtrace serve not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        self.addresses = orjson.loads(self.ready_file.read_bytes())
        return self

    @property
    def grpc(self) -> str:
        return self.addresses["grpc"]

    @property
    def otlp_http(self) -> str:
        return f"http://{self.addresses['otlp_http']}"

    @property
    def http(self) -> str:
        return f"http://{self.addresses['http']}"

    def api(self, token: str | None = TOKENS["acme"]) -> httpx.Client:
        """A query API client sending ``token`` (kept until the server stops)."""
        client = self._clients.get(token)
        if client is None or client.base_url != httpx.URL(self.http):
            headers = {"Authentication": token} if token else {}
            client = self._clients[token] = httpx.Client(base_url=self.http, headers=headers, timeout=30)
        return client

    def _close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self._close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self._close_clients()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def token_args() -> list[str]:
    return [arg for tenant, token in TOKENS.items() for arg in ("--token", f"{tenant}={token}")]


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers inside a test; every one still running at the end is killed (by its PID)."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, *args: str) -> ServerProcess:
        proc = ServerProcess(data_dir, *args)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("server"), *token_args(), "--flush-interval", "50ms").start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


def stored(server: ServerProcess, token: str = TOKENS["acme"]) -> tuple[int, int]:
    doc = server.api(token).get("/meshtrace/v1/stats").raise_for_status().json()
    return doc["spans"], doc["traces"]


def jaeger_trace(server: ServerProcess, trace_id: str, token: str = TOKENS["acme"], spans: int = 1) -> dict[str, Any]:
    """Poll the Jaeger API until the trace has at least ``spans`` spans."""

    def fetch() -> dict[str, Any] | None:
        response = server.api(token).get(f"/api/traces/{trace_id}")
        if response.status_code == 200 and len(response.json()["data"][0]["spans"]) >= spans:
            return response.json()["data"][0]
        return None

    return wait_until(fetch)
