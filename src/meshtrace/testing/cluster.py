"""A ClickHouse cluster of one shard inside the embedded engine, for running the cluster schema.

The engine reads ``remote_servers`` from a configuration file; a shard at localhost on the engine's own
``tcp_port`` counts as local, so Distributed tables read and write it without a network. What this cannot
show (Keeper, replication, ``ON CLUSTER``, several shards) the golden SQL files pin down instead.
"""

from __future__ import annotations

from pathlib import Path

CLUSTER = "meshtrace_local"


def one_shard_config(directory: Path) -> str:
    path = directory / "cluster.xml"
    path.write_text(
        f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER}>
      <shard><replica><host>localhost</host><port>9000</port></replica></shard>
    </{CLUSTER}>
  </remote_servers>
</clickhouse>
""",
        encoding="utf-8",
    )
    return str(path)
