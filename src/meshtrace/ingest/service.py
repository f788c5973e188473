"""The ingest service both transports call: validate, write durably, report partial success."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from meshtrace.errors import MalformedRequest, Overloaded, PayloadTooLarge, StoreError, Unauthenticated
from meshtrace.metrics import Metrics
from meshtrace.model.validate import Validated, validate, validate_bytes
from meshtrace.store.api import SpanBatch, SpanWriter

log = logging.getLogger(__name__)

OUTCOMES: dict[type[Exception], str] = {
    Unauthenticated: "unauthenticated",
    MalformedRequest: "malformed",
    PayloadTooLarge: "too_large",
    Overloaded: "overloaded",
    StoreError: "store_error",
}


@dataclass(frozen=True, slots=True)
class ExportResult:
    accepted: int
    rejected: int
    message: str


def response_protobuf(result: ExportResult) -> bytes:
    """The binary ExportTraceServiceResponse; ``partial_success`` only when spans were refused."""
    response = ExportTraceServiceResponse()
    if result.rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=result.rejected, error_message=result.message)
        )
    return response.SerializeToString()


@dataclass(frozen=True, slots=True)
class Rejection:
    """One export request with rejected spans, as the console's status page lists them."""

    time_ns: int
    transport: str
    rejected: int
    accepted: int
    reasons: dict[str, int]
    message: str


class IngestService:
    RECENT = 50  # rejections kept per tenant

    def __init__(
        self,
        writer: SpanWriter,
        metrics: Metrics,
        *,
        retention_ns: int | None = None,
        max_request_spans: int = 100_000,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.retention_ns = retention_ns
        self.max_request_spans = max_request_spans
        self._rejections: dict[str, deque[Rejection]] = {}
        self.totals: dict[str, dict[str, int]] = {}  # per tenant since start: received, accepted, rejected
        self._failure_message = ""
        self._failure_logged = 0.0
        self._failures_unlogged = 0

    def recent_rejections(self, tenant: str) -> list[Rejection]:
        """The tenant's latest requests with rejected spans, newest first."""
        return list(reversed(self._rejections.get(tenant, ())))

    def _min_start_ns(self) -> int:
        return time.time_ns() - self.retention_ns if self.retention_ns else 0

    async def export_bytes(self, tenant: str, raw: bytes, transport: str) -> ExportResult:
        """A binary OTLP ExportTraceServiceRequest (gRPC, OTLP/HTTP protobuf)."""
        return await self._store(tenant, validate_bytes(raw, min_start_ns=self._min_start_ns()), transport)

    async def export_message(self, tenant: str, request: ExportTraceServiceRequest, transport: str) -> ExportResult:
        """A request decoded from OTLP/JSON or converted from Zipkin."""
        return await self._store(tenant, validate(request, min_start_ns=self._min_start_ns()), transport)

    async def _store(self, tenant: str, checked: Validated, transport: str) -> ExportResult:
        received = checked.accepted + checked.rejected
        if received > self.max_request_spans:
            # Refused whole, not cut: dropping part of a request would break its traces unseen.
            raise PayloadTooLarge(
                f"the request has {received} spans; at most {self.max_request_spans} are taken in one request "
                "(the backend's --max-request-spans): send smaller batches (the Collector's batch processor "
                "send_batch_max_size)"
            )
        totals = self.totals.setdefault(tenant, {"received": 0, "accepted": 0, "rejected": 0})
        totals["received"] += received
        totals["rejected"] += checked.rejected
        if received:
            self.metrics.spans_received.labels(tenant, transport).inc(received)
        for reason, count in checked.reasons.items():
            self.metrics.spans_rejected.labels(tenant, reason).inc(count)
        if checked.rejected:
            recent = self._rejections.setdefault(tenant, deque(maxlen=self.RECENT))
            recent.append(
                Rejection(
                    time.time_ns(),
                    transport,
                    checked.rejected,
                    checked.accepted,
                    dict(checked.reasons),
                    checked.message,
                )
            )
        if checked.accepted:
            await self.writer.write(SpanBatch(tenant, checked.payload, checked.accepted))
            self.metrics.spans_accepted.labels(tenant).inc(checked.accepted)
            totals["accepted"] += checked.accepted
        self.metrics.requests.labels(transport, "partial" if checked.rejected else "ok").inc()
        return ExportResult(checked.accepted, checked.rejected, checked.message)

    def count_failure(self, transport: str, error: Exception) -> None:
        outcome = next((name for cls, name in OUTCOMES.items() if isinstance(error, cls)), "error")
        self.metrics.requests.labels(transport, outcome).inc()
        if isinstance(error, StoreError):
            self._log_store_failure(error)

    def _log_store_failure(self, error: StoreError) -> None:
        """A broken store fails every request alike: say so once, then every 10 s with how many more."""
        now = time.monotonic()
        message = str(error)
        if message != self._failure_message or now - self._failure_logged >= 10:
            more = f" ({self._failures_unlogged} more like it)" if self._failures_unlogged else ""
            log.error("export failed: %s%s", message, more)
            self._failure_message, self._failure_logged, self._failures_unlogged = message, now, 0
        else:
            self._failures_unlogged += 1
