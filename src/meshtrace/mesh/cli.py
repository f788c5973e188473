"""``meshtrace up|down|apply|delete|create|get|logs|label|rollout|traffic``: the local mesh, driven like
``kubectl`` and ``istioctl``.

Exit codes: 0 success; 1 the mesh refused (invalid YAML, not found, not ready in time); 2 usage errors;
3 no mesh is running (start one with ``meshtrace up``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True, highlight=False)
# Tables keep whole names when the output goes to a pipe or a file.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
EXIT_FAILED = 1
EXIT_NO_MESH = 3

MeshDir = Annotated[
    Path | None,
    typer.Option("--mesh-dir", help="The mesh's state directory.", envvar="MESHTRACE_MESH_DIR", show_default=False),
]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")]
Files = Annotated[list[str], typer.Option("--filename", "-f", help="YAML file or directory (repeatable; - for stdin).")]


def _dir(mesh_dir: Path | None) -> Path:
    from meshtrace.mesh.daemon import default_mesh_dir

    return mesh_dir or default_mesh_dir()


def _client(mesh_dir: Path | None) -> Any:
    from meshtrace.mesh.client import MeshClient, MeshNotRunning

    try:
        return MeshClient(_dir(mesh_dir))
    except MeshNotRunning as exc:
        console.print(f"[red]Error:[/] {exc}")
        raise typer.Exit(EXIT_NO_MESH) from None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from meshtrace.mesh.client import MeshNotRunning, MeshRequestError

    try:
        return fn(*args, **kwargs)
    except MeshRequestError as exc:
        console.print(f"[red]Error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except MeshNotRunning as exc:
        console.print(f"[red]Error:[/] {exc}")
        raise typer.Exit(EXIT_NO_MESH) from None


def load_objects(files: list[str], namespace: str | None, selector: str | None) -> list[dict[str, Any]]:
    """Parse and validate files locally (errors name the file); skipped kinds are reported."""
    from meshtrace.errors import ConfigError
    from meshtrace.mesh.resources import load_files, parse

    objects = []
    try:
        for name, text in load_files(files):
            loaded = parse(name, text, namespace, selector)
            for note in loaded.skipped:
                console.print(f"[yellow]Warning:[/] {note}: skipped")
            for obj in loaded.objects:
                source = obj.source
                objects.append(
                    {
                        "body": obj.body,
                        "file": source.file if source else "",
                        "document": source.document if source else 0,
                    }
                )
    except ConfigError as exc:
        console.print(f"[red]Error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    return objects


def _report(result: dict[str, Any], wait: bool) -> None:
    for line in result.get("results", []):
        out.print(line)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]Warning:[/] {warning}")
    if wait and not result.get("settled", True):
        console.print("[red]Not ready in time:[/]\n  " + "\n  ".join(result.get("pending", [])))
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    from meshtrace.mesh import cli_get, cli_up

    cli_up.register(app)
    cli_get.register(app)

    @app.command(rich_help_panel="Local mesh")
    def apply(
        filename: Files,
        namespace: Namespace = None,
        selector: Annotated[
            str | None, typer.Option("--selector", "-l", help="Only objects with these labels.")
        ] = None,
        wait: Annotated[bool, typer.Option(help="Wait until pods are ready and proxies run the new config.")] = True,
        timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Apply Kubernetes and Istio YAML to the running mesh (like kubectl apply / istioctl install).

        Understood: Namespace, Service, ServiceAccount, ConfigMap, Secret, Deployment, IstioOperator,
        Telemetry, Gateway, VirtualService. Other kinds are listed and skipped. A changed Telemetry takes
        effect at once; a changed ProxyConfig (meshConfig.defaultConfig) only for pods created after it.
        """
        objects = load_objects(filename, namespace, selector)
        client = _client(mesh_dir)
        result = _call(client.post, "/apply", {"objects": objects, "wait": timeout if wait else 0})
        _report(result, wait)

    @app.command(rich_help_panel="Local mesh")
    def delete(
        filename: Files,
        namespace: Namespace = None,
        wait: Annotated[bool, typer.Option(help="Wait until the change has settled.")] = True,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Delete the objects described in files."""
        objects = load_objects(filename, namespace, None)
        client = _client(mesh_dir)
        _report(_call(client.post, "/delete", {"objects": objects, "wait": 60 if wait else 0}), wait)

    @app.command(rich_help_panel="Local mesh")
    def create(
        kind: Annotated[str, typer.Argument(help="namespace")],
        name: Annotated[str, typer.Argument(help="Its name.")],
        mesh_dir: MeshDir = None,
    ) -> None:
        """Create a namespace: meshtrace create namespace observability."""
        if kind not in ("namespace", "ns"):
            console.print("[red]Error:[/] only `create namespace NAME` is supported; use `apply -f` for the rest")
            raise typer.Exit(2)
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        result = _call(_client(mesh_dir).post, "/apply", {"objects": [{"body": body}], "wait": 0})
        _report({"results": [f"namespace/{name} " + result["results"][0].rsplit(" ", 1)[-1]]}, False)

    @app.command(rich_help_panel="Local mesh")
    def label(
        kind: Annotated[str, typer.Argument(help="namespace, telemetry, ...")],
        name: Annotated[str, typer.Argument()],
        labels: Annotated[list[str], typer.Argument(help="key=value to set, key- to remove.")],
        namespace: Namespace = None,
        overwrite: Annotated[bool, typer.Option(help="Accepted for kubectl compatibility.")] = False,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Label an object, e.g. meshtrace label namespace default istio-injection=enabled.

        Sidecar injection follows the label only for pods created afterwards; restart a deployment to
        give its running pods a sidecar (meshtrace rollout restart deployment/NAME).
        """
        kinds = {
            "namespace": "Namespace",
            "ns": "Namespace",
            "telemetry": "Telemetry",
            "deployment": "Deployment",
            "service": "Service",
            "svc": "Service",
            "configmap": "ConfigMap",
            "cm": "ConfigMap",
        }
        if kind.lower() not in kinds:
            console.print(f"[red]Error:[/] cannot label {kind!r}; use one of {', '.join(sorted(kinds))}")
            raise typer.Exit(2)
        changes: dict[str, str | None] = {}
        for item in labels:
            if item.endswith("-") and "=" not in item:
                changes[item[:-1]] = None
            elif "=" in item:
                key, value = item.split("=", 1)
                changes[key] = value
            else:
                console.print(f"[red]Error:[/] {item!r} is not key=value or key-")
                raise typer.Exit(2)
        real = kinds[kind.lower()]
        ns = "" if real == "Namespace" else (namespace or "default")
        result = _call(
            _client(mesh_dir).post, "/label", {"kind": real, "namespace": ns, "name": name, "labels": changes}
        )
        _report(result, False)

    rollout = typer.Typer(help="Restart deployments and watch them roll out.", no_args_is_help=True)
    app.add_typer(rollout, name="rollout", rich_help_panel="Local mesh")

    @rollout.command("restart")
    def rollout_restart(
        target: Annotated[str, typer.Argument(help="deployment/NAME")],
        namespace: Namespace = None,
        wait: Annotated[bool, typer.Option(help="Wait until the new pods are ready and the old ones gone.")] = True,
        timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
        mesh_dir: MeshDir = None,
    ) -> None:
        """New pods for a deployment: how running pods pick up a namespace label or a ProxyConfig change."""
        kind, _, name = target.partition("/")
        if kind not in ("deployment", "deploy", "deployments") or not name:
            console.print("[red]Error:[/] give deployment/NAME")
            raise typer.Exit(2)
        body = {"namespace": namespace or "default", "deployment": name, "wait": timeout if wait else 0}
        _report(_call(_client(mesh_dir).post, "/restart", body), wait)

    @rollout.command("status")
    def rollout_status(
        target: Annotated[str, typer.Argument(help="deployment/NAME")],
        namespace: Namespace = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Wait until the mesh has settled (every pod ready, every proxy on its latest configuration)."""
        result = _call(_client(mesh_dir).get, "/wait", timeout=timeout)
        if not result["settled"]:
            console.print("[red]Not ready in time:[/]\n  " + "\n  ".join(result["pending"]))
            raise typer.Exit(EXIT_FAILED)
        out.print(f"{target} successfully rolled out{f' in {namespace}' if namespace else ''}")

    @app.command(rich_help_panel="Local mesh")
    def logs(
        pod: Annotated[str, typer.Argument(help="Pod name (or a unique prefix, or deployment/NAME).")],
        container: Annotated[
            str | None, typer.Option("--container", "-c", help="Container (e.g. istio-proxy).")
        ] = None,
        namespace: Namespace = None,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Print a container's log."""
        client = _client(mesh_dir)
        path = f"/logs/{namespace or 'default'}/{pod}"
        params = {"container": container}
        if not follow:
            text = _call(client.get, path, **params)
            sys.stdout.write(text if isinstance(text, str) else json.dumps(text))
            return
        import httpx

        try:
            with client.http.stream("GET", path, params={**params, "follow": "true"}, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    client._check(response)
                for chunk in response.iter_bytes():
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
        except (KeyboardInterrupt, httpx.TransportError):
            return

    @app.command(rich_help_panel="Local mesh")
    def traffic(
        requests: Annotated[int, typer.Option("--requests", "-n", help="How many requests.")] = 10,
        rate: Annotated[
            float | None, typer.Option(help="Requests per second at most (default: as fast as possible).")
        ] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight at once.")] = 1,
        path: Annotated[str, typer.Option(help="Path on the gateway.")] = "/productpage",
        url: Annotated[str | None, typer.Option(help="Full URL instead of GATEWAY_URL + path.")] = None,
        mesh_dir: MeshDir = None,
    ) -> None:
        """Send requests through the ingress gateway (GATEWAY_URL), with a progress bar and a summary."""
        if url is None:
            from meshtrace.mesh.client import MeshNotRunning, read_state

            try:
                state = read_state(_dir(mesh_dir))
            except MeshNotRunning as exc:
                console.print(f"[red]Error:[/] {exc}")
                raise typer.Exit(EXIT_NO_MESH) from None
            url = f"http://{state['gateway_url']}{path}"
        summary = run_traffic(url, requests, rate, concurrency)
        if summary.failed:
            raise typer.Exit(EXIT_FAILED)


def run_traffic(url: str, requests: int, rate: float | None, concurrency: int) -> Any:
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from meshtrace.mesh.traffic import send

    with Progress(
        TextColumn("[bold]traffic[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("requests", total=requests)
        summary = asyncio.run(send(url, requests, rate, concurrency, lambda: progress.advance(task)))
    table = Table(title=f"GET {url}", title_justify="left", show_edge=False)
    table.add_column("status")
    table.add_column("requests", justify="right")
    for status, count in sorted(summary.statuses.items()):
        table.add_row(status, str(count))
    console.print(table)
    console.print(
        f"{summary.sent} requests in {summary.seconds:.2f}s ({summary.sent / max(summary.seconds, 1e-9):.1f}/s); "
        f"latency p50 {summary.percentile(0.5) * 1000:.1f} ms, p95 {summary.percentile(0.95) * 1000:.1f} ms, "
        f"p99 {summary.percentile(0.99) * 1000:.1f} ms"
    )
    time.sleep(0)
    return summary
