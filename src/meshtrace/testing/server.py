"""Run ``meshtrace serve`` and ``meshtrace collector`` as child processes on loopback ports (for tests and
benchmarks); each reports its bound addresses through a ready file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message carries its log."""


class ChildProcess:
    """A ``meshtrace`` child process this program started, signalled only by its own PID."""

    command = "serve"

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        """``args`` follow the defaults (a repeated flag's last value wins); ``env`` adds variables."""
        self.data_dir = Path(data_dir)
        self.args = args
        self.env = env or {}
        self.ready_file = self.data_dir / f"{self.command}-ready.json"
        self.log_path = self.data_dir / f"{self.command}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, Any] = {}
        self._clients: dict[str | None, httpx.Client] = {}

    def arguments(self) -> list[str]:
        return [*self.args, "--ready-file", str(self.ready_file)]

    def start(self, timeout: float = 60.0) -> ChildProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ChildProcess:
        """Start the process without waiting for it to be ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshtrace", self.command, *self.arguments()],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200", **self.env},
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 60.0) -> ChildProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise ServerStartError(f"meshtrace {self.command} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(f"meshtrace {self.command} not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        self.addresses = orjson.loads(self.ready_file.read_bytes())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait: the exit code of a clean stop is 0."""
        assert self.proc is not None
        self._close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._close_clients()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class ServerProcess(ChildProcess):
    """``meshtrace serve`` on random loopback ports, data in ``data_dir``."""

    command = "serve"

    def arguments(self) -> list[str]:
        return ["--data", str(self.data_dir), "--grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0",
                "--http", "127.0.0.1:0", *super().arguments()]  # fmt: skip

    @property
    def grpc(self) -> str:
        return self.addresses["grpc"]

    @property
    def otlp_http(self) -> str:
        return f"http://{self.addresses['otlp_http']}"

    @property
    def http(self) -> str:
        return f"http://{self.addresses['http']}"

    def api(self, token: str | None = None) -> httpx.Client:
        """A query API client sending ``token`` (kept until the server stops)."""
        client = self._clients.get(token)
        if client is None or client.base_url != httpx.URL(self.http):
            headers = {"Authentication": token} if token else {}
            client = self._clients[token] = httpx.Client(base_url=self.http, headers=headers, timeout=60)
        return client


class CollectorProcess(ChildProcess):
    """``meshtrace collector`` with the given ``--config``/``--set`` arguments."""

    command = "collector"

    def receiver(self, component_id: str = "otlp", protocol: str = "grpc") -> str:
        return str(self.addresses[component_id][protocol])
