"""What every query route shares: the caller's tenant, and errors translated into HTTP in one place."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from meshtrace.errors import InvalidQuery, MeshtraceError, QueryTimeout, StoreError, TraceNotFound, Unauthenticated
from meshtrace.ingest.auth import TokenAuth
from meshtrace.model.spans import SpanKind

JAEGER_PREFIX = "/api/"

_STATUS: dict[type[Exception], int] = {
    Unauthenticated: 401,
    InvalidQuery: 400,
    TraceNotFound: 404,
    QueryTimeout: 504,
    StoreError: 503,
}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def parse_kind(text: str) -> SpanKind:
    """A span kind as the APIs take it (``server``, ``SPAN_KIND_SERVER``, ``Server``, ``2``)."""
    try:
        return SpanKind.parse(text)
    except (KeyError, IndexError) as exc:
        raise InvalidQuery(f"unknown span kind {text!r}") from exc


def tenant_of(request: Request) -> str:
    """FastAPI dependency: the tenant of the request's token (401 without a valid one)."""
    auth: TokenAuth = request.app.state.auth
    return auth.tenant_for(request.headers.get)


def error_response(request: Request, error: MeshtraceError) -> JSONResponse:
    """Jaeger's error envelope under /api/, ``{"error": {...}}`` elsewhere."""
    status = next((code for cls, code in _STATUS.items() if isinstance(error, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    message = str(error)
    if request.url.path.startswith(JAEGER_PREFIX):
        body: dict[str, Any] = {
            "data": None,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"code": status, "msg": message}],
        }
    else:
        body = {"error": {"code": status, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)
