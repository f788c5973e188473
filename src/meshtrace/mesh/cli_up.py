"""``meshtrace up`` and ``meshtrace down``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel

from meshtrace.mesh.cli import EXIT_FAILED, EXIT_NO_MESH, MeshDir, _dir, console, load_objects

log = logging.getLogger("meshtrace.mesh")


def builtin_manifests() -> list[str]:
    """The tutorial as files: Istio with an OpenTelemetry provider, the Collector, a mesh-wide Telemetry,
    the injection label, Bookinfo and its gateway."""
    folder = resources.files("meshtrace.mesh") / "manifests"
    return [str(folder / name) for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))]


def register(app: typer.Typer) -> None:
    @app.command(rich_help_panel="Local mesh")
    def up(
        filename: Annotated[
            list[str] | None,
            typer.Option(
                "--filename", "-f", help="YAML files or directories to apply, in order (default: the tutorial)."
            ),
        ] = None,
        gateway_port: Annotated[int, typer.Option(help="Local port of the ingress gateway (taken if free).")] = 8080,
        backend: Annotated[
            str | None, typer.Option(help="An existing backend's OTLP/gRPC host:port instead of starting one.")
        ] = None,
        token: Annotated[str | None, typer.Option(help="Its token (with --backend).")] = None,
        console_url: Annotated[str | None, typer.Option("--console", help="Its console URL (with --backend).")] = None,
        requests: Annotated[
            int, typer.Option(help="Requests to /productpage once ready (the tutorial sends 10).")
        ] = 10,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh to be ready.")] = 180.0,
        ready_file: Annotated[
            str | None, typer.Option(help="Write the mesh's addresses as JSON here once ready.")
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
        mesh_dir: MeshDir = None,
    ) -> None:
        """Run the local mesh: Kubernetes and Istio YAML on pods that are local processes.

        Without -f it runs the tutorial: Istio with an OpenTelemetry tracing provider, the OpenTelemetry
        Collector, a mesh-wide Telemetry, Bookinfo behind the ingress gateway, the tracing backend and its
        console, then 10 requests. With -f it applies your files instead (an IstioOperator among them
        configures Istio, as istioctl install does). Stop with Ctrl-C or `meshtrace down`.
        """
        from meshtrace.mesh.client import MeshNotRunning, read_state
        from meshtrace.mesh.daemon import Backend, Options

        directory = _dir(mesh_dir)
        try:
            state = read_state(directory)
        except MeshNotRunning:
            pass
        else:
            console.print(
                f"[red]Error:[/] a mesh is already running in {directory} (process {state['pid']}); "
                "stop it with `meshtrace down` or choose another --mesh-dir"
            )
            raise typer.Exit(EXIT_FAILED)
        files = filename or builtin_manifests()
        batches = [load_objects([f], None, None) for f in files]
        external = None
        if backend:
            if not token:
                console.print("[red]Error:[/] --backend needs --token")
                raise typer.Exit(2)
            external = Backend(backend, "", console_url or "", token)
        directory.mkdir(parents=True, exist_ok=True)
        _logging(log_level, directory / "mesh.log")
        options = Options(mesh_dir=directory, gateway_port=gateway_port, backend=external)
        code = _run(_main(options, list(zip(files, batches, strict=True)), requests, timeout, ready_file, not filename))
        raise typer.Exit(code)

    @app.command(rich_help_panel="Local mesh")
    def down(
        timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to stop.")] = 60.0,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Stop the running mesh: pods, collector, backend (its data stays in the mesh directory)."""
        import httpx

        from meshtrace.mesh.client import MeshNotRunning, process_alive, read_state

        directory = _dir(mesh_dir)
        try:
            state = read_state(directory)
        except MeshNotRunning as exc:
            console.print(f"[red]Error:[/] {exc}")
            raise typer.Exit(EXIT_NO_MESH) from None
        pid = int(state["pid"])
        try:
            httpx.post(f"{state['api']}/shutdown", timeout=10, trust_env=False)
        except httpx.HTTPError:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with console.status("stopping the mesh"):
            while time.monotonic() < deadline:
                if not process_alive(pid):
                    console.print("mesh stopped")
                    return
                time.sleep(0.1)
        console.print(f"[red]Error:[/] the mesh (process {pid}) did not stop within {timeout:.0f}s")
        raise typer.Exit(EXIT_FAILED)


