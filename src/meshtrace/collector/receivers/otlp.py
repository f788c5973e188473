"""The ``otlp`` receiver: OTLP/gRPC and OTLP/HTTP (protobuf or JSON, gzip) for traces, metrics and logs.

A request is acknowledged when the pipeline has taken it; the pipeline's retryable refusals (queue
full, memory limit) reach the sender as UNAVAILABLE / 503, permanent ones as INVALID_ARGUMENT / 400.
Request bytes are decoded once, to count what they hold and refuse garbage, and forwarded as they are.

Endpoints: upstream listens on ``localhost`` by default since v0.104.0. A bare ``grpc:``/``http:``
protocol (as in older configs written for Kubernetes) listens on ``0.0.0.0``, with a warning saying so.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from pydantic import model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshtrace.collector.component import Host
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.receivers.common import JSON, PROTOBUF, SERVICES, Receiver, grpc_trailers, http_error
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Endpoint, Settings
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import IngestError, PermanentError, RetryableError, UnsupportedMedia
from meshtrace.ingest.body import decode_content, read_limited
from meshtrace.listen import RunningHttp, bind, in_pod, parse_address, serve_http
from meshtrace.model.otlp_json import parse_otlp_json_request

log = logging.getLogger(__name__)


class GrpcProtocol(Settings):
    endpoint: Endpoint = "localhost:4317"
    max_recv_msg_size_mib: float = 4
    # Tuning knobs upstream accepts; meshtrace leaves them to gRPC's defaults.
    transport: str | None = None
    read_buffer_size: Any = None
    write_buffer_size: Any = None
    max_concurrent_streams: Any = None
    keepalive: Any = None
    include_metadata: bool | None = None


class HttpProtocol(Settings):
    endpoint: Endpoint = "localhost:4318"
    traces_url_path: str = "/v1/traces"
    metrics_url_path: str = "/v1/metrics"
    logs_url_path: str = "/v1/logs"
    max_request_body_size: int = 20 << 20
    include_metadata: bool | None = None
    cors: Any = None


class Protocols(Settings):
    grpc: GrpcProtocol | None = None
    http: HttpProtocol | None = None


class OtlpReceiverSettings(Settings):
    protocols: Protocols = Protocols()

    @model_validator(mode="after")
    def _one_protocol(self) -> OtlpReceiverSettings:
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ValueError("must specify at least one protocol when using the OTLP receiver")
        return self


def migrate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    notes = []
    if not isinstance(raw.get("protocols") or {}, dict):
        return raw, []  # not a map: the settings model says so, with the path
    protocols = dict(raw.get("protocols") or {})
    for name, port in (("grpc", 4317), ("http", 4318)):
        if name in protocols and protocols[name] is None:
            protocols[name] = {"endpoint": f"0.0.0.0:{port}"}
            notes.append(
                f"protocols::{name} has no endpoint: listening on 0.0.0.0:{port} as this configuration expects "
                f"(upstream has defaulted to localhost:{port} since v0.104.0; set 'endpoint' to be explicit)"
            )
    return {**raw, "protocols": protocols}, notes


def _grouped(pairs: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for key, value in pairs:
        out[key.lower()] = (*out.get(key.lower(), ()), value)
    return out


class OtlpReceiver(Receiver):
    def __init__(self, component_id: str, settings: OtlpReceiverSettings, telemetry: Telemetry) -> None:
        super().__init__(component_id, telemetry)
        self.settings = settings
        self._grpc: grpc.aio.Server | None = None
        self._http: RunningHttp | None = None

    # -- gRPC --------------------------------------------------------------------------------------

    def _grpc_method(self, signal: Signal) -> Any:
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                self.admit(signal, "grpc")
                metadata = None
                if self.settings.protocols.grpc is not None and self.settings.protocols.grpc.include_metadata:
                    metadata = _grouped((k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str))
                await self.push(Batch.parse(signal, request, metadata), "grpc")
            except PermanentError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except RetryableError as exc:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, str(exc), trailing_metadata=grpc_trailers(exc.retry_after)
                )
            return b""  # an empty Export*ServiceResponse

        return grpc.unary_unary_rpc_method_handler(export)

    async def _start_grpc(self, settings: GrpcProtocol) -> None:
        limit = int(settings.max_recv_msg_size_mib * (1 << 20))
        server = self._grpc = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)]
        )
        handlers = [
            grpc.method_handlers_generic_handler(SERVICES[signal], {"Export": self._grpc_method(signal)})
            for signal in self.consumers
        ]
        server.add_generic_rpc_handlers(tuple(handlers))
        address = in_pod(parse_address(settings.endpoint))
        try:
            port = server.add_insecure_port(str(address))
        except RuntimeError as exc:
            raise RetryableError(f"{self.component_id}: cannot listen on {address}") from exc
        await server.start()
        self.addresses["grpc"] = f"{address.host}:{port}"

    # -- HTTP --------------------------------------------------------------------------------------

    def _http_route(self, signal: Signal, settings: HttpProtocol) -> Any:
        async def export(request: Request) -> Response:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            reply = PROTOBUF if media in (PROTOBUF, "application/protobuf") else JSON
            try:
                body = await read_limited(
                    request.stream(), settings.max_request_body_size, request.headers.get("content-length")
                )
                body = decode_content(body, request.headers.get("content-encoding"), settings.max_request_body_size)
                metadata = _grouped(request.headers.items()) if settings.include_metadata else None
                if reply == PROTOBUF:
                    batch = Batch.parse(signal, body, metadata)
                elif media == JSON or media.endswith("+json"):
                    message = parse_otlp_json_request(body, signal.request_type)
                    batch = Batch(signal, message=message, metadata=metadata)
                else:
                    raise UnsupportedMedia(f"Content-Type {media!r} is not OTLP; use {PROTOBUF} or {JSON}")
                await self.push(batch, "http")
            except (IngestError, PermanentError, RetryableError) as exc:
                return http_error(exc, reply)
            return Response(b"" if reply == PROTOBUF else b"{}", 200, media_type=reply)

        return export

    async def _start_http(self, settings: HttpProtocol) -> None:
        paths = {
            Signal.TRACES: settings.traces_url_path,
            Signal.METRICS: settings.metrics_url_path,
            Signal.LOGS: settings.logs_url_path,
        }
        routes = [Route(paths[s], self._http_route(s, settings), methods=["POST"]) for s in self.consumers]
        sock = bind(parse_address(settings.endpoint), f"{self.component_id} http")
        self._http = await serve_http(Starlette(routes=routes), sock)
        self.addresses["http"] = self._http.address

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: Host) -> None:
        protocols = self.settings.protocols
        if protocols.grpc is not None:
            await self._start_grpc(protocols.grpc)
        if protocols.http is not None:
            await self._start_http(protocols.http)
        log.info("%s listening: %s", self.component_id, ", ".join(f"{k} {v}" for k, v in self.addresses.items()))

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
            self._grpc = None


register(
    Factory(
        "receiver",
        "otlp",
        OtlpReceiverSettings,
        lambda cid, settings, ctx: OtlpReceiver(cid, settings, ctx.telemetry),
        migrate=migrate,
    )
)
