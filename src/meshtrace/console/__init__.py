"""The web console: call chains, service map, health, comparison and status, served by the backend.

Nothing is built on install: ``static/`` holds the page shell, small ES modules (one per page) and two
vendored libraries (``static/vendor/README.md``). Every ``/console/...`` path answers with the shell, so
page URLs, which carry their query, can be shared and reloaded; the modules then read the query APIs with
the token kept in the browser session.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(resources.files("meshtrace.console").joinpath("static")))


def mount(app: FastAPI, *, auth_enabled: bool) -> None:
    """Serve the console under ``/console`` and send ``/`` there."""
    shell = (STATIC / "index.html").read_text(encoding="utf-8")
    shell = shell.replace("{{AUTH}}", "true" if auth_enabled else "false")
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/traces")

    @app.get("/console", include_in_schema=False)
    @app.get("/console/{page:path}", include_in_schema=False)
    async def console(page: str = "") -> HTMLResponse:
        return HTMLResponse(shell, headers={"Cache-Control": "no-cache"})
