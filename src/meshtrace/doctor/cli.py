"""``meshtrace doctor``: the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from meshtrace.errors import ConfigError

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        files: Annotated[
            list[str] | None,
            typer.Option(
                "-f",
                "--file",
                help="A YAML file or directory (recursively) to check; FILE@NAMESPACE applies it to that namespace, "
                "as 'kubectl apply -n' would. Repeatable: give the IstioOperator (or the istio ConfigMap), the "
                "Telemetry, the Collector's manifests and, for pod checks, 'kubectl get ns,pods -A -o yaml' output.",
            ),
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                help="PLACEHOLDER=VALUE: what a placeholder in the files stands for, e.g. "
                "'<gRPC-Endpoint>=tracing.example.com:4317' (unfilled placeholders are failures).",
            ),
        ] = None,
        live: Annotated[
            bool,
            typer.Option(
                "--live",
                help="Also check the running `meshtrace up` mesh: Collector health and counts, the backend's "
                "token, probe requests through the gateway (x-client-trace-id) and whether every hop joined them.",
            ),
        ] = False,
        mesh_dir: Annotated[
            Path | None,
            typer.Option(help="The mesh's state directory (as for `meshtrace up`).", envvar="MESHTRACE_MESH_DIR"),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
        verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Also list the checks that passed.")] = False,
    ) -> None:
        """Find why traces do not show up: the guide's FAQ and the causes behind it, checked.

        Reads Istio's mesh config (IstioOperator or the istio ConfigMap), Telemetry resources, the Collector's
        ConfigMap, Deployment and Service, and pods from a cluster dump; with --live, also probes the running
        `meshtrace up` mesh. One line per finding (ok / warn / fail); for each problem the file and path (or
        the object), why it stops traces, and the YAML to change.

        Exit codes: 0 when nothing fails (warnings allowed), 1 when a check fails, 2 for unreadable input.
        """
        from meshtrace.doctor import diagnose_files
        from meshtrace.doctor.render import show

        err = Console(stderr=True)
        placeholders = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                err.print(f"[red]Error:[/] --set {item!r}: use PLACEHOLDER=VALUE")
                raise typer.Exit(EXIT_USAGE)
            placeholders[key] = value
        if not files and not live:
            err.print("[red]Error:[/] nothing to check: give files with -f, or --live (see meshtrace doctor --help)")
            raise typer.Exit(EXIT_USAGE)
        try:
            report = diagnose_files(files or [], placeholders)
        except ConfigError as exc:
            err.print(f"[red]Error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        if live:
            from meshtrace.doctor.live import check_live
            from meshtrace.mesh.daemon import default_mesh_dir

            with err.status("probing the mesh"):
                check_live(mesh_dir or default_mesh_dir(), report)
        if as_json:
            typer.echo(json.dumps(report.as_json(), indent=2))
        else:
            show(report, Console(highlight=False), verbose=verbose)
        raise typer.Exit(EXIT_PROBLEMS if report.failed else 0)
