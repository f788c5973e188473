"""The ``zipkin`` receiver: Zipkin v2 JSON on ``POST /api/v2/spans`` (what Istio's zipkin provider sends)."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshtrace.collector.component import Host
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.receivers.common import JSON, Receiver, http_error
from meshtrace.collector.registry import TRACES_ONLY, Factory, register
from meshtrace.collector.settings import Endpoint, Settings
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import IngestError, PermanentError, RetryableError
from meshtrace.ingest.body import decode_content, read_limited
from meshtrace.listen import RunningHttp, bind, parse_address, serve_http
from meshtrace.model.zipkin import parse_zipkin_json

log = logging.getLogger(__name__)


class ZipkinReceiverSettings(Settings):
    endpoint: Endpoint = "localhost:9411"
    parse_string_tags: bool = False
    max_request_body_size: int = 20 << 20


class ZipkinReceiver(Receiver):
    def __init__(self, component_id: str, settings: ZipkinReceiverSettings, telemetry: Telemetry) -> None:
        super().__init__(component_id, telemetry)
        self.settings = settings
        self._http: RunningHttp | None = None

    async def spans(self, request: Request) -> Response:
        try:
            body = await read_limited(
                request.stream(), self.settings.max_request_body_size, request.headers.get("content-length")
            )
            body = decode_content(body, request.headers.get("content-encoding"), self.settings.max_request_body_size)
            await self.push(Batch(Signal.TRACES, message=parse_zipkin_json(body)), "http")
        except (IngestError, PermanentError, RetryableError) as exc:
            return http_error(exc, JSON)
        return Response(status_code=202)

    async def start(self, host: Host) -> None:
        sock = bind(parse_address(self.settings.endpoint), f"{self.component_id}")
        app = Starlette(routes=[Route("/api/v2/spans", self.spans, methods=["POST"])])
        self._http = await serve_http(app, sock)
        self.addresses["http"] = self._http.address
        log.info("%s listening: http %s", self.component_id, self.addresses["http"])

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None


register(
    Factory(
        "receiver",
        "zipkin",
        ZipkinReceiverSettings,
        lambda cid, settings, ctx: ZipkinReceiver(cid, settings, ctx.telemetry),
        signals=TRACES_ONLY,
    )
)
