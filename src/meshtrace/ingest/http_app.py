"""OTLP/HTTP (``POST /v1/traces``, protobuf or JSON, gzip) and Zipkin v2 (``POST /api/v2/spans``).

Responses use the request's encoding, as the OTLP specification asks: an ExportTraceServiceResponse on
success (with ``partial_success`` when spans were refused) and a ``google.rpc.Status`` on failure, with
400/401/413/415 for permanent errors and 503 plus ``Retry-After`` when the sender should retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshtrace.errors import (
    IngestError,
    MalformedRequest,
    Overloaded,
    PayloadTooLarge,
    StoreError,
    Unauthenticated,
    UnsupportedMedia,
)
from meshtrace.ingest.auth import TokenAuth
from meshtrace.ingest.body import decode_content, read_limited
from meshtrace.ingest.service import IngestService, response_protobuf
from meshtrace.model.otlp_json import parse_otlp_json, response_json
from meshtrace.model.zipkin import parse_zipkin_json

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_HTTP_STATUS: dict[type[Exception], tuple[int, int]] = {  # error → (HTTP status, google.rpc.Code)
    Unauthenticated: (401, 16),
    MalformedRequest: (400, 3),
    PayloadTooLarge: (413, 8),
    UnsupportedMedia: (415, 3),
    Overloaded: (503, 14),
    StoreError: (503, 14),
}


def media_type(request: Request) -> str:
    value = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if value in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if value == JSON or value.endswith("+json"):
        return JSON
    return value


def error_response(error: Exception, media: str) -> Response:
    status, code = next((v for cls, v in _HTTP_STATUS.items() if isinstance(error, cls)), (500, 13))
    message = str(error)
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    elif isinstance(error, StoreError):
        headers["Retry-After"] = "5"
    if media == PROTOBUF:
        body = status_pb2.Status(code=code, message=message).SerializeToString()
    else:
        body, media = orjson.dumps({"code": code, "message": message}), JSON
    return Response(body, status_code=status, media_type=media, headers=headers)


class OtlpHttpApp:
    """The ASGI app behind the OTLP/HTTP port."""

    def __init__(self, ingest: IngestService, auth: TokenAuth, max_body: int) -> None:
        self.ingest = ingest
        self.auth = auth
        self.max_body = max_body
        self.app = Starlette(
            routes=[
                Route("/v1/traces", self.otlp_traces, methods=["POST"]),
                Route("/api/v2/spans", self.zipkin_spans, methods=["POST"]),
            ]
        )

    async def _body(self, request: Request) -> bytes:
        raw = await read_limited(request.stream(), self.max_body, request.headers.get("content-length"))
        return decode_content(raw, request.headers.get("content-encoding"), self.max_body)

    async def _handle(
        self, request: Request, transport: str, media: str, work: Callable[[str, bytes], Awaitable[Response]]
    ) -> Response:
        try:
            tenant = self.auth.tenant_for(request.headers.get)
            return await work(tenant, await self._body(request))
        except (IngestError, StoreError) as exc:
            self.ingest.count_failure(transport, exc)
            return error_response(exc, media)

    async def otlp_traces(self, request: Request) -> Response:
        media = media_type(request)

        async def work(tenant: str, body: bytes) -> Response:
            if media == PROTOBUF:
                result = await self.ingest.export_bytes(tenant, body, "otlp_http")
                return Response(response_protobuf(result), media_type=PROTOBUF)
            if media == JSON:
                result = await self.ingest.export_message(tenant, parse_otlp_json(body), "otlp_http")
                return Response(response_json(result.rejected, result.message), media_type=JSON)
            raise UnsupportedMedia(
                f"Content-Type {request.headers.get('content-type')!r} is not OTLP; use {PROTOBUF} or {JSON}"
            )

        return await self._handle(request, "otlp_http", media if media == PROTOBUF else JSON, work)

    async def zipkin_spans(self, request: Request) -> Response:
        media = media_type(request)

        async def work(tenant: str, body: bytes) -> Response:
            if media not in (JSON, ""):
                raise UnsupportedMedia("only Zipkin v2 JSON is accepted (Content-Type: application/json)")
            result = await self.ingest.export_message(tenant, parse_zipkin_json(body), "zipkin")
            if result.rejected:
                # Zipkin has no partial success; the body says what was refused, 202 says the rest is in.
                body_out = orjson.dumps({"rejectedSpans": result.rejected, "message": result.message})
                return Response(body_out, status_code=202, media_type=JSON)
            return Response(status_code=202)

        return await self._handle(request, "zipkin", JSON, work)
