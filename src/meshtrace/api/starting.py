"""What the HTTP ports answer while the store opens (a ClickHouse server not up yet, a long log replay).

The ports are bound first so that Kubernetes sees a live process (``/healthz``) that is not ready
(``/readyz`` says why); everything else is a retryable 503, so Collectors keep their data and try again.
``Switch`` then swaps the real app in without closing a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from meshtrace.errors import Overloaded, StoreError
from meshtrace.ingest.http_app import error_response, media_type

from .common import JSONResponse
from .common import error_response as query_error

RETRY_AFTER_S = 5


class Switch:
    """An ASGI app that forwards to whichever app it holds now."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def query_app(problems: Callable[[], list[str]]) -> Starlette:
    """The query port before the store is open."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": False, "problems": problems()}, status_code=503)

    async def other(request: Request) -> Response:
        response = query_error(request, StoreError(f"the backend is starting: {'; '.join(problems())}"))
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/{path:path}", other, methods=methods),
        ]
    )


def otlp_app(problems: Callable[[], list[str]]) -> Starlette:
    """The OTLP/HTTP port before the store is open: every export is refused as retryable (503, UNAVAILABLE)."""

    async def refuse(request: Request) -> Response:
        error = Overloaded(f"the backend is starting: {'; '.join(problems())}", retry_after=RETRY_AFTER_S)
        return error_response(error, media_type(request))

    return Starlette(routes=[Route("/{path:path}", refuse, methods=["GET", "POST", "PUT", "HEAD", "OPTIONS"])])
