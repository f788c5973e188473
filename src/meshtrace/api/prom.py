"""Tempo metrics-generator series from the ingest-time tables, so a Prometheus that scrapes ``/metrics``
feeds Grafana's service map and span metrics panels.

Series and labels as Tempo names them: ``traces_service_graph_request_total``,
``…_request_failed_total``, ``…_request_server_seconds`` and ``…_request_client_seconds`` histograms
(``client``, ``server``, ``connection_type``), ``traces_spanmetrics_calls_total`` and
``traces_spanmetrics_latency`` (``service``, ``span_name``, ``span_kind``, ``status_code``). Values are
totals over the retained minutes: counters that only reset when retention drops a minute, which
``rate()`` handles like a restart. Scoped to the tenant of the scrape's token (all of ``default`` when
auth is off); a scrape without a token gets the process metrics only.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from meshtrace.model.analytics import GraphEdge, Histogram, OperationStats

# Powers of two of a millisecond: exact boundaries of the stored histograms (0.5 ms … 16 s).
BUCKETS_S = tuple(2.0**k / 1000 for k in range(-1, 15))
_KIND = {
    "server": "SPAN_KIND_SERVER",
    "client": "SPAN_KIND_CLIENT",
    "internal": "SPAN_KIND_INTERNAL",
    "producer": "SPAN_KIND_PRODUCER",
    "consumer": "SPAN_KIND_CONSUMER",
}


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    cumulative = h.cumulative(BUCKETS_S)
    return [(f"{b:g}", float(c)) for b, c in zip(BUCKETS_S, cumulative, strict=True)] + [("+Inf", float(h.total))]


class TempoSeries:
    """A one-shot collector: ``prometheus_client.generate_latest`` renders it like a registry."""

    def __init__(self, edges: list[GraphEdge], operations: list[OperationStats]) -> None:
        self.edges = edges
        self.operations = operations

    def collect(self) -> Iterator[Metric]:
        labels = ["client", "server", "connection_type"]
        total = CounterMetricFamily("traces_service_graph_request", "Calls between services", labels=labels)
        failed = CounterMetricFamily("traces_service_graph_request_failed", "Failed calls", labels=labels)
        server = HistogramMetricFamily(
            "traces_service_graph_request_server_seconds", "Server-side latency of calls", labels=labels
        )
        client = HistogramMetricFamily(
            "traces_service_graph_request_client_seconds", "Client-side latency of calls", labels=labels
        )
        merged: dict[tuple[str, str, str], list[GraphEdge]] = {}
        for e in self.edges:
            merged.setdefault((e.client, e.server, e.connection_type), []).append(e)
        for key, group in sorted(merged.items()):
            values = list(key)
            total.add_metric(values, sum(e.calls for e in group))
            failed.add_metric(values, sum(e.failed for e in group))
            for family, hist_of, nanos_of in (
                (server, lambda e: e.server_histogram, lambda e: e.server_nanos),
                (client, lambda e: e.client_histogram, lambda e: e.client_nanos),
            ):
                h = Histogram()
                for e in group:
                    h.merge(hist_of(e))
                family.add_metric(values, _buckets(h), sum(nanos_of(e) for e in group) / 1e9)
        yield from (total, failed, server, client)
        op_labels = ["service", "span_name", "span_kind", "status_code"]
        calls = CounterMetricFamily("traces_spanmetrics_calls", "Spans per operation", labels=op_labels)
        latency = HistogramMetricFamily(
            "traces_spanmetrics_latency", "Span duration per operation", labels=op_labels[:3]
        )
        for op in self.operations:
            kind = _KIND.get(op.kind.lower(), "SPAN_KIND_UNSPECIFIED")
            base = [op.service, op.operation, kind]
            if op.calls - op.errors:
                calls.add_metric([*base, "STATUS_CODE_UNSET"], op.calls - op.errors)
            if op.errors:
                calls.add_metric([*base, "STATUS_CODE_ERROR"], op.errors)
            latency.add_metric(base, _buckets(op.histogram), op.nanos / 1e9)
        yield from (calls, latency)
