"""ClickHouse's HTTP interface served by the embedded engine, so the server-mode store runs without a server.

meshtrace's server mode talks to ClickHouse through clickhouse-connect over HTTP (port 8123). This module
answers that protocol the way a ClickHouse server does (the query from the ``query`` parameter and the
body, ``param_*`` bindings, settings as URL parameters, ``database``, compressed request bodies, errors as
``Code: N. DB::Exception`` with ``X-ClickHouse-Exception-Code``) and runs every statement in chdb, which is
the ClickHouse engine itself. Each request gets a connection of its own, so settings and ``USE`` last for
one request, as on a server without sessions.

What it does not stand in for: several servers, Keeper, replication, ``ON CLUSTER``, users and quotas
(one user with one password). A real server still runs the same suite when
``MESHTRACE_TEST_CLICKHOUSE_URL`` names it.

Run as its own process (chdb allows one data path per process)::

    python -m meshtrace.testing.clickhouse_http --data DIR --port 8123
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hmac
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from meshtrace.store.engine import WRITE_ERRORS_SQL

# URL parameters that are not settings (ClickHouse's HTTP handler reads these itself).
_NOT_SETTINGS = {
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "stacktrace", "role", "http_headers_progress_interval_ms",
}  # fmt: skip
# Settings of the HTTP handler itself; the engine behind it has no HTTP layer to apply them to.
_HTTP_ONLY = {"enable_http_compression", "send_progress_in_http_headers", "http_zlib_compression_level"}

# An INSERT's data follows its FORMAT clause, in the query parameter's continuation (the body) or in
# the body itself after the statement; ClickHouse skips the whitespace between them.
_INSERT = re.compile(rb"^\s*INSERT\s+INTO\s+(?P<target>[^\n]+?)\s+FORMAT\s+(?P<fmt>\w+)[ \t]*\r?\n?", re.IGNORECASE)
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_CODE = re.compile(r"Code:\s*(\d+)")
# ClickHouse's HTTP status for some error codes; everything else is a 500.
_STATUS = {
    60: HTTPStatus.NOT_FOUND,  # UNKNOWN_TABLE
    81: HTTPStatus.NOT_FOUND,  # UNKNOWN_DATABASE
    62: HTTPStatus.BAD_REQUEST,  # SYNTAX_ERROR
    516: HTTPStatus.UNAUTHORIZED,  # AUTHENTICATION_FAILED
}


class QueryError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _CODE.search(message)
        self.code = int(match.group(1)) if match else 1002  # UNKNOWN_EXCEPTION


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise QueryError(f"Code: 1001. DB::Exception: unsupported Content-Encoding {encoding!r}")


def _setting_sql(key: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise QueryError(f"Code: 115. DB::Exception: Unknown setting '{key}'. (UNKNOWN_SETTING)")
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"SET {key} = '{escaped}'" if not re.fullmatch(r"-?\d+(\.\d+)?", value) else f"SET {key} = {value}"


class Engine:
    """The embedded engine, one connection per request."""

    def __init__(self, path: str, config_file: str | None = None) -> None:
        import chdb

        self._chdb = chdb
        self._target = f"file:{path}?config-file={config_file}" if config_file else path
        self._keep = chdb.connect(self._target)  # holds the engine open between requests

    def run(
        self,
        sql: str,
        *,
        database: str | None,
        settings: Mapping[str, str],
        params: Mapping[str, str],
        insert: tuple[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[bytes, str]:
        """Runs ``sql``, or with ``insert`` (target, format) inserts ``body``."""
        conn = self._chdb.connect(self._target)
        try:
            for key, value in settings.items():
                self._call(conn, _setting_sql(key, value), {})
            if database:
                self._call(conn, f"USE `{database}`", {})
            if insert is not None:
                self._insert(conn, insert[0], insert[1], body)
                return b"", "TabSeparated"
            fmt_match = _FORMAT.search(sql)
            fmt = fmt_match.group(1) if fmt_match else "TabSeparated"
            return self._call(conn, sql, params, fmt), fmt
        finally:
            conn.close()

    def _call(self, conn: Any, sql: str, params: Mapping[str, str], fmt: str = "TabSeparated") -> bytes:
        try:
            result = conn.query(sql, fmt, params=dict(params) or None)
        except Exception as exc:  # chdb raises ChdbError / RuntimeError carrying ClickHouse's message
            raise QueryError(str(exc)) from None
        return result.bytes() if result is not None else b""

    def _insert(self, conn: Any, target: str, fmt: str, data: bytes) -> None:
        before = self._call(conn, WRITE_ERRORS_SQL, {})
        try:
            with conn.send_insert(f"INSERT INTO {target}", fmt) as inserter:
                inserter.append(data)
                inserter.finish()
        except Exception as exc:
            raise QueryError(str(exc)) from None
        if self._call(conn, WRITE_ERRORS_SQL, {}) != before:
            raise QueryError("Code: 243. DB::Exception: the insert failed to write its part. (NOT_ENOUGH_SPACE)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._keep.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/ping":
            self._reply(HTTPStatus.OK, b"Ok.\n", {})
            return
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self._body())

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self, query: Mapping[str, str]) -> bool:
        user, password = query.get("user", "default"), query.get("password", "")
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        elif "X-ClickHouse-User" in self.headers:
            user, password = self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        return user == self.server.user and hmac.compare_digest(password.encode(), self.server.password.encode())

    def _handle(self, body: bytes) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        query_id = query.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC"}
        try:
            if not self._authorized(query):
                raise QueryError(
                    f"Code: 516. DB::Exception: {query.get('user', 'default')}: Authentication failed: password is "
                    "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"
                )
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            whole = (query["query"].encode() + b"\n" + body) if "query" in query else body
            insert_match = _INSERT.match(whole)
            insert = None
            if insert_match is not None:
                insert = (insert_match["target"].decode(), insert_match["fmt"].decode())
                body, text = whole[insert_match.end() :], insert_match[0].decode()
            else:
                text, body = whole.decode(errors="replace"), b""
            if not text.strip():
                raise QueryError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            params = {k[len("param_") :]: v for k, v in query.items() if k.startswith("param_")}
            settings = {
                k: v
                for k, v in query.items()
                if k not in _NOT_SETTINGS and k not in _HTTP_ONLY and not k.startswith("param_")
            }
            if "default_format" in query and not _FORMAT.search(text) and insert is None:
                text = f"{text.rstrip().rstrip(';')} FORMAT {query['default_format']}"
            result, fmt = self.server.engine.run(
                text, database=query.get("database"), settings=settings, params=params, insert=insert, body=body
            )
        except QueryError as exc:
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            status = _STATUS.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR)
            self._reply(status, (str(exc).rstrip() + "\n").encode(), headers)
            return
        headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = json.dumps({"read_rows": "0", "written_rows": "0", "result_rows": "0"})
        self._reply(HTTPStatus.OK, result, headers)

    def _reply(self, status: HTTPStatus, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], engine: Engine, *, user: str, password: str, verbose: bool = False
    ) -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.user = user
        self.password = password
        self.verbose = verbose


class ClickHouseHttpProcess:
    """This module as a child process (for tests): ``start``, ``url``, then ``kill`` to make ClickHouse
    unreachable and ``start`` again to bring it back on the same port with the same data."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        user: str = "default",
        password: str = "",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``tls``: (certificate, key) PEM files to serve HTTPS with."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.user, self.password = user, password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ClickHouseHttpProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "clickhouse-http-ready.json"
        ready.unlink(missing_ok=True)
        with open(self.data_dir / "clickhouse-http.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, "--data", str(self.data_dir / "engine"), "--port", str(self.port),
                 "--user", self.user, "--password", self.password, "--ready-file", str(ready),
                 *(("--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])) if self.tls else ())],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,  # inline .proto schemas are cached in cwd
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_text = (self.data_dir / "clickhouse-http.log").read_text(errors="replace")
                raise RuntimeError(f"the ClickHouse HTTP interface did not start:\n{log_text}")
            time.sleep(0.05)
        self.port = json.loads(ready.read_text())["port"]
        return self

    def url(self, database: str) -> str:
        scheme = "clickhouses" if self.tls else "clickhouse"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the engine's data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default="")
    parser.add_argument("--config-file", help="a ClickHouse configuration for the engine")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    parser.add_argument("--tls-key", help="... and this key (PEM)")
    args = parser.parse_args(argv)
    engine = Engine(args.data, args.config_file)
    server = Server((args.host, args.port), engine, user=args.user, password=args.password, verbose=args.verbose)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"listening on {host}:{port}", flush=True)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            json.dump({"host": host, "port": port}, f)
        os.replace(args.ready_file + ".tmp", args.ready_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
