"""Runs the pods' containers as processes: the sidecar first (applications start once it is ready, as
with Istio's native sidecars), restarts with back-off when a container exits, per-container logs, and a
clean stop (SIGTERM to the container's own process group, SIGKILL after the grace period).

Only processes this supervisor started are ever signalled, each through the process group it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable

import httpx

from meshtrace.mesh.pods import Container, Pod

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the child after fork only calls it
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_mesh() -> Callable[[], None] | None:
    """A ``preexec_fn`` for the mesh's children: SIGTERM when the mesh process dies, however it dies
    (kill -9 included), so that no pod outlives it. ``None`` where the kernel cannot do it."""
    if _prctl is None:
        return None
    parent = os.getpid()

    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the mesh died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


log = logging.getLogger("meshtrace.mesh")

GRACE_PERIOD = 5.0
MAX_BACKOFF = 30.0
PROXY_START_TIMEOUT = 20.0
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR", "SSL_CERT_FILE")


class Supervisor:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.procs: dict[tuple[str, str, str], asyncio.subprocess.Process] = {}
        self.stopping = False
        self._http = httpx.AsyncClient(timeout=1.0, trust_env=False)

    def sync(self, pods: list[Pod]) -> None:
        """Start a task for every new pod; a pod marked ``deleting`` is stopped by its task."""
        for pod in pods:
            if pod.key not in self.tasks and not self.stopping:
                self.tasks[pod.key] = asyncio.create_task(self._run_pod(pod), name=f"pod {pod.namespace}/{pod.name}")

    async def _run_pod(self, pod: Pod) -> None:
        proxy = [c for c in pod.containers if c.is_proxy and not pod.router]
        apps = [c for c in pod.containers if c not in proxy]
        loops = []
        try:
            for container in proxy:
                loops.append(asyncio.create_task(self._container_loop(pod, container)))
                await self._wait_ready(pod, container, PROXY_START_TIMEOUT)
            for container in apps:
                loops.append(asyncio.create_task(self._container_loop(pod, container)))
            pod.phase = "Running"
            while not pod.deleting and not self.stopping:
                changed = await self._probe(pod)
                if changed:
                    self.on_change()
                await asyncio.sleep(0.2 if not pod.ready else 1.0)
        finally:
            # Applications first, then the sidecar (it drains what they still send).
            for container in apps:
                await self._stop(pod, container)
            for container in proxy:
                await self._stop(pod, container)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            self.tasks.pop(pod.key, None)
            if pod.deleting:
                self.on_change()

    async def _wait_ready(self, pod: Pod, container: Container, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not pod.deleting and not self.stopping:
            await self._probe(pod)
            if container.ready:
                return
            await asyncio.sleep(0.1)

    async def _probe(self, pod: Pod) -> bool:
        """Readiness: the proxy's admin ``/ready``; an application accepting on one of its ports (the same
        moment Kubernetes would start sending it traffic, a readiness probe on its port)."""
        changed = False
        for container in pod.containers:
            ready = container.state == "Running" and await self._ready(pod, container)
            if ready != container.ready:
                container.ready = ready
                changed = True
        return changed

    async def _ready(self, pod: Pod, container: Container) -> bool:
        if container.is_proxy:
            try:
                response = await self._http.get(f"http://{pod.ip}:15000/ready")
            except httpx.HTTPError:
                return False
            return response.status_code == 200
        if not container.ports:
            return time.monotonic() - container.started_at > 0.5
        host = pod.local_ip if pod.injected else pod.ip
        for port in container.ports:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (TimeoutError, OSError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def _container_loop(self, pod: Pod, container: Container) -> None:
        if container.program is None:
            container.state = "Waiting"
            container.log.write_text(f"[meshtrace] {container.error}\n")
            log.warning("%s/%s %s: %s", pod.namespace, pod.name, container.name, container.error)
            return
        backoff = 1.0
        environment = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        environment.update(container.env)
        while not pod.deleting and not self.stopping:
            with open(container.log, "ab") as output:  # noqa: ASYNC230 - a local log file
                started = time.monotonic()
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *container.program.argv,
                        stdout=output,
                        stderr=asyncio.subprocess.STDOUT,
                        stdin=asyncio.subprocess.DEVNULL,
                        env=environment,
                        cwd=str(pod.directory),
                        start_new_session=True,
                        preexec_fn=die_with_mesh(),
                    )
                except OSError as exc:
                    output.write(f"[meshtrace] cannot start {container.program.argv[0]}: {exc}\n".encode())
                    container.reason = "CreateContainerError"
                    return
            self.procs[(pod.namespace, pod.name, container.name)] = proc
            container.pid = proc.pid
            container.state = "Running"
            container.reason = ""
            container.started_at = started
            self.on_change()
            code = await proc.wait()
            self.procs.pop((pod.namespace, pod.name, container.name), None)
            container.pid = None
            container.ready = False
            container.exit_code = code
            if pod.deleting or self.stopping:
                container.state = "Terminated"
                return
            ran = time.monotonic() - started
            backoff = min(backoff * 2, MAX_BACKOFF) if ran < 10 else 1.0
            container.restarts += 1
            container.state = "Waiting"
            container.reason = "CrashLoopBackOff" if ran < 10 else "Error"
            with open(container.log, "ab") as output:  # noqa: ASYNC230 - a local log file
                output.write(f"[meshtrace] container exited with code {code}; restarting in {backoff:.0f}s\n".encode())
            log.warning(
                "%s/%s %s exited with %s; restarting in %.0fs", pod.namespace, pod.name, container.name, code, backoff
            )
            self.on_change()
            await asyncio.sleep(backoff)

    async def _stop(self, pod: Pod, container: Container) -> None:
        proc = self.procs.get((pod.namespace, pod.name, container.name))
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group this supervisor created for the container
        try:
            await asyncio.wait_for(proc.wait(), GRACE_PERIOD)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        container.state = "Terminated"
        container.ready = False

    async def stop_all(self) -> None:
        self.stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()
