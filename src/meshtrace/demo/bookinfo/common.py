"""What the Bookinfo services share: header forwarding, the outbound client, running the server."""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request

# productpage's getForwardHeaders (and the same list in reviews and details).
FORWARDED = (
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "end-user",
)

log = logging.getLogger("bookinfo")


def forward_headers(request: Request, user: str | None = None) -> dict[str, str]:
    """The headers a Bookinfo service copies from its incoming request onto each call it makes.

    ``BOOKINFO_FORWARD_HEADERS=false`` in a container's environment makes it an app that forgets to: its
    outbound calls then start traces of their own (what ``meshtrace doctor --live`` detects)."""
    if os.environ.get("BOOKINFO_FORWARD_HEADERS", "true").lower() == "false":
        return {"end-user": user} if user else {}
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    if user:
        headers["end-user"] = user
    return headers


def client() -> httpx.AsyncClient:
    """Calls go through the pod's sidecar (``HTTP_PROXY``), or the node proxy when there is none."""
    proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    return httpx.AsyncClient(proxy=proxy, trust_env=False, limits=httpx.Limits(max_keepalive_connections=32))


async def get_json(http: httpx.AsyncClient, url: str, headers: dict[str, str], seconds: float, tries: int = 1) -> Any:
    """GET ``url``; ``None`` when every try failed (error status, timeout or connection failure)."""
    for attempt in range(tries):
        try:
            response = await http.get(url, headers=headers, timeout=seconds)
        except httpx.HTTPError as exc:
            log.warning("GET %s failed (try %d/%d): %s", url, attempt + 1, tries, exc)
            continue
        if response.status_code == 200:
            return response.json()
        log.warning("GET %s answered %d (try %d/%d)", url, response.status_code, attempt + 1, tries)
    return None


def run(app: Starlette, port: int) -> None:
    """Serve on the address a Kubernetes container would bind 0.0.0.0 for (see ``meshtrace.mesh.pods``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("MESHTRACE_LISTEN_HOST", "127.0.0.1")
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, http="httptools", loop="uvloop"
    )
    server = uvicorn.Server(config)
    log.info("listening on %s:%d", host, port)
    server.run()
