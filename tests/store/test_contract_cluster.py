"""The storage contract on the cluster layout: local tables with their materialized views behind
Distributed tables, on a one-shard cluster of the embedded engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from meshtrace.store import Store
from meshtrace.store.engine import ChdbEngine
from meshtrace.testing.cluster import CLUSTER
from meshtrace.testing.contract import StoreContract
from tests.conftest import new_store


class TestClusterStore(StoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, chdb_engine: ChdbEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
        store = new_store(chdb_engine, tmp_path_factory.mktemp("cluster"), cluster=CLUSTER, flush_interval=0.05)
        asyncio.run(store.start())
        yield store
        asyncio.run(store.close())

    def test_spans_live_in_the_local_tables(self, store: Store, loaded: object) -> None:
        db = store.schema.database
        rows = store.engine.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name", {"db": db}
        )
        engines = dict((name, engine) for name, engine in rows)
        assert engines["otel_traces"] == "Distributed"
        assert engines["otel_traces_local"] == "MergeTree"
        assert engines["meshtrace_service_graph"] == "Distributed"
        assert engines["meshtrace_graph_progress"] == "ReplacingMergeTree"
        local = store.engine.query(f"SELECT count() FROM `{db}`.otel_traces_local")[0][0]
        assert local == store.size().spans > 0
        assert store.engine.query(f"SELECT count() FROM `{db}`.meshtrace_span_index_local")[0][0] == local
