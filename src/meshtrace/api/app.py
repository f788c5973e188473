"""The query HTTP app (port 16686 by default): Jaeger-compatible and native APIs, health, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshtrace import __version__, console
from meshtrace.errors import MeshtraceError, Unauthenticated
from meshtrace.ingest.auth import TokenAuth
from meshtrace.metrics import Metrics
from meshtrace.query.service import QueryService

from . import analytics, jaeger, native, spm, tempo
from .common import JSONResponse, error_response
from .prom import TempoSeries


def create_app(
    query: QueryService,
    auth: TokenAuth,
    metrics: Metrics,
    readiness: Callable[[], list[str]],
    *,
    status: Callable[[str], dict[str, Any]] | None = None,
) -> FastAPI:
    """``readiness()`` returns what keeps the backend from being ready (empty when ready); ``status(tenant)``
    what the console's status page shows."""
    app = FastAPI(
        title="meshtrace query API",
        version=__version__,
        description="Jaeger-compatible routes under /api, Tempo-compatible ones under /tempo, meshtrace's native "
        "routes under /meshtrace/v1. "
        "Send the tenant's token as 'Authentication: <token>' or 'Authorization: Bearer <token>'.",
        default_response_class=JSONResponse,
    )
    app.state.query = query
    app.state.auth = auth
    app.state.readiness = readiness
    app.state.status = status
    app.include_router(spm.router)
    app.include_router(jaeger.router)
    app.include_router(native.router)
    app.include_router(analytics.router)
    app.include_router(tempo.router)

    console.mount(app, auth_enabled=auth.enabled)

    @app.exception_handler(MeshtraceError)
    async def meshtrace_error(request: Request, exc: MeshtraceError) -> Response:
        return error_response(request, exc)

    @app.get("/healthz", tags=["operations"], response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        problems = readiness()
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=503 if problems else 200)

    @app.get("/metrics", tags=["operations"])
    async def prometheus(request: Request) -> Response:
        body = generate_latest(metrics.registry)
        tenant = _scrape_tenant(auth, request)
        if tenant is not None and query.analytics is not None:
            edges = await query.run(query.analytics.graph_totals, tenant)
            operations = await query.run(query.analytics.span_metric_totals, tenant)
            body += generate_latest(TempoSeries(edges, operations))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _scrape_tenant(auth: TokenAuth, request: Request) -> str | None:
    """Whose trace-derived series a scrape gets: its token's tenant, everyone's ``default`` without auth."""
    if not auth.enabled:
        return auth.tenant_for_token(None)
    try:
        return auth.tenant_for(request.headers.get)
    except Unauthenticated:
        return None
