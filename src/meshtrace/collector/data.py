"""What flows through a pipeline: one OTLP export request, kept as the bytes it arrived in.

Most components never look inside (receivers count, queues persist, exporters send), so the bytes pass
through untouched and are parsed only when a component asks for ``message``. Concatenating serialized
export requests of one signal is a valid request holding all their resources (protobuf merges repeated
fields), which is how batches are built without parsing.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.errors import PermanentError


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    @property
    def request_type(self) -> type[Any]:
        return _REQUEST_TYPES[self]

    @property
    def item_name(self) -> str:
        """What upstream counts per signal: spans, metric points, log records."""
        return {Signal.TRACES: "spans", Signal.METRICS: "metric_points", Signal.LOGS: "log_records"}[self]


_REQUEST_TYPES: dict[Signal, type[Any]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}


def count_items(signal: Signal, message: Any) -> int:
    """Spans, data points or log records in a request (no per-item objects are built)."""
    if signal is Signal.TRACES:
        return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    if signal is Signal.LOGS:
        return sum(len(sl.log_records) for rl in message.resource_logs for sl in rl.scope_logs)
    points = 0
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    return points


class Batch:
    """One export request of one signal: raw bytes and/or the parsed message, and its item count."""

    __slots__ = ("_message", "_raw", "items", "metadata", "signal")

    def __init__(
        self,
        signal: Signal,
        *,
        raw: bytes | None = None,
        message: Any = None,
        items: int | None = None,
        metadata: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        if raw is None and message is None:
            raise ValueError("a batch needs bytes or a message")
        self.signal = signal
        # The client's request metadata (gRPC metadata or HTTP headers, lower-case names), kept when the
        # receiver has ``include_metadata: true``, for processors that read ``from_context``.
        self.metadata = metadata or {}
        self._raw = raw
        self._message = message
        if items is None:
            items = count_items(signal, self.message)
        self.items = items

    @classmethod
    def parse(cls, signal: Signal, raw: bytes, metadata: dict[str, tuple[str, ...]] | None = None) -> Batch:
        """Decode ``raw`` once (to count its items and reject garbage early); keep the bytes to forward."""
        message = signal.request_type()
        try:
            message.ParseFromString(raw)
        except DecodeError as exc:
            raise PermanentError(f"not a valid OTLP {signal} export request: {exc}") from exc
        return cls(signal, raw=raw, message=message, items=count_items(signal, message), metadata=metadata)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._message.SerializeToString()
        return self._raw

    @property
    def message(self) -> Any:
        """The parsed request. Mutating it makes the bytes stale: call ``changed()`` afterwards."""
        if self._message is None:
            message = self.signal.request_type()
            message.ParseFromString(self._raw)
            self._message = message
        return self._message

    def changed(self) -> None:
        """The message was modified: forget the old bytes and recount."""
        self._raw = None
        self.items = count_items(self.signal, self._message)

    @staticmethod
    def merge(batches: Iterable[Batch]) -> Batch:
        items = list(batches)
        if len(items) == 1:
            return items[0]
        # Batches from different clients lose their metadata, as upstream's batch processor does
        # without metadata_keys.
        same = all(b.metadata == items[0].metadata for b in items)
        return Batch(
            items[0].signal,
            raw=b"".join(b.raw for b in items),
            items=sum(b.items for b in items),
            metadata=items[0].metadata if same else None,
        )

    def __repr__(self) -> str:
        return f"Batch({self.signal}, items={self.items})"


def split(batch: Batch, max_items: int) -> list[Batch]:
    """Cut a batch into batches of at most ``max_items`` (spans and log records one by one; metrics by
    resource, so a resource with more points than the limit stays whole)."""
    if max_items <= 0 or batch.items <= max_items:
        return [batch]
    signal = batch.signal
    out: list[Batch] = []
    current = signal.request_type()
    count = 0

    def close() -> None:
        nonlocal current, count
        if count:
            out.append(Batch(signal, message=current, items=count))
        current, count = signal.request_type(), 0

    if signal is Signal.METRICS:
        for resource in batch.message.resource_metrics:
            n = count_items(signal, _single(signal, resource))
            if count and count + n > max_items:
                close()
            current.resource_metrics.add().CopyFrom(resource)
            count += n
        close()
        return out
    outer, inner, leaf = (
        ("resource_spans", "scope_spans", "spans")
        if signal is Signal.TRACES
        else ("resource_logs", "scope_logs", "log_records")
    )
    for resource in getattr(batch.message, outer):
        for scope in getattr(resource, inner):
            items = list(getattr(scope, leaf))
            start = 0
            while start < len(items):
                take = min(max_items - count, len(items) - start)
                target_resource = getattr(current, outer).add()
                target_resource.resource.CopyFrom(resource.resource)
                target_resource.schema_url = resource.schema_url
                target_scope = getattr(target_resource, inner).add()
                target_scope.scope.CopyFrom(scope.scope)
                target_scope.schema_url = scope.schema_url
                getattr(target_scope, leaf).extend(items[start : start + take])
                count += take
                start += take
                if count >= max_items:
                    close()
    close()
    return out


def _single(signal: Signal, resource: Any) -> Any:
    message = signal.request_type()
    message.resource_metrics.add().CopyFrom(resource)
    return message
