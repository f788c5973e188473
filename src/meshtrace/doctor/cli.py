"""``meshtrace doctor``: the command."""

from __future__ import annotations

import json
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
        as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
        verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Also list the checks that passed.")] = False,
    ) -> None:
        """Find why traces do not show up: the guide's FAQ and the causes behind it, checked.

        Reads Istio's mesh config (IstioOperator or the istio ConfigMap), Telemetry resources, the Collector's
        ConfigMap, Deployment and Service, and pods from a cluster dump. One line per finding (ok / warn /
        fail); for each problem the file and path (or the object), why it stops traces, and the YAML to change.

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
        if not files:
            err.print("[red]Error:[/] nothing to check: give files with -f (see meshtrace doctor --help)")
            raise typer.Exit(EXIT_USAGE)
        try:
            report = diagnose_files(files, placeholders)
        except ConfigError as exc:
            err.print(f"[red]Error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        if as_json:
            typer.echo(json.dumps(report.as_json(), indent=2))
        else:
            show(report, Console(highlight=False), verbose=verbose)
        raise typer.Exit(EXIT_PROBLEMS if report.failed else 0)
