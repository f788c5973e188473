"""The ``meshtrace`` command."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.panel import Panel
from rich.table import Table

from meshtrace import __version__
from meshtrace.config import ServeConfig, build_config, load_yaml, resolve_tokens
from meshtrace.errors import ConfigError, MeshtraceError

if TYPE_CHECKING:
    from meshtrace.server import Endpoints

app = typer.Typer(
    name="meshtrace",
    help="Trace an Istio service mesh with OpenTelemetry: a tracing backend, a Collector, a local mesh.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The ClickHouse client and its HTTP pool log every failed attempt; the store reports each failure
    # once, with what it means for the spans. (clickhouse_connect sets "urllib3" itself when imported.)
    for noisy in ("clickhouse_connect", "urllib3.connectionpool"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _announce(config: ServeConfig, generated_token: str | None) -> Callable[[Endpoints], None]:
    def announce(endpoints: Endpoints) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_row("OTLP/gRPC", f"{endpoints.grpc}  (TraceService/Export)")
        table.add_row("OTLP/HTTP", f"http://{endpoints.otlp_http}/v1/traces   Zipkin: /api/v2/spans")
        table.add_row("Query API", f"http://{endpoints.http}/api (Jaeger)   /meshtrace/v1   /docs")
        table.add_row("Metrics", f"http://{endpoints.http}/metrics   health: /healthz /readyz")
        if config.no_auth:
            table.add_row("Auth", "off (--no-auth): everything is tenant 'default'")
        elif generated_token:
            table.add_row("Token", f"[bold]{generated_token}[/]  (tenant 'default', kept in {config.data}/tokens.yaml)")
            table.add_row("", "send it as the 'Authentication' header, as the Collector's otlp exporter does")
        console.print(Panel(table, title=f"meshtrace {__version__} is ready", expand=False))

    return announce


@app.command()
def serve(
    ctx: typer.Context,
    grpc: Annotated[str, typer.Option(help="OTLP/gRPC listen address.", envvar="MESHTRACE_GRPC")] = "0.0.0.0:4317",
    otlp_http: Annotated[
        str,
        typer.Option("--otlp-http", help="OTLP/HTTP and Zipkin listen address.", envvar="MESHTRACE_OTLP_HTTP"),
    ] = "0.0.0.0:4318",
    http: Annotated[
        str, typer.Option(help="Query API, metrics and health listen address.", envvar="MESHTRACE_HTTP")
    ] = "0.0.0.0:16686",
    data: Annotated[
        str,
        typer.Option(help="Directory of the embedded store and the write-ahead log.", envvar="MESHTRACE_DATA"),
    ] = "./meshtrace-data",
    store: Annotated[
        str | None,
        typer.Option(
            help="A ClickHouse server instead of the embedded engine: clickhouse://host:8123/db.",
            envvar="MESHTRACE_STORE",
        ),
    ] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="TENANT=TOKEN, repeatable. Without any token, one is generated for tenant 'default'.",
            envvar="MESHTRACE_TOKEN",
        ),
    ] = None,
    tokens_file: Annotated[
        str | None,
        typer.Option(help="YAML file of tenant: token (or a list of tokens).", envvar="MESHTRACE_TOKENS_FILE"),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Accept and serve without tokens (one tenant, 'default').",
            envvar="MESHTRACE_NO_AUTH",
        ),
    ] = False,
    admin_tenant: Annotated[
        str | None,
        typer.Option(
            help="A tenant whose token also sees every tenant's ingest counts on the console's status page.",
            envvar="MESHTRACE_ADMIN_TENANT",
        ),
    ] = None,
    retention: Annotated[
        str, typer.Option(help="Keep spans this long (7d, 48h).", envvar="MESHTRACE_RETENTION")
    ] = "7d",
    max_body: Annotated[
        str, typer.Option(help="Largest request body, also after decompression.", envvar="MESHTRACE_MAX_BODY")
    ] = "16MiB",
    wal: Annotated[
        bool,
        typer.Option(
            help="Acknowledge from a write-ahead log (fast); --no-wal waits for each insert.",
            envvar="MESHTRACE_WAL",
        ),
    ] = True,
    wal_fsync: Annotated[
        bool,
        typer.Option(
            help="fsync the log before acknowledging (survives power loss, not only crashes).",
            envvar="MESHTRACE_WAL_FSYNC",
        ),
    ] = True,
    flush_interval: Annotated[
        str, typer.Option(help="Longest wait before an insert.", envvar="MESHTRACE_FLUSH_INTERVAL")
    ] = "200ms",
    graph_wait: Annotated[
        str,
        typer.Option(
            help="How long the service graph waits for the other half of a call (the CLIENT or SERVER span "
            "from the other proxy) before counting it against a virtual node.",
            envvar="MESHTRACE_GRAPH_WAIT",
        ),
    ] = "10s",
    flush_spans: Annotated[
        int, typer.Option(help="Insert once this many spans wait.", envvar="MESHTRACE_FLUSH_SPANS")
    ] = 10_000,
    max_pending: Annotated[
        str,
        typer.Option(
            help="Refuse with 503/UNAVAILABLE past this much not-yet-inserted data.",
            envvar="MESHTRACE_MAX_PENDING",
        ),
    ] = "256MiB",
    store_cache: Annotated[
        str,
        typer.Option(
            help="Memory for the embedded engine's caches (marks, primary index...), which otherwise grow with "
            "the data queries read. A ClickHouse server keeps its own settings.",
            envvar="MESHTRACE_STORE_CACHE",
        ),
    ] = "512MiB",
    writers: Annotated[
        int,
        typer.Option(help="Concurrent inserts into ClickHouse (one insert uses one core).", envvar="MESHTRACE_WRITERS"),
    ] = 2,
    query_timeout: Annotated[
        str,
        typer.Option(
            help="Stop a query (search, trace, graph) that runs longer, answering 504.",
            envvar="MESHTRACE_QUERY_TIMEOUT",
        ),
    ] = "30s",
    store_wait: Annotated[
        str,
        typer.Option(
            help="How long to keep trying a ClickHouse server (--store) that does not answer at start; meanwhile "
            "/healthz answers, /readyz says why and exports are refused as retryable. 0s gives up at once.",
            envvar="MESHTRACE_STORE_WAIT",
        ),
    ] = "5m",
    max_request_spans: Annotated[
        int,
        typer.Option(
            help="Refuse an export request with more spans (413 / RESOURCE_EXHAUSTED, not retried).",
            envvar="MESHTRACE_MAX_REQUEST_SPANS",
        ),
    ] = 100_000,
    max_trace_spans: Annotated[
        int,
        typer.Option(
            help="Return at most this many spans of one trace (the first ones, with a warning).",
            envvar="MESHTRACE_MAX_TRACE_SPANS",
        ),
    ] = 100_000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.", envvar="MESHTRACE_LOG_LEVEL")] = "info",
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="YAML file with any of these settings (flags and env win).",
            envvar="MESHTRACE_CONFIG",
        ),
    ] = None,
    ready_file: Annotated[
        str | None, typer.Option(help="Write the bound addresses as JSON here once ready (for scripts).")
    ] = None,
) -> None:
    """Run the tracing backend: OTLP ingest with tokens, the ClickHouse store, the query API.

    Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when the store fails (a ClickHouse server that did
    not answer within --store-wait included), 2 for a configuration error.
    """
    values = {
        "grpc": grpc,
        "otlp_http": otlp_http,
        "http": http,
        "data": data,
        "store": store,
        "tokens_file": tokens_file,
        "no_auth": no_auth,
        "admin_tenant": admin_tenant,
        "retention": retention,
        "max_body": max_body,
        "wal": wal,
        "wal_fsync": wal_fsync,
        "flush_interval": flush_interval,
        "graph_wait": graph_wait,
        "flush_spans": flush_spans,
        "max_pending": max_pending,
        "store_cache": store_cache,
        "writers": writers,
        "query_timeout": query_timeout,
        "store_wait": store_wait,
        "max_request_spans": max_request_spans,
        "max_trace_spans": max_trace_spans,
        "log_level": log_level,
    }
    overrides: dict[str, tuple[Any, str]] = {}
    for key, value in values.items():
        source = getattr(ctx.get_parameter_source(key), "name", "")
        if source == "COMMANDLINE":
            overrides[key] = (value, f"--{key.replace('_', '-')}")
        elif source == "ENVIRONMENT":
            overrides[key] = (value, f"MESHTRACE_{key.upper()}")
    try:
        file_values = load_yaml(config) if config else {}
        if token:
            overrides["tokens"] = (_token_flags(token), "--token")
        settings = build_config(file_values, config, overrides)
        tokens, generated = resolve_tokens(settings)
    except ConfigError as exc:
        console.print(f"[red]configuration error[/] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    _setup_logging(settings.log_level)
    from meshtrace.server import serve as run_server

    try:
        asyncio.run(run_server(settings, tokens, _announce(settings, generated), ready_file))
    except ConfigError as exc:
        console.print(f"[red]configuration error[/] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    except MeshtraceError as exc:
        console.print(f"[red]error[/] {exc}")
        raise typer.Exit(EXIT_RUNTIME) from None


def _token_flags(items: list[str]) -> dict[str, list[str]]:
    tokens: dict[str, list[str]] = {}
    for item in items:
        tenant, sep, value = item.partition("=")
        if not sep or not tenant or not value:
            raise ConfigError(f"{item!r} is not TENANT=TOKEN", source="--token", fix="e.g. --token acme=s3cret")
        tokens.setdefault(tenant, []).append(value)
    return tokens


@app.command()
def collector(
    config: Annotated[
        list[str],
        typer.Option(
            "--config",
            help="Collector configuration file; repeat to merge several, in order.",
            envvar="MESHTRACE_COLLECTOR_CONFIG",
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one setting: --set exporters::otlp::endpoint=host:4317 (repeatable)."),
    ] = None,
    validate: Annotated[bool, typer.Option("--validate", help="Check the configuration and exit.")] = False,
    ready_file: Annotated[
        str | None, typer.Option(help="Write the bound addresses as JSON here once running (for scripts).")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Overrides service::telemetry::logs::level (debug, info, warn, error).")
    ] = None,
) -> None:
    """Run OpenTelemetry Collector configurations: receivers, processors and exporters in pipelines.

    Accepts the Collector's own YAML (receivers, processors, exporters, extensions, service::pipelines,
    service::telemetry), ${env:VAR} substitution, and deprecated forms it reports as warnings.

    Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 for a bad configuration or a failed start.
    """
    from meshtrace.collector.config import load
    from meshtrace.collector.service import run

    try:
        settings = load(config, set_ or [])
    except ConfigError as exc:
        console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    level = (log_level or settings.telemetry.log_level).replace("warn", "warning").replace("warninging", "warning")
    _setup_logging(level if level in ("debug", "info", "warning", "error") else "info")
    log = logging.getLogger("meshtrace.collector")
    for warning in settings.warnings:
        log.warning("%s", warning)
    if validate:
        console.print("the configuration is valid", highlight=False)
        return

    def on_ready(running: Any) -> None:
        if ready_file:
            import orjson

            with open(ready_file + ".tmp", "wb") as f:
                f.write(orjson.dumps({"pid": os.getpid(), **running.addresses()}))
            os.replace(ready_file + ".tmp", ready_file)

    try:
        asyncio.run(run(settings, on_ready))
    except MeshtraceError as exc:
        console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the meshtrace version."""
    typer.echo(__version__)


def _reflowed(text: str) -> str:
    """Each paragraph of a help text on one line, for the terminal to wrap: the help keeps a docstring's
    own line breaks, which on a narrower terminal broke every line a second time. A paragraph starting
    with ``\\b`` keeps its lines, as in click."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        text = command.help or (inspect.getdoc(command.callback) if command.callback else None)
        if text:
            command.help = _reflowed(text)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


@functools.cache
def build() -> typer.Typer:
    """The whole command: the backend's commands above with the mesh's, doctor's and the schema's."""
    from meshtrace.doctor.cli import register as register_doctor
    from meshtrace.mesh.cli import register
    from meshtrace.store.cli import register as register_schema

    register(app)
    register_doctor(app)
    register_schema(app)
    _reflow_help(app)
    return app


def main() -> None:
    build()()
