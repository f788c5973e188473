"""The ClickHouse engine, embedded (chdb) or a server (clickhouse-connect), behind one small interface.

Both speak the same SQL with server-side ``{name:Type}`` parameters, and both take inserts as raw
bytes in a ClickHouse input format. Driver errors are translated into ``StoreError`` here and nowhere
else.

chdb rules this module enforces: one database path per process, one connection per thread (a shared
connection refuses queries while an insert streams), and the engine releases the GIL while it works, so
reader threads and the writer thread run in parallel with the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from meshtrace.errors import ConfigError, QueryTimeout, StoreError, StoreRejectedInput, StoreUnavailable

log = logging.getLogger(__name__)

_JSON_SETTINGS = " SETTINGS output_format_json_validate_utf8 = 1, output_format_json_quote_64bit_integers = 0"


class Engine(Protocol):
    """What the store needs from ClickHouse; every method may raise ``StoreError``."""

    embedded: bool
    description: str

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping[str, str | int] | None = None
    ) -> list[list[Any]]: ...

    def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, str | int]) -> None: ...

    def format_schema_settings(self, name: str, text: str, message: str) -> dict[str, str | int]:
        """Insert settings that make ClickHouse decode with the ``.proto`` in ``text``."""
        ...

    def configure(self, settings: Mapping[str, str | int]) -> None:
        """Settings for every statement from now on (each connection applies them before its next use)."""
        ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    """The driver's message, or for a connection that failed the system's reason ("Connection refused")
    instead of the HTTP client's retry report around it."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__module__ == "builtins" and isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {cause.verify_message}"
        if isinstance(cause, TimeoutError):
            return "timed out"
        cause = cause.__cause__ or cause.__context__
    return str(exc)


# Failures that can leave a write partly done (one materialized view's table has the rows, another not)
# or that pass with time: never a reason to split a batch (see StoreUnavailable).
_RESOURCE_ERRORS = (
    "NOT_ENOUGH_SPACE", "not enough space", "No space left", "TOO_MANY_PARTS", "MEMORY_LIMIT_EXCEEDED",
    "CANNOT_ALLOCATE_MEMORY", "CANNOT_WRITE", "CANNOT_FSYNC", "while pushing to view",
)  # fmt: skip


def _unavailable(exc: BaseException) -> bool:
    """Whether a write may be partly done: out of a resource, or a request the server never answered
    (clickhouse-connect's ``OperationalError`` without a ClickHouse error code: refused, reset, timed out)."""
    if any(marker in str(exc) for marker in _RESOURCE_ERRORS):
        return True
    if not type(exc).__module__.startswith("clickhouse_connect"):
        return False
    from clickhouse_connect.driver.exceptions import OperationalError

    return isinstance(exc, OperationalError) and getattr(exc, "code", None) is None


# A failure in the input format: the insert's data does not parse. Parsing forms a block before any of its
# rows reaches a table, and with ClickHouse's default block settings a batch (a row per log record, at most
# --flush-spans of them) never fills more than one (a second starts only past ~1M rows), so such an
# insert wrote nothing, and the same bytes fail every time.
_UNPARSABLE = re.compile(r"While executing \w*RowInputFormat")


def _kind(exc: BaseException) -> type[StoreError]:
    if _unavailable(exc):
        return StoreUnavailable
    return StoreRejectedInput if _UNPARSABLE.search(str(exc)) else StoreError


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:  # the drivers raise RuntimeError, ChdbError, DatabaseError, OSError, ...
        raise _kind(exc)(f"{what}: {_reason(exc)}") from exc


# Errors of a failed write, counted by the engine even when its streaming insert does not raise them.
WRITE_ERRORS_SQL = """SELECT sum(value), argMax(last_error_message, last_error_time) FROM system.errors
WHERE NOT remote AND name IN ('NOT_ENOUGH_SPACE', 'CANNOT_WRITE_TO_FILE_DESCRIPTOR', 'CANNOT_FSYNC',
    'CANNOT_WRITE_TO_OSTREAM', 'CANNOT_ALLOCATE_MEMORY', 'MEMORY_LIMIT_EXCEEDED', 'TOO_MANY_PARTS',
    'CANNOT_OPEN_FILE', 'CANNOT_CLOSE_FILE', 'CANNOT_TRUNCATE_FILE', 'CANNOT_RENAME_FILE')"""


def _setting(key: str, value: str | int) -> str:
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"{key} = '{escaped}'"
    return f"{key} = {int(value)}"


def _already(current: Mapping[str, str | int], wanted: Mapping[str, str | int]) -> bool:
    """Whether ``configure`` would change nothing (the store and the schema command both ask)."""
    return all(current.get(key) == value for key, value in wanted.items())


def _settings_clause(settings: Mapping[str, str | int]) -> str:
    return " SETTINGS " + ", ".join(_setting(k, v) for k, v in settings.items()) if settings else ""


