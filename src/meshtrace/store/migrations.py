"""Versioned schema migrations: what a database has had applied, and what this meshtrace would apply.

Each migration has a number and is applied once, in order; the numbers applied are kept in
``meshtrace_schema_migrations`` (on a cluster, a table every node holds whole). Migrations are
idempotent (``IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``), so two backends starting together, or a
migration interrupted half-way and run again, end in the same schema. A migration that drops or rewrites
data is marked destructive and only runs when asked for explicitly (``meshtrace schema migrate
--allow-destructive``); a backend never runs one on its own. A database migrated by a newer meshtrace is
refused rather than written with an older idea of the schema.

Migration 1 is the whole schema as first released; a database made before migrations were recorded has
every table of it already, and its statements are no-ops there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshtrace.errors import StoreError
from meshtrace.store.engine import Engine
from meshtrace.store.schema import Schema

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Schema], list[str]]
    destructive: bool = False


def _graph_builders(schema: Schema) -> list[str]:
    # Heartbeats of every backend's graph builder: the first one alive (by id) builds, the rest stand by.
    return schema.table(
        "meshtrace_graph_builders",
        "    Id String,\n    Seen DateTime64(3)",
        "ReplacingMergeTree(Seen)",
        "ORDER BY Id\nTTL toDateTime(Seen) + toIntervalDay(1)",
        None,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "spans, trace lookup, search and request-id tables; span metrics and service graph", Schema.statements
    ),
    Migration(2, "graph builder heartbeats, so one backend of several builds the service graph", _graph_builders),
)


class MigrationError(StoreError):
    """The schema cannot be brought up to date without the user's say-so (or at all)."""


@dataclass(frozen=True, slots=True)
class Status:
    applied: list[int]
    pending: list[Migration]
    latest: int

    @property
    def current(self) -> int:
        return max(self.applied, default=0)


def _bootstrap(schema: Schema) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS `{schema.database}`{schema.on_cluster}",
        *schema.table(
            "meshtrace_schema_migrations",
            "    Version UInt32,\n    Name String,\n    AppliedAt DateTime64(3),\n    AppliedBy String",
            "ReplacingMergeTree(AppliedAt)",
            "ORDER BY Version",
            None,
        ),
    ]


def status(engine: Engine, schema: Schema, migrations: Sequence[Migration] = MIGRATIONS) -> Status:
    """What is applied and what is pending; creates only the database and the migrations table."""
    for statement in _bootstrap(schema):
        engine.execute(statement)
    applied = sorted(int(row[0]) for row in engine.query(f"SELECT DISTINCT Version FROM {schema.migrations}"))
    known = {m.version for m in migrations}
    latest = max(known, default=0)
    unknown = [v for v in applied if v not in known]
    if unknown:
        raise MigrationError(
            f"database {schema.database} has schema version {max(unknown)}, newer than this meshtrace knows "
            f"({latest}): upgrade meshtrace, or point it at another database"
        )
    pending = sorted((m for m in migrations if m.version not in applied), key=lambda m: m.version)
    return Status(applied=applied, pending=pending, latest=latest)


def migrate(
    engine: Engine,
    schema: Schema,
    *,
    allow_destructive: bool = False,
    migrations: Sequence[Migration] = MIGRATIONS,
    applied_by: str = "meshtrace",
    on_step: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Apply what is pending, in order; returns what was applied. Raises ``MigrationError`` before
    changing anything if a pending migration is destructive and that was not allowed."""
    state = status(engine, schema, migrations)
    destructive = [m for m in state.pending if m.destructive]
    if destructive and not allow_destructive:
        names = ", ".join(f"{m.version} ({m.name})" for m in destructive)
        raise MigrationError(
            f"database {schema.database} needs destructive migration {names}; back it up, then run "
            "`meshtrace schema migrate --store URL --allow-destructive` once (`meshtrace schema sql` prints "
            "the statements)"
        )
    for migration in state.pending:
        if on_step:
            on_step(migration)
        log.info("schema migration %d: %s", migration.version, migration.name)
        for statement in migration.statements(schema):
            engine.execute(statement)
        engine.execute(
            f"INSERT INTO {schema.migrations} VALUES ({{v:UInt32}}, {{n:String}}, now64(3), {{by:String}})",
            {"v": migration.version, "n": migration.name, "by": applied_by},
        )
    return list(state.pending)
