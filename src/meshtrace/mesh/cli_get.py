"""``meshtrace get``: pods (with their containers, istio-proxy included), services, telemetry, and any other
kind as YAML or JSON."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from meshtrace.mesh.cli import EXIT_FAILED, MeshDir, _call, _client, console, out

KINDS = {
    "pods": "Pod",
    "pod": "Pod",
    "po": "Pod",
    "services": "Service",
    "service": "Service",
    "svc": "Service",
    "telemetry": "Telemetry",
    "telemetries": "Telemetry",
    "deployments": "Deployment",
    "deployment": "Deployment",
    "deploy": "Deployment",
    "namespaces": "Namespace",
    "namespace": "Namespace",
    "ns": "Namespace",
    "configmaps": "ConfigMap",
    "configmap": "ConfigMap",
    "cm": "ConfigMap",
    "gateways": "Gateway",
    "gateway": "Gateway",
    "gw": "Gateway",
    "virtualservices": "VirtualService",
    "virtualservice": "VirtualService",
    "vs": "VirtualService",
    "istiooperator": "IstioOperator",
    "istiooperators": "IstioOperator",
    "serviceaccounts": "ServiceAccount",
    "sa": "ServiceAccount",
    "secrets": "Secret",
}
CLUSTER_SCOPED = ("Namespace", "IstioOperator")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    return f"{int(seconds // 3600)}h"


def register(app: typer.Typer) -> None:
    @app.command(rich_help_panel="Local mesh")
    def get(
        kind: Annotated[
            str, typer.Argument(help="pods, services, telemetry, deployments, namespaces, configmaps, gateways, ...")
        ],
        name: Annotated[str | None, typer.Argument(help="Only this object.")] = None,
        namespace: Annotated[
            str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
        ] = None,
        all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
        output: Annotated[str | None, typer.Option("--output", "-o", help="wide, yaml or json.")] = None,
        mesh_dir: MeshDir = None,
    ) -> None:
        """List objects of the running mesh, like kubectl get."""
        real = KINDS.get(kind.lower())
        if real is None:
            console.print(
                f"[red]Error:[/] unknown kind {kind!r}; try pods, services, telemetry, deployments, namespaces"
            )
            raise typer.Exit(2)
        client = _client(mesh_dir)
        ns = None if all_namespaces or real in CLUSTER_SCOPED else (namespace or "default")
        if real == "Pod":
            items = _call(client.get, "/pods", namespace=ns)
            if name:
                items = [p for p in items if p["name"] == name]
        else:
            items = _call(client.get, f"/objects/{real}", namespace=ns, name=name)
        if name and not items:
            console.print(f'[red]Error:[/] {kind} "{name}" not found')
            raise typer.Exit(EXIT_FAILED)
        if output in ("yaml", "json"):
            bodies = [_pod_body(p) if real == "Pod" else p["body"] for p in items]
            data: Any = bodies[0] if name else {"apiVersion": "v1", "kind": "List", "items": bodies}
            out.print(yaml.safe_dump(data, sort_keys=False) if output == "yaml" else json.dumps(data, indent=2), end="")
            return
        if not items:
            console.print(f"No resources found{f' in {ns} namespace' if ns else ''}.")
            return
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        wide = output == "wide"
        if real == "Pod":
            _pods(table, items, all_namespaces, wide)
        elif real == "Service":
            _services(table, items, all_namespaces)
        elif real == "Telemetry":
            _telemetry(table, items, all_namespaces, wide)
        else:
            _generic(table, items, all_namespaces or (real not in CLUSTER_SCOPED and ns is None))
        out.print(table)


def _pods(table: Table, items: list[dict[str, Any]], all_ns: bool, wide: bool) -> None:
    columns = (["NAMESPACE"] if all_ns else []) + ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "CONTAINERS"]
    columns += ["IP"] if wide else []
    for column in columns:
        table.add_column(column)
    for pod in items:
        row = ([pod["namespace"]] if all_ns else []) + [
            pod["name"],
            pod["ready"],
            pod["status"],
            str(pod["restarts"]),
            _age(pod["age"]),
            ",".join(pod["containers"]),
        ]
        table.add_row(*row, *([pod["ip"]] if wide else []))


def _services(table: Table, items: list[dict[str, Any]], all_ns: bool) -> None:
    for column in (["NAMESPACE"] if all_ns else []) + ["NAME", "TYPE", "PORT(S)", "SELECTOR"]:
        table.add_column(column)
    for item in items:
        spec = item["body"].get("spec") or {}
        ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
        selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
        table.add_row(
            *([item["namespace"]] if all_ns else []), item["name"], spec.get("type", "ClusterIP"), ports, selector
        )


def _telemetry(table: Table, items: list[dict[str, Any]], all_ns: bool, wide: bool) -> None:
    for column in (["NAMESPACE"] if all_ns else []) + ["NAME", "PROXIES", "STATUS"]:
        table.add_column(column)
    for item in items:
        applies = item.get("applies_to", [])
        shown = ", ".join(applies) if wide else str(len(applies))
        table.add_row(*([item["namespace"]] if all_ns else []), item["name"], shown, item.get("status", ""))


def _generic(table: Table, items: list[dict[str, Any]], with_ns: bool) -> None:
    for column in (["NAMESPACE"] if with_ns else []) + ["NAME", "STATUS"]:
        table.add_column(column)
    for item in items:
        table.add_row(*([item["namespace"]] if with_ns else []), item["name"], str(item.get("status", "")))


def _pod_body(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod["name"],
            "namespace": pod["namespace"],
            "labels": pod["labels"],
            "annotations": pod["annotations"],
        },
        "spec": {
            "containers": [{"name": c["name"], "image": c["image"], "command": c["command"]} for c in pod["details"]]
        },
        "status": {
            "phase": pod["status"],
            "podIP": pod["ip"],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": c["ready"],
                    "restartCount": c["restarts"],
                    "state": c["state"],
                    "reason": c["reason"],
                    "pid": c["pid"],
                    "log": c["log"],
                }
                for c in pod["details"]
            ],
        },
    }
