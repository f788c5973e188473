"""Every error meshtrace raises on purpose, in one tree.

Components raise these; the edges (gRPC servicer, HTTP handlers, CLI) translate them into status codes,
HTTP responses and exit codes in one place each. Errors from libraries (chdb, clickhouse-connect,
protobuf) are translated where they are called, so callers only ever see this tree::

    MeshtraceError
    ├── ConfigError            bad flags, env or YAML; names the file, the path in it and the fix
    ├── IngestError            an export request that cannot be taken as sent
    │   ├── Unauthenticated    no token or an unknown one          → gRPC UNAUTHENTICATED / HTTP 401
    │   ├── MalformedRequest   body is not OTLP / Zipkin           → gRPC INVALID_ARGUMENT / HTTP 400
    │   ├── PayloadTooLarge    body over the limit, also unzipped  → gRPC RESOURCE_EXHAUSTED / HTTP 413
    │   ├── UnsupportedMedia   content type or encoding unknown    → HTTP 415
    │   └── Overloaded         the writer is behind; retry later   → gRPC UNAVAILABLE / HTTP 503
    ├── PipelineError          a collector component could not take or pass on data
    │   ├── PermanentError     retrying will not help (bad data, 400/401, INVALID_ARGUMENT): dropped, counted
    │   └── RetryableError     try again later (queue full, memory limit, 503/UNAVAILABLE)
    ├── StoreError             the ClickHouse engine failed or is unreachable
    │   ├── StoreUnavailable   no answer, or out of disk/memory/parts mid-write: a write's outcome is unknown
    │   └── StoreRejectedInput the data of an insert does not parse: refused every time, nothing written
    └── QueryError             a query that cannot be answered as asked
        ├── InvalidQuery       bad parameter (id, duration, time)  → HTTP 400
        ├── TraceNotFound      no such trace for this tenant       → HTTP 404
        └── QueryTimeout       ran past --query-timeout, stopped   → HTTP 504
"""

from __future__ import annotations


class MeshtraceError(Exception):
    """Base of every error meshtrace raises on purpose."""


class ConfigError(MeshtraceError):
    """A configuration value is wrong; says where (file and path) and how to fix it."""

    def __init__(self, message: str, *, source: str = "", path: str = "", fix: str = "") -> None:
        self.message = message
        self.source = source
        self.path = path
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.source, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  fix: {self.fix}" if self.fix else text


class IngestError(MeshtraceError):
    """An export request that cannot be accepted as sent."""


class Unauthenticated(IngestError):
    """No token, or a token that maps to no tenant."""


class MalformedRequest(IngestError):
    """The body does not decode as the protocol its content type names."""


class PayloadTooLarge(IngestError):
    """The body (or what it decompresses to) is over the configured limit."""


class UnsupportedMedia(IngestError):
    """A content type or content encoding meshtrace does not speak."""


class Overloaded(IngestError):
    """The writer is behind; the sender should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PipelineError(MeshtraceError):
    """A collector component could not take or pass on data."""


class PermanentError(PipelineError):
    """Data that will never be accepted as it is; retrying is pointless."""


class RetryableError(PipelineError):
    """A temporary refusal; the sender should retry, after ``retry_after`` seconds if given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StoreError(MeshtraceError):
    """The storage engine failed; the message carries the engine's own words."""


class StoreUnavailable(StoreError):
    """The store could not take the request: no answer (unreachable, connection lost mid-request), or a
    resource ran out while writing (disk, memory, parts; a failure pushing to one materialized view after
    others took the rows). An insert may have committed in whole or in part, so only the same insert, with
    the same deduplication token, is safe to repeat."""


class StoreRejectedInput(StoreError):
    """The store could not parse an insert's data. The same bytes are refused every time, and the insert
    wrote nothing (the data is parsed before any row reaches a table), whatever earlier attempts at it
    got: so, unlike other refusals after an unanswered attempt, its batch may be split."""


class QueryError(MeshtraceError):
    """A query that cannot be answered as asked."""


class InvalidQuery(QueryError):
    """A query parameter is malformed (trace id, duration, time, tag filter)."""


class TraceNotFound(QueryError):
    """No trace with this id is visible to the caller's tenant."""


class QueryTimeout(QueryError):
    """The engine stopped a read that ran past the configured time limit."""
