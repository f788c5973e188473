"""The ``otlp`` (alias ``otlp_grpc``) and ``otlphttp`` exporters.

The request bytes go out as they came in when nothing changed them. Which failures are retried follows
the OTLP specification: gRPC UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS
(and RESOURCE_EXHAUSTED with a retry delay), HTTP 429/502/503/504 and connection failures; everything
else (INVALID_ARGUMENT, UNAUTHENTICATED, 400, 401, ...) is permanent. A server's retry delay (RetryInfo,
Retry-After) is honoured.
"""

from __future__ import annotations

import gzip
import logging
from typing import Any, Literal

import grpc
import httpx
import orjson
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import model_validator

from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.exporters.helper import Exporter, QueueSettings, RetrySettings
from meshtrace.collector.receivers.common import SERVICES
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.errors import PermanentError, RetryableError
from meshtrace.model.otlp_json import to_otlp_json

log = logging.getLogger(__name__)

RESPONSES: dict[Signal, Any] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}
RETRYABLE_GRPC = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
RETRYABLE_HTTP = {429, 502, 503, 504}


class TlsSettings(Settings):
    insecure: bool = False
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name_override: str | None = None


class OtlpExporterSettings(Settings):
    endpoint: str = ""
    headers: dict[str, str] = {}
    compression: Literal["gzip", "none", ""] = "gzip"
    timeout: Seconds = 5.0
    tls: TlsSettings = TlsSettings()
    sending_queue: QueueSettings = QueueSettings()
    retry_on_failure: RetrySettings = RetrySettings()
    balancer_name: str | None = None
    keepalive: Any = None
    wait_for_ready: bool = False
    read_buffer_size: Any = None
    write_buffer_size: Any = None

    @model_validator(mode="after")
    def _endpoint(self) -> OtlpExporterSettings:
        if not self.endpoint:
            raise ValueError('requires a non-empty "endpoint"')
        return self


class OtlpHttpExporterSettings(Settings):
    endpoint: str = ""
    traces_endpoint: str = ""
    metrics_endpoint: str = ""
    logs_endpoint: str = ""
    headers: dict[str, str] = {}
    compression: Literal["gzip", "none", ""] = "gzip"
    encoding: Literal["proto", "json"] = "proto"
    timeout: Seconds = 30.0
    tls: TlsSettings = TlsSettings()
    sending_queue: QueueSettings = QueueSettings()
    retry_on_failure: RetrySettings = RetrySettings()
    read_buffer_size: Any = None
    write_buffer_size: Any = None
    max_idle_conns: Any = None
    idle_conn_timeout: Any = None

    @model_validator(mode="after")
    def _endpoint(self) -> OtlpHttpExporterSettings:
        if not (self.endpoint or (self.traces_endpoint or self.metrics_endpoint or self.logs_endpoint)):
            raise ValueError("at least one endpoint must be specified")
        return self


def _retry_delay(metadata: Any) -> float | None:
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _log_partial(component_id: str, signal: Signal, body: bytes) -> None:
    response = RESPONSES[signal]()
    try:
        response.ParseFromString(body)
    except Exception:
        return
    partial = response.partial_success
    rejected = getattr(
        partial,
        {Signal.TRACES: "rejected_spans", Signal.METRICS: "rejected_data_points", Signal.LOGS: "rejected_log_records"}[
            signal
        ],
    )
    if rejected or partial.error_message:
        log.warning(
            "%s: partial success: %d %s rejected: %s", component_id, rejected, signal.item_name, partial.error_message
        )


class OtlpGrpcExporter(Exporter):
    def __init__(self, component_id: str, settings: OtlpExporterSettings, telemetry: Any) -> None:
        super().__init__(component_id, settings.sending_queue, settings.retry_on_failure, settings.timeout, telemetry)
        self.settings = settings
        self.metadata = tuple((k.lower(), str(v)) for k, v in settings.headers.items())
        self.compression = grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, Any] = {}

    def _open(self) -> grpc.aio.Channel:
        endpoint = self.settings.endpoint
        insecure = self.settings.tls.insecure
        for prefix, plain in (("http://", True), ("https://", False)):
            if endpoint.startswith(prefix):
                endpoint, insecure = endpoint[len(prefix) :], plain
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 16 << 20)]
        if insecure:
            return grpc.aio.insecure_channel(endpoint, options=options)
        root = None
        if self.settings.tls.ca_file:
            with open(self.settings.tls.ca_file, "rb") as f:
                root = f.read()
        return grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=root), options=options)

    async def send(self, batch: Batch) -> None:
        if self._channel is None:
            self._channel = self._open()
        call = self._calls.get(batch.signal)
        if call is None:
            call = self._calls[batch.signal] = self._channel.unary_unary(
                f"/{SERVICES[batch.signal]}/Export", request_serializer=None, response_deserializer=None
            )
        try:
            reply = await call(batch.raw, metadata=self.metadata, timeout=self.timeout, compression=self.compression)
        except grpc.aio.AioRpcError as exc:
            code, message = exc.code(), f"rpc error: code = {exc.code().name} desc = {exc.details()}"
            delay = _retry_delay(exc.trailing_metadata())
            if code in RETRYABLE_GRPC or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
                raise RetryableError(message, retry_after=delay) from exc
            raise PermanentError(message) from exc
        _log_partial(self.component_id, batch.signal, reply)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class OtlpHttpExporter(Exporter):
    def __init__(self, component_id: str, settings: OtlpHttpExporterSettings, telemetry: Any) -> None:
        super().__init__(component_id, settings.sending_queue, settings.retry_on_failure, settings.timeout, telemetry)
        self.settings = settings
        base = settings.endpoint.rstrip("/")
        self.urls = {
            Signal.TRACES: settings.traces_endpoint or f"{base}/v1/traces",
            Signal.METRICS: settings.metrics_endpoint or f"{base}/v1/metrics",
            Signal.LOGS: settings.logs_endpoint or f"{base}/v1/logs",
        }
        self._client: httpx.AsyncClient | None = None

    async def send(self, batch: Batch) -> None:
        if self._client is None:
            verify: Any = not self.settings.tls.insecure_skip_verify
            if self.settings.tls.ca_file:
                verify = self.settings.tls.ca_file
            self._client = httpx.AsyncClient(verify=verify, timeout=self.timeout)
        if self.settings.encoding == "json":
            body, media = orjson.dumps(to_otlp_json(batch.message)), "application/json"
        else:
            body, media = batch.raw, "application/x-protobuf"
        headers = {**self.settings.headers, "Content-Type": media}
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            response = await self._client.post(self.urls[batch.signal], content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code < 300:
            if media == "application/x-protobuf":
                _log_partial(self.component_id, batch.signal, response.content)
            return
        message = f"HTTP {response.status_code}: {response.text[:300]}"
        if response.status_code in RETRYABLE_HTTP:
            after = response.headers.get("retry-after")
            seconds = float(after) if after and after.isascii() and after.isdigit() else None
            raise RetryableError(message, retry_after=seconds)
        raise PermanentError(message)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _grpc(component_id: str, settings: OtlpExporterSettings, ctx: Any) -> OtlpGrpcExporter:
    return OtlpGrpcExporter(component_id, settings, ctx.telemetry)


register(Factory("exporter", "otlp", OtlpExporterSettings, _grpc))
register(Factory("exporter", "otlp_grpc", OtlpExporterSettings, _grpc))
register(
    Factory(
        "exporter",
        "otlphttp",
        OtlpHttpExporterSettings,
        lambda cid, settings, ctx: OtlpHttpExporter(cid, settings, ctx.telemetry),
    )
)
