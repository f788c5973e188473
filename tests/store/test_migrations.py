"""Schema migrations: applied once and in order, idempotent, never destructive unasked; the cluster
layout's SQL pinned by a golden file and parsed by the engine."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshtrace.store.engine import ChdbEngine
from meshtrace.store.migrations import MIGRATIONS, Migration, MigrationError, migrate, status
from meshtrace.store.schema import Schema

GOLDEN = Path(__file__).parent / "golden" / "cluster_schema.sql"
_names = itertools.count(1)


@pytest.fixture
def schema() -> Schema:
    return Schema(database=f"migrations_{next(_names)}")


def _tables(engine: ChdbEngine, schema: Schema) -> set[str]:
    rows = engine.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": schema.database})
    return {row[0] for row in rows}


def _add_column(schema: Schema) -> list[str]:
    return [schema.alter("otel_traces", "ADD COLUMN IF NOT EXISTS Cost UInt32 DEFAULT 0")]


def _drop_index(schema: Schema) -> list[str]:
    return [schema.alter("otel_traces", "DROP INDEX IF EXISTS idx_duration")]


LATEST = len(MIGRATIONS)
ADDITIVE = (*MIGRATIONS, Migration(LATEST + 1, "a column", _add_column))
DESTRUCTIVE = (*ADDITIVE, Migration(LATEST + 2, "an index dropped", _drop_index, destructive=True))
RELEASED = list(range(1, LATEST + 1))


def test_a_new_database_gets_every_migration_once(chdb_engine: ChdbEngine, schema: Schema) -> None:
    assert [m.version for m in status(chdb_engine, schema).pending] == RELEASED
    assert [m.version for m in migrate(chdb_engine, schema)] == RELEASED
    tables = _tables(chdb_engine, schema)
    expected = {"otel_traces", "meshtrace_service_graph", "meshtrace_schema_migrations", "meshtrace_graph_builders"}
    assert expected <= tables
    assert migrate(chdb_engine, schema) == []
    state = status(chdb_engine, schema)
    assert (state.applied, state.pending, state.current) == (RELEASED, [], LATEST)


def test_a_database_from_before_migrations_keeps_its_spans(chdb_engine: ChdbEngine, schema: Schema) -> None:
    for statement in schema.statements():  # what earlier releases ran at every start
        chdb_engine.execute(statement)
    chdb_engine.execute(
        f"INSERT INTO {schema.traces} (Timestamp, TraceId, SpanId, Tenant) VALUES (now64(9), 'ab', 'cd', 't')"
    )
    assert [m.version for m in migrate(chdb_engine, schema)] == RELEASED
    assert chdb_engine.query(f"SELECT count() FROM {schema.traces}") == [[1]]


def test_backends_migrating_together_end_in_one_schema(chdb_engine: ChdbEngine, schema: Schema) -> None:
    migrate(chdb_engine, schema)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: migrate(chdb_engine, schema, migrations=ADDITIVE), range(3)))
    assert status(chdb_engine, schema, ADDITIVE).applied == [*RELEASED, LATEST + 1]
    columns = chdb_engine.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'otel_traces'",
        {"db": schema.database},
    )
    assert ["Cost"] in columns


def test_destructive_migrations_wait_for_the_flag(chdb_engine: ChdbEngine, schema: Schema) -> None:
    migrate(chdb_engine, schema)
    with pytest.raises(
        MigrationError, match=rf"destructive migration {LATEST + 2} \(an index dropped\).*--allow-destructive"
    ):
        migrate(chdb_engine, schema, migrations=DESTRUCTIVE)
    # Refused before anything ran: not even the harmless migration before it.
    assert status(chdb_engine, schema, DESTRUCTIVE).applied == RELEASED
    applied = migrate(chdb_engine, schema, migrations=DESTRUCTIVE, allow_destructive=True)
    assert [m.version for m in applied] == [LATEST + 1, LATEST + 2]
    ddl = chdb_engine.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = 'otel_traces'",
        {"db": schema.database},
    )[0][0]
    assert "idx_duration" not in ddl


def test_a_database_from_a_newer_meshtrace_is_refused(chdb_engine: ChdbEngine, schema: Schema) -> None:
    migrate(chdb_engine, schema, migrations=ADDITIVE)
    with pytest.raises(MigrationError, match=f"schema version {LATEST + 1}, newer than this meshtrace knows"):
        migrate(chdb_engine, schema)


def test_schema_command_reports_and_applies(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshtrace", "schema", *args, "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )

    before = run("status")
    assert before.returncode == 3, before.stderr
    assert "pending" in before.stdout
    assert f"version 0 of {LATEST}" in before.stdout
    applied = run("migrate")
    assert applied.returncode == 0, applied.stderr
    assert "applying migration 1" in applied.stdout
    assert f"applying migration {LATEST}" in applied.stdout
    after = run("status")
    assert after.returncode == 0
    assert f"version {LATEST} of {LATEST}" in after.stdout


def _cluster_statements() -> list[str]:
    schema = Schema(database="otel", cluster="meshtrace", embedded=False)
    return [s for m in MIGRATIONS for s in m.statements(schema)]


def test_cluster_sql_matches_the_golden_file() -> None:
    text = "".join(statement + ";\n\n" for statement in _cluster_statements())
    if os.environ.get("MESHTRACE_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), "regenerate with MESHTRACE_UPDATE_GOLDEN=1 and review the diff"


def test_cluster_sql_parses_and_is_laid_out_for_shards(chdb_engine: ChdbEngine) -> None:
    statements = _cluster_statements()
    for statement in statements:
        chdb_engine.query("SELECT formatQuery({q:String})", {"q": statement})  # raises on a syntax error
        assert " ON CLUSTER `meshtrace`" in statement
    named = (re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS `otel`\.(\w+)", s) for s in statements)
    creates = {m.group(1): m.string for m in named if m}
    for name in ("otel_traces", "otel_traces_trace_id_ts", "meshtrace_span_index", "meshtrace_request_ids"):
        assert f"Distributed('meshtrace', 'otel', '{name}_local', cityHash64(TraceId))" in creates[name]
        assert f"'/clickhouse/tables/{{shard}}/otel/{name}_local', '{{replica}}'" in creates[f"{name}_local"]
    for view, statement in creates.items():
        if view.endswith("_mv") and view != "meshtrace_otlp_in_mv":
            # Each shard indexes and aggregates its own spans: views read and write local tables.
            assert re.search(r"TO `otel`\.\w+_local\b", statement)
            assert "FROM `otel`.otel_traces_local" in statement
    assert "TO `otel`.otel_traces\n" in creates["meshtrace_otlp_in_mv"]  # ingest goes through Distributed
    assert "'/clickhouse/tables/all/otel/meshtrace_graph_progress'" in creates["meshtrace_graph_progress"]