# Shares of the embedded engine's cache budget. ClickHouse sizes these caches for a server of its own
# (5 GiB each for marks, primary index and skip-index marks), so an embedded store left alone grows its
# process by what queries read, up to many GiB; the uncompressed and query caches stay off, as by default.
CACHE_SHARES = {
    "mark_cache_size": 0.5,
    "primary_index_cache_size": 0.2,
    "index_mark_cache_size": 0.1,
    "query_condition_cache_size": 0.1,
    "compiled_expression_cache_size": 0.1,
}


def cache_config(cache_bytes: int) -> str:
    """A ClickHouse configuration bounding the caches to ``cache_bytes`` in all."""
    lines = "".join(f"  <{name}>{int(cache_bytes * share)}</{name}>\n" for name, share in CACHE_SHARES.items())
    return f"<clickhouse>\n{lines}</clickhouse>\n"


class ChdbEngine:
    """The embedded engine: data in a directory, owned by this process alone.

    ``cache_bytes`` bounds ClickHouse's caches (``CACHE_SHARES``) through a configuration file written
    next to the data; a ``config_file`` of one's own replaces it. chdb reads either once per process.
    """

    embedded = True

    def __init__(self, path: str, *, config_file: str | None = None, cache_bytes: int | None = None) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = os.path.abspath(path)
        if config_file is None and cache_bytes is not None:
            config_file = os.path.join(self.path, "meshtrace-engine.xml")
            with open(config_file, "w") as out:
                out.write(cache_config(cache_bytes))
        self.config_file = config_file
        self.description = f"embedded ClickHouse (chdb) in {self.path}"
        self._settings: dict[str, str | int] = {}
        self._generation = 0
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._conn()  # fail now, not on the first request, if the directory is locked or unusable

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("the store is closed")
            with _translated(f"cannot open the embedded store in {self.path}"):
                import chdb  # the engine is 0.5 s to import; only pay it when a store opens

                target = f"file:{self.path}?config-file={self.config_file}" if self.config_file else self.path
                conn = chdb.connect(target)
            self._local.conn = conn
            self._local.generation = -1
            with self._lock:
                self._all.append(conn)
        if self._local.generation != self._generation:
            with self._lock:
                settings, generation = dict(self._settings), self._generation
            for key, value in settings.items():
                with _translated(f"cannot set {key}"):
                    conn.query(f"SET {_setting(key, value)}", "CSV")
            self._local.generation = generation
        return conn

    def configure(self, settings: Mapping[str, str | int]) -> None:
        with self._lock:
            if _already(self._settings, settings):
                return
            self._settings.update(settings)
            self._generation += 1

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with _translated("query failed"):
            self._conn().query(sql, "CSV", params=_chdb_params(params))

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping[str, str | int] | None = None
    ) -> list[list[Any]]:
        extra = "".join(f", {_setting(k, v)}" for k, v in (settings or {}).items())
        with _translated("query failed"):
            result = self._conn().query(sql + _JSON_SETTINGS + extra, "JSONCompact", params=_chdb_params(params))
            raw = result.bytes()
        if not raw:
            return []
        return orjson.loads(raw)["data"]

    def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, str | int]) -> None:
        # The embedded engine's streaming insert reports success when writing the part failed (a full
        # disk: NOT_ENOUGH_SPACE); the engine's error counters do see it, so they are read around it.
        conn = self._conn()
        before, _ = self._write_errors(conn)
        with (
            _translated(f"insert into {table} failed"),
            conn.send_insert(f"INSERT INTO {table}{_settings_clause(settings)}", fmt) as inserter,
        ):
            inserter.append(data)
            inserter.finish()
        after, message = self._write_errors(conn)
        if after != before:
            raise StoreUnavailable(f"insert into {table} failed: {message}")

    @staticmethod
    def _write_errors(conn: Any) -> tuple[int, str]:
        with _translated("cannot read the engine's error counters"):
            raw = conn.query(WRITE_ERRORS_SQL, "JSONCompact").bytes()
        count, message = orjson.loads(raw)["data"][0]
        return int(count), str(message)

    def format_schema_settings(self, name: str, text: str, message: str) -> dict[str, str | int]:
        # An inline schema would be cached in the process's working directory; a file in the store's
        # own directory, named by its absolute path, keeps everything under --data.
        directory = os.path.join(self.path, "format_schemas")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        return {"format_schema": path, "format_schema_message_name": message}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def _chdb_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    from clickhouse_connect.driver.binding import format_bind_value

    return {key: format_bind_value(value) for key, value in params.items()}


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    database: str
    username: str
    password: str
    secure: bool
    cluster: str | None = None
    replicated: bool = True
    ca_cert: str | None = None
    verify: bool = True


_URL_PARAMS = ("secure", "cluster", "replicated", "ca_cert", "verify")


