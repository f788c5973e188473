"""HTTP/1.1 as the proxy treats it: which header names it manages, drops or reads, status reasons, ``Date``.
Shared by both sides of a connection (``http1``) and compiled with them (``native``)."""

from __future__ import annotations

import time
from typing import Any, Final

# Headers the proxy manages itself: captured, then written again (or replaced) upstream.
MANAGED: Final = frozenset(
    (
        b"host",
        b"x-request-id",
        b"x-forwarded-proto",
        b"traceparent",
        b"tracestate",
        b"x-envoy-decorator-operation",
        b"content-length",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
        b"b3",
        b"expect",
    )
)
# Passed through unchanged, but the proxy reads them too.
OBSERVED: Final = frozenset((b"user-agent", b"x-client-trace-id", b"x-envoy-force-trace"))
HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
    )
)
RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length", b"x-envoy-upstream-service-time"}
# A response header of another length (server, date, content-type...) is passed on without looking its name up
# (a fresh name hashed and compared: ~440 instructions).
DROPPED_LENGTHS: Final = frozenset(len(name) for name in RESPONSE_DROP)
# What a header name is to the proxy, found by the name as received (a ``lower()`` and up to three set
# lookups per header otherwise): its lower case, its kind in a request, and whether a response drops it.
PASS: Final = 0  # passed on as received
KEEP: Final = 1  # managed: captured, then written again
HOP: Final = 2  # hop-by-hop: dropped
OBSERVE: Final = 3  # passed on, and read by the proxy
_NAMES: Final[dict[bytes, tuple[bytes, int, bool]]] = {}
_MAX_NAMES: Final = 4096  # a client inventing names empties it now and then


def header_name(name: bytes) -> tuple[bytes, int, bool]:
    known = _NAMES.get(name)
    if known is None:
        lower = name.lower()
        if lower in MANAGED:
            kind = KEEP
        elif lower in HOP_BY_HOP:
            kind = HOP
        else:
            kind = OBSERVE if lower in OBSERVED else PASS
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        known = _NAMES[name] = (lower, kind, lower in RESPONSE_DROP)
    return known


REASONS: Final = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


_last_date: Final[list[Any]] = [0, b""]


def http_date() -> bytes:
    now = int(time.time())
    if _last_date[0] != now:
        _last_date[0] = now
        _last_date[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _last_date[1]
