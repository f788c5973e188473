"""Extensions: ``health_check`` and ``file_storage``.

``health_check`` answers ``{"status": "Server available", ...}`` with 200 once every pipeline runs and
503 before and while shutting down. Its ``port`` setting (replaced by ``endpoint`` in 2021, removed in
2022) is accepted and becomes ``0.0.0.0:<port>``, which is where old configurations expected it.

``file_storage`` is a directory other components keep state in: the exporters' persistent queues.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshtrace.collector.component import Component, Host
from meshtrace.collector.registry import NO_SIGNALS, Factory, register
from meshtrace.collector.settings import Endpoint, Seconds, Settings
from meshtrace.errors import PermanentError
from meshtrace.listen import RunningHttp, bind, parse_address, serve_http


class HealthCheckSettings(Settings):
    endpoint: Endpoint = "localhost:13133"
    path: str = "/"
    check_collector_pipeline: Any = None
    response_body: Any = None
    tls: Any = None


def migrate_health_check(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    if "port" not in raw:
        return raw, []
    settings = dict(raw)
    port = settings.pop("port")
    if "endpoint" in settings:
        return settings, [f"'port: {port}' is ignored: 'endpoint' replaced it (removed upstream in 2022)"]
    settings["endpoint"] = f"0.0.0.0:{port}"
    return settings, [
        f"'port: {port}' was replaced by 'endpoint' (removed upstream in 2022); listening on 0.0.0.0:{port}"
    ]


class HealthCheck(Component):
    def __init__(self, component_id: str, settings: HealthCheckSettings) -> None:
        self.component_id = component_id
        self.settings = settings
        self.ready = False
        self.since = datetime.now(UTC)
        self.started_at = time.monotonic()
        self.address = ""
        self._http: RunningHttp | None = None

    async def status(self, request: Request) -> Response:
        if self.ready:
            body = {
                "status": "Server available",
                "upSince": self.since.isoformat(),
                "uptime": f"{time.monotonic() - self.started_at:.3f}s",
            }
            return Response(orjson.dumps(body), 200, media_type="application/json")
        return Response(orjson.dumps({"status": "Server not available"}), 503, media_type="application/json")

    async def start(self, host: Host) -> None:
        sock = bind(parse_address(self.settings.endpoint), self.component_id)
        self._http = await serve_http(Starlette(routes=[Route(self.settings.path, self.status)]), sock)
        self.address = self._http.address

    async def shutdown(self) -> None:
        self.ready = False
        if self._http is not None:
            await self._http.stop()
            self._http = None


class FileStorageSettings(Settings):
    directory: str = "/var/lib/otelcol/file_storage"
    create_directory: bool = False
    fsync: bool = False
    timeout: Seconds = 1.0
    compaction: Any = None


class FileStorage(Component):
    def __init__(self, component_id: str, settings: FileStorageSettings) -> None:
        self.component_id = component_id
        self.settings = settings

    @property
    def fsync(self) -> bool:
        return self.settings.fsync

    def directory_for(self, kind: str, component_id: str) -> str:
        return os.path.join(self.settings.directory, f"{kind}_{component_id.replace('/', '_')}")

    async def start(self, host: Host) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        if self.settings.create_directory:
            os.makedirs(self.settings.directory, exist_ok=True)
        if not os.path.isdir(self.settings.directory):
            raise PermanentError(f"{self.component_id}: directory must exist: {self.settings.directory}")


register(
    Factory(
        "extension",
        "health_check",
        HealthCheckSettings,
        lambda cid, s, ctx: HealthCheck(cid, s),
        signals=NO_SIGNALS,
        migrate=migrate_health_check,
    )
)
register(
    Factory(
        "extension", "file_storage", FileStorageSettings, lambda cid, s, ctx: FileStorage(cid, s), signals=NO_SIGNALS
    )
)
