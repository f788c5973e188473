"""``meshtrace up``'s process: the mesh (API server, controllers, istiod, supervisor), the node proxy that
stands in for cluster DNS, the managed tracing backend, and the control API the other ``meshtrace``
commands talk to (on loopback; its address is in ``<mesh dir>/mesh.json``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from meshtrace.listen import free_port
from meshtrace.mesh.cluster import Cluster
from meshtrace.mesh.controlplane import ControlPlane
from meshtrace.mesh.proxy.config import Node, ProxyConfig
from meshtrace.mesh.proxy.http1 import Downstream, Pool
from meshtrace.mesh.proxy.listeners import Holder, OutboundListener, State
from meshtrace.mesh.proxy.tracer import SideTracer
from meshtrace.mesh.supervisor import Supervisor, die_with_mesh

log = logging.getLogger("meshtrace.mesh")
STATE_FILE = "mesh.json"


def default_mesh_dir() -> Path:
    env = os.environ.get("MESHTRACE_MESH_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "meshtrace" / "mesh"


@dataclass(slots=True)
class Backend:
    """Where the mesh's collector sends spans, and where people look at them."""

    grpc: str
    otlp_http: str
    console: str
    token: str
    pid: int | None = None  # when the mesh started it


@dataclass(slots=True)
class Options:
    mesh_dir: Path
    gateway_port: int = 8080
    backend: Backend | None = None  # an existing backend; None: start ``meshtrace serve``
    backend_ports: tuple[int, int, int] = (4317, 4318, 16686)
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)