def parse_server_url(url: str) -> ServerAddress:
    """``clickhouse://[user[:password]@]host[:port][/database][?secure=true][&cluster=NAME]
    [&replicated=false][&ca_cert=PATH][&verify=false]`` (HTTP interface; ``clickhouses://`` is HTTPS).
    ``cluster`` lays the schema out for a ClickHouse cluster: local tables on every shard (``Replicated*``
    unless ``replicated=false``), Distributed tables in front. ``ca_cert`` trusts a private CA (PEM);
    ``verify=false`` skips checking the server's certificate."""
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "clickhouses", "http", "https"):
        raise ConfigError(
            f"unknown store URL scheme {parts.scheme!r}",
            path="store",
            fix="use clickhouse://host:8123/database, or leave --store unset for the embedded engine",
        )
    if not parts.hostname:
        raise ConfigError("store URL has no host", path="store", fix="e.g. clickhouse://127.0.0.1:8123/otel")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - set(_URL_PARAMS))
    if unknown:
        raise ConfigError(
            f"unknown store URL parameter {', '.join(unknown)}",
            path="store",
            fix=f"use only {', '.join(_URL_PARAMS)}",
        )
    secure = parts.scheme in ("clickhouses", "https") or query.get("secure", ["false"])[0] == "true"
    ca_cert = query.get("ca_cert", [None])[0] or None
    if ca_cert is not None and not os.path.isfile(ca_cert):
        raise ConfigError(
            f"store URL ca_cert {ca_cert!r} is not a file", path="store", fix="give the path of the CA's PEM file"
        )
    return ServerAddress(
        host=parts.hostname,
        port=parts.port or (8443 if secure else 8123),
        database=unquote(parts.path.lstrip("/")) or "otel",
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        secure=secure,
        cluster=query.get("cluster", [None])[0] or None,
        replicated=query.get("replicated", ["true"])[0] != "false",
        ca_cert=ca_cert,
        verify=query.get("verify", ["true"])[0] != "false",
    )


class ServerEngine:
    """A ClickHouse server over its HTTP interface; one client per thread."""

    embedded = False

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.description = f"ClickHouse server at {address.host}:{address.port}/{address.database}"
        self._settings: dict[str, str | int] = {}
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        if address.secure and not address.verify:
            # Asked for in the URL: said once here, not by urllib3 on every request.
            from urllib3.exceptions import InsecureRequestWarning

            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
            log.warning("not checking the certificate of %s (verify=false in the store URL)", self.description)
        self._client()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import clickhouse_connect

            with _translated(f"cannot reach {self.description}"):
                client = clickhouse_connect.get_client(
                    host=self.address.host,
                    port=self.address.port,
                    username=self.address.username,
                    password=self.address.password,
                    secure=self.address.secure,
                    verify=self.address.verify,
                    ca_cert=self.address.ca_cert,
                    autogenerate_session_id=False,
                    settings=dict(self._settings),
                )
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with _translated("query failed"):
            self._client().command(sql, parameters=dict(params) if params else None)

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping[str, str | int] | None = None
    ) -> list[list[Any]]:
        with _translated("query failed"):
            result = self._client().query(
                sql, parameters=dict(params) if params else None, settings=dict(settings) if settings else None
            )
        return [list(row) for row in result.result_rows]

    def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, str | int]) -> None:
        with _translated(f"insert into {table} failed"):
            self._client().raw_insert(table, insert_block=data, fmt=fmt, settings=dict(settings))

    def format_schema_settings(self, name: str, text: str, message: str) -> dict[str, str | int]:
        # Sent with each insert, so no file has to be placed on the server.
        return {"format_schema_source": "string", "format_schema": text, "format_schema_message_name": message}

    def configure(self, settings: Mapping[str, str | int]) -> None:
        # Clients are made per thread with the settings; every thread makes a new one (the old ones are
        # closed with the engine).
        with self._lock:
            if _already(self._settings, settings):
                return
            self._settings.update(settings)
        self._local = threading.local()

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        self._local = threading.local()


class TimeLimited:
    """The engine as the query APIs use it: every read stops after ``timeout_s``, so one search over a
    month of spans cannot hold a core (and the request) for minutes."""

    def __init__(self, engine: Engine, timeout_s: int) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.embedded = engine.embedded
        self.description = engine.description

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping[str, str | int] | None = None
    ) -> list[list[Any]]:
        limited: dict[str, str | int] = {"max_execution_time": self.timeout_s, **(settings or {})}
        try:
            return self.engine.query(sql, params, limited)
        except StoreError as exc:
            if "TIMEOUT_EXCEEDED" not in str(exc):
                raise
            raise QueryTimeout(
                f"the query ran longer than {self.timeout_s}s and was stopped (the backend's --query-timeout): "
                "narrow the time range or the search"
            ) from None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.engine.execute(sql, params)

    def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, str | int]) -> None:
        self.engine.insert(table, data, fmt, settings)

    def format_schema_settings(self, name: str, text: str, message: str) -> dict[str, str | int]:
        return self.engine.format_schema_settings(name, text, message)

    def configure(self, settings: Mapping[str, str | int]) -> None:
        self.engine.configure(settings)

    def close(self) -> None:
        self.engine.close()
