"""``meshtrace schema``: see, check and apply the store's schema migrations.

``meshtrace serve`` applies pending migrations itself when it starts, except destructive ones; on a
cluster, run ``meshtrace schema migrate`` once (a Kubernetes Job, say) before rolling out new backends.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meshtrace.errors import ConfigError, InvalidQuery, MeshtraceError
from meshtrace.query.params import parse_duration_ns
from meshtrace.store import connect
from meshtrace.store.engine import Engine
from meshtrace.store.migrations import MIGRATIONS, migrate, status
from meshtrace.store.schema import Schema

schema_app = typer.Typer(
    name="schema",
    help="The store's schema: print its SQL, show which migrations a database has, apply them.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

StoreFlag = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="clickhouse://host:8123/db[?cluster=NAME[&replicated=false]]; unset: the embedded store in --data.",
        envvar="MESHTRACE_STORE",
    ),
]
DataFlag = Annotated[str, typer.Option(help="Directory of the embedded store.", envvar="MESHTRACE_DATA")]
RetentionFlag = Annotated[str, typer.Option(help="The tables' TTL (7d, 48h).", envvar="MESHTRACE_RETENTION")]


def _retention_s(text: str) -> int:
    try:
        return max(parse_duration_ns(text, name="retention") // 1_000_000_000, 3600)
    except InvalidQuery as exc:
        raise ConfigError(str(exc), path="retention", fix="give a duration such as 7d, 48h or 30m") from None


def _open(store: str | None, data: str, retention: str) -> tuple[Engine, Schema]:
    return connect(store, data, _retention_s(retention))


def _fail(exc: MeshtraceError) -> typer.Exit:
    err.print(f"[red]error[/] {exc}", highlight=False)
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


@schema_app.command("sql")
def sql(
    cluster: Annotated[
        str | None, typer.Option(help="Lay the tables out for this ClickHouse cluster (as --store's cluster=).")
    ] = None,
    replicated: Annotated[
        bool, typer.Option(help="With --cluster: Replicated*MergeTree local tables and ON CLUSTER.")
    ] = True,
    database: Annotated[str, typer.Option(help="The database the tables go in.")] = "otel",
    retention: RetentionFlag = "7d",
) -> None:
    """Print every migration's statements, for review before a DBA applies them by hand."""
    try:
        schema = Schema(
            database=database,
            retention_s=_retention_s(retention),
            embedded=False,
            cluster=cluster,
            replicated=replicated,
        )
    except ConfigError as exc:
        raise _fail(exc) from None
    for migration in MIGRATIONS:
        typer.echo(f"-- migration {migration.version}: {migration.name}")
        for statement in migration.statements(schema):
            typer.echo(statement + ";\n")


@schema_app.command("status")
def show_status(store: StoreFlag = None, data: DataFlag = "./meshtrace-data", retention: RetentionFlag = "7d") -> None:
    """Which migrations the database has and which are pending. Exit code 0: up to date, 3: pending."""
    try:
        engine, schema = _open(store, data, retention)
        try:
            state = status(engine, schema)
        finally:
            engine.close()
    except MeshtraceError as exc:
        raise _fail(exc) from None
    table = Table("version", "migration", "state")
    for migration in MIGRATIONS:
        pending = migration in state.pending
        state_text = "[yellow]pending[/]" if pending else "[green]applied[/]"
        if pending and migration.destructive:
            state_text += " (destructive)"
        table.add_row(str(migration.version), migration.name, state_text)
    out.print(table)
    out.print(f"{schema.database}: version {state.current} of {state.latest}")
    if state.pending:
        raise typer.Exit(3)


@schema_app.command("migrate")
def run_migrate(
    store: StoreFlag = None,
    data: DataFlag = "./meshtrace-data",
    retention: RetentionFlag = "7d",
    allow_destructive: Annotated[
        bool, typer.Option(help="Also apply migrations that drop or rewrite data (back the database up first).")
    ] = False,
) -> None:
    """Apply pending migrations in order. Safe to run again, and from several places at once."""
    try:
        engine, schema = _open(store, data, retention)
        try:
            applied = migrate(
                engine,
                schema,
                allow_destructive=allow_destructive,
                on_step=lambda m: out.print(f"applying migration {m.version}: {m.name}"),
            )
            state = status(engine, schema)
        finally:
            engine.close()
    except MeshtraceError as exc:
        raise _fail(exc) from None
    out.print(f"{schema.database}: {len(applied)} applied, at version {state.current} of {state.latest}")


def register(app: typer.Typer) -> None:
    app.add_typer(schema_app)
