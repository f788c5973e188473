"""A user's own program in the mesh (the ``meshtrace.io/command`` annotation, as the README shows it), and a
container that keeps crashing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshtrace.testing.mesh import MeshProcess
from meshtrace.testing.server import ServerStartError
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.slow

HELLO = f"""
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector: {{app: hello}}
  ports:
  - {{name: http, port: 9080}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello-v1
spec:
  replicas: 1
  selector:
    matchLabels: {{app: hello, version: v1}}
  template:
    metadata:
      labels: {{app: hello, version: v1}}
      annotations:
        meshtrace.io/command: "{sys.executable} -m http.server 9080 --bind $(MESHTRACE_LISTEN_HOST)"
    spec:
      containers:
      - name: hello
        image: example.com/hello:1.0
        ports:
        - containerPort: 9080
"""

CRASHER = f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: crasher
spec:
  selector:
    matchLabels: {{app: crasher}}
  template:
    metadata:
      labels: {{app: crasher}}
      annotations:
        meshtrace.io/command: "{sys.executable} -c 'import sys; print(\\"starting\\"); sys.exit(3)'"
    spec:
      containers:
      - name: crasher
        image: example.com/crasher:1.0
"""


def pod(mesh: MeshProcess, prefix: str) -> dict[str, Any]:
    return next(p for p in mesh.pods("default") if p["name"].startswith(prefix))


def test_an_annotated_program_is_traced_and_a_crashing_one_backs_off(tmp_path):
    mesh = MeshProcess(tmp_path, "--requests", "0")
    try:
        mesh.start(timeout=240)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        (tmp_path / "hello.yaml").write_text(HELLO)
        mesh.cli("apply", "-f", str(tmp_path / "hello.yaml"))
        hello = pod(mesh, "hello-v1-")
        assert hello["ready"] == "2/2"
        assert hello["containers"] == ["hello", "istio-proxy"]

        # What productpage's app would do: call the service by name through its own sidecar.
        productpage = pod(mesh, "productpage-v1-")
        with httpx.Client(proxy=f"http://{productpage['ip']}:15001", trust_env=False, timeout=10) as client:
            response = client.get("http://hello:9080/")
        assert response.status_code == 200
        assert "Directory listing" in response.text
        assert "x-envoy-upstream-service-time" in response.headers  # it went through the sidecars

        info = mesh.addresses
        console = httpx.Client(base_url=info["console"], headers={"Authentication": info["token"]}, trust_env=False)

        def traced() -> dict[str, Any] | None:
            data = console.get("/api/traces", params={"service": "hello.default", "limit": "5"}).json()["data"]
            return next((t for t in data if len(t["spans"]) == 2), None)

        with console:
            trace = wait_until(traced, timeout=30, interval=0.5)
        services = {trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]}
        assert services == {"productpage.default", "hello.default"}
        names = {s["operationName"] for s in trace["spans"]}
        assert names == {"hello.default.svc.cluster.local:9080/*"}

        (tmp_path / "crasher.yaml").write_text(CRASHER)
        mesh.cli("apply", "-f", str(tmp_path / "crasher.yaml"), "--no-wait")

        def backing_off() -> dict[str, Any] | None:
            found = pod(mesh, "crasher-")
            return found if found["restarts"] >= 2 else None

        crasher = wait_until(backing_off, timeout=30, interval=0.5)
        assert crasher["status"] == "CrashLoopBackOff"
        listing = mesh.cli("get", "pods").stdout
        assert "CrashLoopBackOff" in listing
        logs = mesh.cli("logs", crasher["name"], "-c", "crasher").stdout
        assert "starting" in logs
        assert "container exited with code 3" in logs

        # However the mesh process ends (kill -9 here), no pod and no backend outlives it.
        namespaces = ("default", "istio-system", "observability")
        pids = [c["pid"] for ns in namespaces for p in mesh.pods(ns) for c in p["details"] if c["pid"]]
        pids.append(mesh.status()["backend_pid"])
        mesh.kill()
        wait_until(lambda: not [pid for pid in pids if alive(pid)], timeout=30, interval=0.2)
    finally:
        mesh.kill()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
