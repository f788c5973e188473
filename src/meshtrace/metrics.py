"""Prometheus metrics of the backend: what was received, accepted, rejected (and why), stored, and how
the writer keeps up. One registry per server instance, not the process-global one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.spans_received = Counter(
            "meshtrace_spans_received",
            "Spans received, valid or not.",
            ["tenant", "transport"],
            registry=self.registry,
        )
        self.spans_accepted = Counter(
            "meshtrace_spans_accepted",
            "Spans acknowledged to senders (durable).",
            ["tenant"],
            registry=self.registry,
        )
        self.spans_rejected = Counter(
            "meshtrace_spans_rejected",
            "Spans refused one by one (OTLP partial success), by reason.",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            "meshtrace_export_requests",
            "Export requests by transport and outcome.",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.spans_stored = Counter(
            "meshtrace_spans_stored",
            "Spans inserted into the tables.",
            ["tenant"],
            registry=self.registry,
        )
        self.insert_seconds = Histogram(
            "meshtrace_store_insert_seconds",
            "Time of one batch insert into ClickHouse.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.insert_spans = Histogram(
            "meshtrace_store_insert_spans",
            "Spans per batch insert.",
            buckets=(10, 100, 1000, 2500, 5000, 10000, 20000, 50000),
            registry=self.registry,
        )
        self.heap_returned = Counter(
            "meshtrace_heap_returned_bytes",
            "Free heap given back to the system (malloc_trim), measured as the RSS it shed.",
            registry=self.registry,
        )

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (queue depth, store size)."""
        self.registry.register(_CallbackGauge(name, doc, read))

    def gauges(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A gauge per ``label`` value, all read at scrape time in one call (the store's memory by kind)."""
        self.registry.register(_CallbackGauges(name, doc, label, read))


class _CallbackGauge(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.name, self.doc, self.read = name, doc, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.doc, value=float(self.read()))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.doc)


class _CallbackGauges(Collector):
    def __init__(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        self.name, self.doc, self.label, self.read = name, doc, label, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        for value, reading in sorted(self.read().items()):
            family.add_metric([value], float(reading))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.doc, labels=[self.label])
