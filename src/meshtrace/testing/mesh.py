"""Run ``meshtrace up`` as a child process and drive it with the ``meshtrace`` CLI (for tests and
benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from meshtrace.testing.server import ChildProcess


class MeshProcess(ChildProcess):
    """``meshtrace up`` with a mesh directory of its own and a gateway on a free port."""

    command = "up"

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, *args, env=env)
        self.mesh_dir = Path(data_dir) / "mesh"

    def arguments(self) -> list[str]:
        return ["--mesh-dir", str(self.mesh_dir), "--gateway-port", "0", *super().arguments()]

    @property
    def gateway(self) -> str:
        return f"http://{self.addresses['gateway_url']}"

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``meshtrace ARGS`` against this mesh; output as text (stderr kept apart)."""
        env = {**os.environ, "MESHTRACE_MESH_DIR": str(self.mesh_dir), "COLUMNS": "250"}
        result = subprocess.run(
            [sys.executable, "-m", "meshtrace", *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"meshtrace {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        response = httpx.get(f"{self.addresses['api']}/pods", params={"namespace": namespace}, trust_env=False)
        return list(orjson.loads(response.content))

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.addresses['api']}/status", trust_env=False).json())