class Mesh:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.dir = options.mesh_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        block = 10 + 2 * random.randrange(0, 115)  # noqa: S311 - an address block, not a secret
        self.cluster = Cluster(self.dir, block)
        self.gateway_url = f"127.0.0.1:{free_port('127.0.0.1', options.gateway_port)}"
        self.control = ControlPlane(self.cluster, [self.gateway_url])
        self.supervisor = Supervisor(self.changed)
        self.node_proxies: dict[str, tuple[str, Holder, asyncio.AbstractServer]] = {}
        self._node_ips = iter(range(1, 250))
        self.backend: Backend | None = options.backend
        self._backend_proc: asyncio.subprocess.Process | None = None
        self._dirty = asyncio.Event()
        self.stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self.warnings_seen: set[str] = set()
        self.events: list[str] = []
        self.cluster.node_proxy_for = self._node_proxy_url
        self.cluster.on_change = self.changed

    # -- change propagation -------------------------------------------------------------------

    def changed(self) -> None:
        self._dirty.set()

    async def _pusher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.02)  # coalesce bursts of changes
            self._dirty.clear()
            self.cluster.reconcile_quiet()
            for pod in [p for p in self.cluster.pods.values() if p.deleting and p.key not in self.supervisor.tasks]:
                self.cluster.remove_pod(pod)
                self.control.forget(pod)
            diagnostics = self.control.push()
            await self._update_node_proxies()
            self.supervisor.sync(list(self.cluster.pods.values()))
            for warning in diagnostics.warnings:
                if warning not in self.warnings_seen:
                    self.warnings_seen.add(warning)
                    log.warning("%s", warning)

    # -- node proxy (cluster DNS for pods without a sidecar) -----------------------------------

    def _node_proxy_url(self, namespace: str) -> str:
        address = self.node_proxies.get(namespace)
        if address is None:
            ip = f"127.{self.cluster.block}.255.{next(self._node_ips)}"
            self.node_proxies[namespace] = (ip, None, None)  # type: ignore[assignment]
            return f"http://{ip}:15001"
        return f"http://{address[0]}:15001"

    async def _update_node_proxies(self) -> None:
        for namespace, (ip, holder, server) in list(self.node_proxies.items()):
            data = self.control.node_configs.get(namespace, {"clusters": [], "hosts": {}})
            node = Node(
                id=f"node~{ip}",
                kind="node",
                pod="node-proxy",
                namespace=namespace,
                pod_ip=ip,
                service_cluster="node-proxy",
                canonical_service="",
                canonical_revision="",
            )
            config = ProxyConfig.from_json({"version": 0, "node": _node_json(node), **data})
            state = State(config, SideTracer(None, node, None), SideTracer(None, node, None))
            if holder is None:
                holder = Holder(state)
                loop = asyncio.get_running_loop()
                pool = Pool(None)
                server = await loop.create_server(
                    lambda h=holder, p=pool: Downstream(OutboundListener(h, traced=False), p), ip, 15001
                )
                self.node_proxies[namespace] = (ip, holder, server)
            else:
                holder.state = state

    # -- backend ------------------------------------------------------------------------------

    async def _start_backend(self) -> None:
        if self.backend is not None:
            return
        token = secrets.token_urlsafe(18)
        data = self.dir / "backend"
        ready = data / "ready.json"
        data.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        grpc, otlp_http, http = (free_port("127.0.0.1", p) for p in self.options.backend_ports)
        argv = [
            sys.executable,
            "-m",
            "meshtrace",
            "serve",
            "--data",
            str(data),
            "--grpc",
            f"127.0.0.1:{grpc}",
            "--otlp-http",
            f"127.0.0.1:{otlp_http}",
            "--http",
            f"127.0.0.1:{http}",
            "--token",
            f"default={token}",
            "--ready-file",
            str(ready),
        ]
        output = open(self.dir / "backend.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        self._backend_proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_mesh(),
        )
        output.close()
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self._backend_proc.returncode is not None:
                raise RuntimeError(
                    f"meshtrace serve exited with {self._backend_proc.returncode}; see {self.dir / 'backend.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"meshtrace serve not ready after 120 s; see {self.dir / 'backend.log'}")
            await asyncio.sleep(0.1)
        info = orjson.loads(ready.read_bytes())
        self.backend = Backend(info["grpc"], info["otlp_http"], f"http://{info['http']}", token, self._backend_proc.pid)

    async def _stop_backend(self) -> None:
        proc = self._backend_proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, api_port: int = 0) -> dict[str, Any]:
        from meshtrace.listen import bind, parse_address, serve_http
        from meshtrace.mesh.api import control_app

        await self._start_backend()
        assert self.backend is not None
        self.cluster.placeholders = {"<gRPC-Endpoint>": self.backend.grpc, "<gRPC-Token>": self.backend.token}
        self._pusher_task = asyncio.create_task(self._pusher())
        sock = bind(parse_address(f"127.0.0.1:{api_port}"), "mesh control API")
        self._api = await serve_http(control_app(self), sock)
        info = self.info()
        path = self.dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
        self.changed()
        return info

    def info(self) -> dict[str, Any]:
        assert self.backend is not None
        return {
            "pid": os.getpid(),
            "api": f"http://{self._api.address}" if hasattr(self, "_api") else "",
            "gateway_url": self.gateway_url,
            "console": self.backend.console,
            "backend_grpc": self.backend.grpc,
            "backend_otlp_http": self.backend.otlp_http,
            "token": self.backend.token,
            "mesh_dir": str(self.dir),
            "backend_pid": self.backend.pid,
        }

    def request_stop(self) -> None:
        if not self._stop_requested.is_set():
            self._stop_requested.set()

    async def wait_stop_request(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        log.info("stopping the mesh")
        await self.supervisor.stop_all()
        log.debug("pods stopped")
        for _, _, server in self.node_proxies.values():
            if server is not None:
                server.close()
        await self._stop_backend()
        log.debug("backend stopped")
        if hasattr(self, "_pusher_task"):
            self._pusher_task.cancel()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / STATE_FILE).unlink()
        self.stopped.set()
        if hasattr(self, "_api"):
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(self._api.stop()))

    # -- waiting ------------------------------------------------------------------------------

    async def settled(self, within: float) -> tuple[bool, list[str]]:
        """Every pod ready and every proxy running its latest configuration; else what is not."""
        deadline = time.monotonic() + within
        pending: list[str] = []
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if self._dirty.is_set():
                continue
            pending = [
                f"{p.namespace}/{p.name}: {p.status}"
                for p in self.cluster.pods.values()
                if not p.ready and not p.deleting
            ]
            pending += [f"{p.namespace}/{p.name}: terminating" for p in self.cluster.pods.values() if p.deleting]
            if pending:
                continue
            pending = await self._unsynced()
            if not pending:
                return True, []
        return False, pending

    async def _unsynced(self) -> list[str]:
        out = []
        for pod in self.cluster.pods.values():
            if pod.proxy is None:
                continue
            wanted = self.control.written_version(pod)
            try:
                response = await self.supervisor._http.get(f"http://{pod.ip}:15000/ready")
                running = response.json().get("version")
            except Exception:
                running = None
            if running != wanted:
                out.append(f"{pod.namespace}/{pod.name}: proxy configuration {running} of {wanted}")
        return out


def _node_json(node: Node) -> dict[str, Any]:
    return {k: getattr(node, k) for k in Node.__slots__}
