"""``meshtrace up`` with no files: the tutorial as built-in defaults, its own tracing backend, 10 requests;
``meshtrace down`` stops every process it started."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from meshtrace.testing.mesh import MeshProcess
from meshtrace.testing.server import ServerStartError
from tests.e2e.conftest import wait_until
from tests.e2e.mesh_helpers import FULL_TREE, GW, WITHOUT_RATINGS, shape

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_traces_the_whole_mesh_and_down_stops_everything(tmp_path):
    mesh = MeshProcess(tmp_path)
    try:
        mesh.start(timeout=240)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        info = mesh.addresses
        assert info["ready"] is True
        console = httpx.Client(base_url=info["console"], headers={"Authentication": info["token"]}, trust_env=False)

        def ten_traces() -> list[dict[str, Any]] | None:
            data = console.get("/api/traces", params={"service": GW, "limit": "50"}).json()["data"]
            complete = [t for t in data if len(t["spans"]) in (7, 9)]
            return complete if len(complete) == 10 and len(data) == 10 else None

        with console:
            traces = wait_until(ten_traces, timeout=30, interval=0.5)
        for trace in traces:
            assert shape(trace) == (FULL_TREE if len(trace["spans"]) == 9 else WITHOUT_RATINGS)
        pods = mesh.cli("get", "pods", "-A").stdout
        assert "istio-ingressgateway" in pods
        assert "opentelemetry-collector" in pods
        assert "productpage,istio-proxy" in pods
        namespaces = ("default", "istio-system", "observability")
        pids = [c["pid"] for ns in namespaces for p in mesh.pods(ns) for c in p["details"]]
        assert all(pids)
        assert len(pids) == 14
        result = mesh.cli("down")
        assert "mesh stopped" in result.stderr
        assert mesh.proc is not None
        assert mesh.proc.wait(60) == 0
        assert not [pid for pid in pids if alive(pid)]
        again = mesh.cli("down", check=False)
        assert again.returncode == 3
        assert "no mesh is running" in again.stderr
    finally:
        mesh.kill()
