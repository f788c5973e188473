"""The collector's own metrics, under upstream's names, served on ``service.telemetry`` (default :8888)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshtrace.collector.data import Signal


@dataclass
class Telemetry:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        r = self.registry
        receiver, exporter = ["receiver", "transport"], ["exporter"]
        self.accepted = per_signal(r, "otelcol_receiver_accepted", "pushed into the pipeline.", receiver)
        self.refused = per_signal(r, "otelcol_receiver_refused", "that could not be pushed.", receiver)
        self.refused_requests = Counter(
            "otelcol_receiver_refused_requests",
            "Requests refused before decoding (the pipeline was refusing).",
            receiver,
            registry=r,
        )
        self.sent = per_signal(r, "otelcol_exporter_sent", "sent to the destination.", exporter)
        self.send_failed = per_signal(r, "otelcol_exporter_send_failed", "the exporter gave up on.", exporter)
        self.enqueue_failed = per_signal(
            r, "otelcol_exporter_enqueue_failed", "refused because the sending queue was full.", ["exporter"]
        )
        self.queue_size = Gauge(
            "otelcol_exporter_queue_size", "Requests in the sending queue.", ["exporter", "data_type"], registry=r
        )
        self.queue_capacity = Gauge(
            "otelcol_exporter_queue_capacity", "Capacity of the sending queue.", ["exporter", "data_type"], registry=r
        )
        self.batch_send_size = Counter(
            "otelcol_processor_batch_batch_send_size", "Items in sent batches.", ["processor"], registry=r
        )
        self.refused_memory = Counter(
            "otelcol_processor_refused_items", "Items the memory limiter refused.", ["processor"], registry=r
        )
        self.dropped = Counter(
            "otelcol_processor_dropped_items", "Items a processor dropped (sampling).", ["processor"], registry=r
        )
        Gauge("otelcol_process_uptime", "Seconds since the collector started.", registry=r).set_function(
            lambda: time.time() - self.started
        )
        Gauge(
            "otelcol_process_memory_rss", "Resident memory of the collector process, bytes.", registry=r
        ).set_function(rss_bytes)


def per_signal(registry: CollectorRegistry, prefix: str, what: str, labels: list[str]) -> dict[Signal, Counter]:
    """One counter per signal, named as the Collector names them (``<prefix>_spans``, ...)."""
    return {s: Counter(f"{prefix}_{s.item_name}", f"{s.item_name} {what}", labels, registry=registry) for s in Signal}


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
