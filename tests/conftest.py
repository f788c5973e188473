"""Shared fixtures. chdb allows one database directory per process, so every in-process store test
shares one engine and gets a database (and write-ahead log) of its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshtrace.store import Store, StoreOptions
from meshtrace.store.engine import ChdbEngine
from meshtrace.store.schema import Schema
from meshtrace.testing.cluster import one_shard_config

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbEngine]:
    # With a one-shard cluster in its configuration, so the cluster schema runs on it too.
    config = one_shard_config(tmp_path_factory.mktemp("chdb-config"))
    engine = ChdbEngine(str(tmp_path_factory.mktemp("chdb")), config_file=config)
    yield engine
    engine.close()


def new_store(engine: ChdbEngine, data_dir: Path, *, cluster: str | None = None, **options: object) -> Store:
    """A store in a fresh database on the shared engine (not started)."""
    schema = Schema(database=f"test_{next(_databases)}", embedded=True, cluster=cluster, replicated=False)
    return Store.create(engine, schema, StoreOptions(data_dir=str(data_dir), **options), owns_engine=False)  # type: ignore[arg-type]


@pytest.fixture(scope="class")
def class_store(chdb_engine: ChdbEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = new_store(chdb_engine, tmp_path_factory.mktemp("store"), flush_interval=0.05)
    asyncio.run(store.start())
    yield store
    asyncio.run(store.close())
