"""The other ``meshtrace`` commands' way to the running mesh: its control API, found through
``<mesh dir>/mesh.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson

from meshtrace.errors import MeshtraceError
from meshtrace.mesh.daemon import STATE_FILE


class MeshNotRunning(MeshtraceError):
    """No ``meshtrace up`` is running for this mesh directory."""


class MeshRequestError(MeshtraceError):
    """The mesh refused a request; ``str()`` carries its explanation and fix."""


def read_state(mesh_dir: Path) -> dict[str, Any]:
    path = mesh_dir / STATE_FILE
    try:
        state = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise MeshNotRunning(f"no mesh is running in {mesh_dir}: start one with `meshtrace up`") from None
    pid = int(state.get("pid", 0))
    if not process_alive(pid):
        raise MeshNotRunning(
            f"the mesh in {mesh_dir} is not running (process {pid} is gone): start one with `meshtrace up`"
        )
    return dict(state)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; an exited process its parent has not reaped yet (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


class MeshClient:
    def __init__(self, mesh_dir: Path, timeout: float = 300.0) -> None:
        self.state = read_state(mesh_dir)
        self.http = httpx.Client(base_url=self.state["api"], timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                raise MeshRequestError(response.text) from None
            text = body.get("text") or body.get("error", response.text)
            if body.get("fix") and "fix:" not in text:
                text += f"\n  fix: {body['fix']}"
            raise MeshRequestError(text)
        return (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text
        )

    def get(self, path: str, **params: Any) -> Any:
        try:
            return self._check(self.http.get(path, params={k: v for k, v in params.items() if v is not None}))
        except httpx.TransportError as exc:
            raise MeshNotRunning(f"cannot reach the mesh at {self.state['api']}: {exc}") from None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            return self._check(self.http.post(path, json=body))
        except httpx.TransportError as exc:
            raise MeshNotRunning(f"cannot reach the mesh at {self.state['api']}: {exc}") from None
