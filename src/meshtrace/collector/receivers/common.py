"""What receivers share: the OTLP service names, counting, and turning pipeline errors into gRPC and
HTTP answers."""

from __future__ import annotations

import logging

import orjson
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from meshtrace.collector.component import Component, Consumer, refusal
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import PayloadTooLarge, PermanentError, RetryableError, UnsupportedMedia

log = logging.getLogger(__name__)

SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Receiver(Component):
    """What receivers share: per-signal consumers, counting, and error translation."""

    name = "receiver"

    def __init__(self, component_id: str, telemetry: Telemetry) -> None:
        self.component_id = component_id
        self.telemetry = telemetry
        self.consumers: dict[Signal, Consumer] = {}
        self.addresses: dict[str, str] = {}

    def admit(self, signal: Signal, transport: str) -> None:
        """Refuse before decoding when the pipeline already refuses (e.g. memory over its limit)."""
        consumer = self.consumers.get(signal)
        error = refusal(consumer) if consumer is not None else None
        if error is not None:
            self.telemetry.refused_requests.labels(self.component_id, transport).inc()
            raise error

    async def push(self, batch: Batch, transport: str) -> None:
        consumer = self.consumers.get(batch.signal)
        if consumer is None:
            raise PermanentError(f"{self.component_id} has no {batch.signal} pipeline")
        labels = (self.component_id, transport)
        try:
            await consumer.consume(batch)
        except (PermanentError, RetryableError):
            self.telemetry.refused[batch.signal].labels(*labels).inc(batch.items)
            raise
        except Exception as exc:
            self.telemetry.refused[batch.signal].labels(*labels).inc(batch.items)
            log.exception("%s: the pipeline failed", self.component_id)
            raise RetryableError(f"the pipeline failed: {exc}") from exc
        self.telemetry.accepted[batch.signal].labels(*labels).inc(batch.items)


def grpc_trailers(retry_after: float | None) -> tuple[tuple[str, bytes], ...] | None:
    if retry_after is None:
        return None
    status = status_pb2.Status(code=14)
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=max(1, int(retry_after)))))
    return (("grpc-status-details-bin", status.SerializeToString()),)


def http_error(error: Exception, media: str) -> Response:
    if isinstance(error, RetryableError):
        status, code = 503, 14
    elif isinstance(error, UnsupportedMedia):
        status, code = 415, 3
    elif isinstance(error, PayloadTooLarge):
        status, code = 413, 8
    else:
        status, code = 400, 3
    headers = {}
    if isinstance(error, RetryableError):
        headers["Retry-After"] = str(max(1, round(error.retry_after or 1)))
    if media == PROTOBUF:
        return Response(status_pb2.Status(code=code, message=str(error)).SerializeToString(), status, headers, PROTOBUF)
    return Response(orjson.dumps({"code": code, "message": str(error)}), status, headers, JSON)