def _logging(level: str, path: Path) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return int(runner(main))


async def _main(
    options: Any,
    batches: list[tuple[str, list[dict[str, Any]]]],
    requests: int,
    within: float,
    ready_file: str | None,
    builtin: bool,
) -> int:
    from meshtrace.errors import ConfigError
    from meshtrace.mesh.daemon import Mesh
    from meshtrace.mesh.resources import Obj, Source

    mesh = Mesh(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, mesh.request_stop)
    code = 0
    try:
        with console.status("starting the tracing backend" if options.backend is None else "starting"):
            info = await mesh.start()
        for file, objects in batches:
            objs = [Obj(o["body"], Source(o["file"], o["document"]) if o["file"] else None) for o in objects]
            try:
                applied = mesh.cluster.apply(objs)
            except ConfigError as exc:
                console.print(f"[red]Error:[/] {exc}")
                code = EXIT_FAILED
                break
            shown = Path(file).name if builtin else file
            for line in applied.results:
                console.print(f"{line}  [dim]({shown})[/]")
            for warning in applied.warnings:
                if "filled <" in warning:
                    console.print(f"[dim]{warning}[/]")
                else:
                    console.print(f"[yellow]Warning:[/] {warning}")
        if code == 0:
            with console.status("waiting for pods and proxies") as status:
                settled, pending = await _settle(mesh, within, status)
            if not settled:
                console.print("[red]The mesh is not ready:[/]\n  " + "\n  ".join(pending))
                console.print(
                    f"[dim]logs: meshtrace logs POD -c CONTAINER, or files under {options.mesh_dir / 'pods'}[/]"
                )
                code = EXIT_FAILED
        if code == 0:
            _announce(info, mesh)
            if requests:
                await _traffic(info, requests)
        if ready_file:
            tmp = ready_file + ".tmp"
            Path(tmp).write_text(  # noqa: ASYNC240 - a few bytes, once
                __import__("json").dumps({**mesh.info(), "ready": code == 0})
            )
            os.replace(tmp, ready_file)
        if code == 0:
            console.print("[dim]Running. Ctrl-C or `meshtrace down` stops the mesh.[/]")
            await mesh.wait_stop_request()
    finally:
        await mesh.stop()
    return code


async def _settle(mesh: Any, within: float, status: Any) -> tuple[bool, list[str]]:
    deadline = time.monotonic() + within
    pending: list[str] = []
    while time.monotonic() < deadline:
        settled, pending = await mesh.settled(min(2.0, max(0.1, deadline - time.monotonic())))
        if settled:
            return True, []
        ready = sum(p.ready for p in mesh.cluster.pods.values())
        status.update(f"waiting for pods and proxies: {ready}/{len(mesh.cluster.pods)} pods ready")
    return False, pending


def _announce(info: dict[str, Any], mesh: Any) -> None:
    lines = [
        f"GATEWAY_URL  [bold]{info['gateway_url']}[/]   (curl http://{info['gateway_url']}/productpage)",
        f"Console      [bold]{info['console']}[/]",
        f"Token        [bold]{info['token']}[/]   (header Authentication)",
        f"Backend      OTLP/gRPC {info['backend_grpc']}"
        + (f", OTLP/HTTP {info['backend_otlp_http']}" if info["backend_otlp_http"] else ""),
        f"Mesh         {len(mesh.cluster.pods)} pods; meshtrace get pods -A; state in {info['mesh_dir']}",
    ]
    console.print(Panel("\n".join(lines), title="meshtrace mesh is up", title_align="left", expand=False))
    for warning in mesh.control.diagnostics.warnings:
        console.print(f"[yellow]Warning:[/] {warning}")


async def _traffic(info: dict[str, Any], requests: int) -> None:
    from meshtrace.mesh.traffic import send

    url = f"http://{info['gateway_url']}/productpage"
    with console.status(f"sending {requests} requests to {url}") as status:
        done = [0]

        def advance() -> None:
            done[0] += 1
            status.update(f"sending requests to {url}: {done[0]}/{requests}")

        summary = await send(url, requests, None, 1, advance)
    codes = ", ".join(f"{n}× {s}" for s, n in sorted(summary.statuses.items()))
    console.print(f"sent {summary.sent} requests to {url}: {codes}")
