"""Builds the service graph from edge halves as they arrive: the ingest-time half of every graph query.

A CLIENT span and the SERVER span under it come from two proxies, exported seconds apart, so no single
insert holds both. The builder walks insertion time in fixed windows of ``step`` behind a watermark:

- a pair is counted in the window where its later half arrived, if the halves arrived within ``wait``
  of each other;
- a CLIENT span still alone ``wait`` after it arrived is counted as a call to a virtual node (its peer:
  an uninstrumented or external destination, or one it never reached: ``UF``, ``NR``);
- a SERVER span still alone is counted as a call from the virtual ``unknown`` node;
- a root span (SERVER or CLIENT, as gateways before Istio 1.28 emit) is an entry from ``user``.

Windows are a fixed grid and every insert carries a token naming its window, so a window redone after a
crash is deduplicated instead of counted twice; the watermark is saved after each run. Windows close
``lag`` behind the engine's clock, which covers inserts still in flight when a window is read.

Several backends on one store: each builder writes a heartbeat every ``HEARTBEAT_S``, and the one with the
smallest id among those seen within ``LEASE_S`` builds; the others stand by and take over when its
heartbeats stop. No compare-and-set is needed: while two briefly both build, the window tokens keep
every window counted once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from meshtrace.errors import StoreError
from meshtrace.store.analytics_schema import UNKNOWN, USER, VIRTUAL, bucket_of
from meshtrace.store.engine import Engine
from meshtrace.store.schema import Schema

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
LEASE_S = 15

_COLUMNS = (
    "Tenant, Minute, Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags, "
    "Calls, Failed, ClientNanos, ServerNanos, ClientHistogram, ServerHistogram"
)


def _aggregate(rows: str) -> str:
    """Aggregate edge rows (Tenant, Start, Client, …, Failed, CD, SD; SD = 0 without a server side)."""
    return f"""SELECT Tenant, toStartOfMinute(Start) AS Minute, Client, Server, ClientVersion, ServerVersion,
        ConnectionType, Flags, count(), countIf(Failed), sum(CD), sum(SD),
        sumMap([{bucket_of("CD")}], [toUInt64(1)]),
        sumMap(if(HasServer, [{bucket_of("SD")}], []), if(HasServer, [toUInt64(1)], []))
    FROM ({rows})
    GROUP BY Tenant, Minute, Client, Server, ClientVersion, ServerVersion, ConnectionType, Flags"""


class ServiceGraphBuilder:
    """Turns edge halves into ``meshtrace_service_graph`` rows; thread-safe, one per store."""

    def __init__(
        self, engine: Engine, schema: Schema, *, step_ms: int = 2000, wait_ms: int = 10_000, lag_ms: int = 2000
    ) -> None:
        self.engine = engine
        self.schema = schema
        self.step_ms = step_ms
        self.wait_ms = wait_ms
        self.lag_ms = lag_ms
        self._lock = threading.Lock()
        self._watermark: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.windows = 0
        self.last_error = ""
        self.id = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"  # the oldest backend leads, ties broken at random
        self.leading = False
        self._next_beat = 0.0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="service-graph", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
            self.resign()

    def resign(self) -> None:
        """Hand over at once on a clean stop (a rolling restart): with this builder's heartbeats gone, the
        next one leads at its next beat instead of waiting out the lease. A crashed builder cannot, and is
        replaced ``LEASE_S`` after its last heartbeat."""
        try:
            self.engine.execute(f"DELETE FROM {self.schema.graph_builders} WHERE Id = {{id:String}}", {"id": self.id})
        except StoreError as exc:
            log.warning("could not hand the service graph over (the next builder waits %d s): %s", LEASE_S, exc)
        self.leading = False

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if time.monotonic() >= self._next_beat:
                    self._next_beat = time.monotonic() + HEARTBEAT_S
                    self.beat()
                if self.leading:
                    self.advance()
            except StoreError as exc:  # the engine is closing or broken: try again next round
                if str(exc) != self.last_error:
                    log.warning("service graph not updated: %s", exc)
                self.last_error = str(exc)
            else:
                self.last_error = ""

    def beat(self) -> bool:
        """Say this builder is alive; lead when it is the first of those alive. Returns ``leading``."""
        self.engine.execute(
            f"INSERT INTO {self.schema.graph_builders} VALUES ({{id:String}}, now64(3))", {"id": self.id}
        )
        rows = self.engine.query(
            f"SELECT min(Id) FROM {self.schema.graph_builders} WHERE Seen > now64(3) - toIntervalSecond({LEASE_S})"
        )
        leading = bool(rows) and rows[0][0] == self.id
        if leading and not self.leading:
            with self._lock:
                self._watermark = None  # continue from where the last leader saved, not from our own past
            log.info("building the service graph (builder %s)", self.id)
        elif self.leading and not leading:
            log.info("another backend builds the service graph now; standing by")
        self.leading = leading
        return leading

    # -- windows ----------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The store's clock. On a cluster, the slowest node's: each shard stamps its edge halves' arrival
        with its own clock, and a window must not close before the slowest shard has stamped its halves."""
        cluster = self.schema.cluster
        source = f"clusterAllReplicas('{cluster}', system.one)" if cluster else "system.one"
        return int(self.engine.query(f"SELECT min(toUnixTimestamp64Milli(now64(3))) FROM {source}")[0][0])

    def _start_ms(self) -> int:
        rows = self.engine.query(
            f"SELECT toUnixTimestamp64Milli(max(Watermark)), count() FROM {self.schema.graph_progress}"
        )
        if rows and int(rows[0][1]):
            return int(rows[0][0])
        rows = self.engine.query(
            f"SELECT toUnixTimestamp64Milli(min(InsertedAt)), count() FROM {self.schema.edge_halves}"
        )
        first = int(rows[0][0]) if rows and int(rows[0][1]) else self.now_ms() - self.lag_ms
        return first - first % self.step_ms - self.step_ms

    def advance(self, until_ms: int | None = None) -> int:
        """Close every window that ends by ``until_ms`` (default: the engine's clock minus ``lag``).
        Returns how many were closed. Tests pass a time past their writes plus ``wait`` to see every
        half resolved; a running backend never does (halves arriving later would be missed)."""
        with self._lock:
            if until_ms is None:
                until_ms = self.now_ms() - self.lag_ms
            if self._watermark is None:
                self._watermark = self._start_ms()
            closed = 0
            while self._watermark + self.step_ms <= until_ms:
                lo = self._watermark
                if self._has_halves(lo - 2 * self.wait_ms, lo + self.step_ms):
                    self._close(lo, lo + self.step_ms)
                self._watermark = lo + self.step_ms
                closed += 1
                if closed % 500 == 0:
                    self._save()
            if closed:
                self._save()
                self.windows += closed
            return closed

    def _save(self) -> None:
        assert self._watermark is not None
        self.engine.execute(
            f"INSERT INTO {self.schema.graph_progress} SELECT 1, fromUnixTimestamp64Milli({{w:Int64}})",
            {"w": self._watermark},
        )

    def _has_halves(self, lo: int, hi: int) -> bool:
        rows = self.engine.query(
            f"SELECT count() > 0 FROM {self.schema.edge_halves} "
            "WHERE InsertedAt > fromUnixTimestamp64Milli({lo:Int64}) "
            "AND InsertedAt <= fromUnixTimestamp64Milli({hi:Int64})",
            {"lo": lo, "hi": hi},
        )
        return bool(rows and rows[0][0])

    def _halves(self, client: bool, lo: str, hi: str, extra: str = "") -> str:
        return (
            f"SELECT * FROM {self.schema.edge_halves} WHERE IsClient = {'true' if client else 'false'} "
            f"AND InsertedAt > fromUnixTimestamp64Milli({lo}) AND InsertedAt <= fromUnixTimestamp64Milli({hi})"
            f"{extra}"
        )

    def _close(self, w: int, t: int) -> None:
        """Count the window (w, t] of insertion time."""
        params = {
            "w": w,
            "t": t,
            "wait": self.wait_ms,
            "lo": w - self.wait_ms,
            "lo2": w - 2 * self.wait_ms,
            "ew": w - self.wait_ms,
            "et": t - self.wait_ms,
        }
        ms = "toUnixTimestamp64Milli"
        pairs = f"""SELECT c.Tenant AS Tenant, c.Start AS Start, c.Service AS Client, s.Service AS Server,
                c.Version AS ClientVersion, s.Version AS ServerVersion, '' AS ConnectionType, c.Flags AS Flags,
                c.Failed OR s.Failed AS Failed, c.Duration AS CD, s.Duration AS SD, true AS HasServer
            FROM ({self._halves(True, "{lo:Int64}", "{t:Int64}")}) AS c
            INNER JOIN ({self._halves(False, "{lo:Int64}", "{t:Int64}", " AND NOT IsRoot")}) AS s
                ON s.Tenant = c.Tenant AND s.Key = c.Key
            WHERE greatest({ms}(c.InsertedAt), {ms}(s.InsertedAt)) > {{w:Int64}}
              AND abs({ms}(c.InsertedAt) - {ms}(s.InsertedAt)) <= {{wait:Int64}}"""
        lone_clients = f"""SELECT c.Tenant AS Tenant, c.Start AS Start, c.Service AS Client,
                if(c.Peer = '', '{UNKNOWN}', c.Peer) AS Server, c.Version AS ClientVersion, '' AS ServerVersion,
                '{VIRTUAL}' AS ConnectionType, c.Flags AS Flags, c.Failed AS Failed, c.Duration AS CD,
                toUInt64(0) AS SD, false AS HasServer
            FROM ({self._halves(True, "{ew:Int64}", "{et:Int64}")}) AS c
            LEFT ANY JOIN ({self._halves(False, "{lo2:Int64}", "{t:Int64}", " AND NOT IsRoot")}) AS s
                ON s.Tenant = c.Tenant AND s.Key = c.Key
            WHERE {ms}(s.InsertedAt) = 0 OR abs({ms}(c.InsertedAt) - {ms}(s.InsertedAt)) > {{wait:Int64}}"""
        lone_servers = f"""SELECT s.Tenant AS Tenant, s.Start AS Start, '{UNKNOWN}' AS Client, s.Service AS Server,
                '' AS ClientVersion, s.Version AS ServerVersion, '{VIRTUAL}' AS ConnectionType, s.Flags AS Flags,
                s.Failed AS Failed, s.Duration AS CD, s.Duration AS SD, true AS HasServer
            FROM ({self._halves(False, "{ew:Int64}", "{et:Int64}", " AND NOT IsRoot")}) AS s
            LEFT ANY JOIN ({self._halves(True, "{lo2:Int64}", "{t:Int64}")}) AS c
                ON s.Tenant = c.Tenant AND s.Key = c.Key
            WHERE {ms}(c.InsertedAt) = 0 OR abs({ms}(c.InsertedAt) - {ms}(s.InsertedAt)) > {{wait:Int64}}"""
        roots = f"""SELECT Tenant, Start, '{USER}' AS Client, Service AS Server, '' AS ClientVersion,
                Version AS ServerVersion, '{VIRTUAL}' AS ConnectionType, Flags, Failed, Duration AS CD,
                Duration AS SD, true AS HasServer
            FROM {self.schema.edge_halves}
            WHERE IsRoot AND InsertedAt > fromUnixTimestamp64Milli({{w:Int64}})
              AND InsertedAt <= fromUnixTimestamp64Milli({{t:Int64}})"""
        for name, rows in (("pairs", pairs), ("clients", lone_clients), ("servers", lone_servers), ("roots", roots)):
            self.engine.execute(
                f"INSERT INTO {self.schema.service_graph} ({_COLUMNS}) "
                f"SETTINGS insert_deduplicate = 1, insert_deduplication_token = 'graph-{name}-{w}' "
                f"{_aggregate(rows)}",
                params,
            )
