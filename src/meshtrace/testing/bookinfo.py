"""Synthetic Bookinfo traces shaped exactly as Istio's Envoy proxies emit them.

Used by the store contract fixtures, the end-to-end tests and the benchmarks. The shape follows Istio's
OpenTelemetry tracer: one span per proxy side (CLIENT on the caller's sidecar, SERVER on the callee's),
span names from route decorators, the ingress gateway's SERVER root plus CLIENT child since Istio 1.28
(one CLIENT span before), Envoy's and Istio's string attributes, ``service.name`` = ``<app>.<namespace>``,
status ERROR for 5xx (and 4xx on CLIENT spans), one ResourceSpans with an empty scope per proxy.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

NAMESPACE = "default"
GATEWAY = "istio-ingressgateway.istio-system"
SDK = {"telemetry.sdk.language": "cpp", "telemetry.sdk.name": "envoy", "telemetry.sdk.version": "1.36.2"}
MS = 1_000_000


def fqdn(app: str) -> str:
    return f"{app}.{NAMESPACE}.svc.cluster.local"


@dataclass(slots=True)
class ProxySpan:
    """One span and the proxy (service) that emitted it."""

    service: str
    span: Span
    version: str = "v1"


@dataclass(slots=True)
class BookinfoTrace:
    trace_id: bytes
    spans: list[ProxySpan] = field(default_factory=list)

    @property
    def hex_id(self) -> str:
        return self.trace_id.hex()


class TraceBuilder:
    """Builds one trace; every hop adds the caller's CLIENT span and the callee's SERVER span."""

    def __init__(self, rng: random.Random, start_ns: int) -> None:
        self.rng = rng
        self.trace = BookinfoTrace(rng.randbytes(16))
        self.request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.start_ns = start_ns

    def _span(
        self,
        service: str,
        version: str,
        kind: int,
        name: str,
        parent: Span | None,
        start_ns: int,
        duration_ns: int,
        attributes: dict[str, str],
    ) -> Span:
        span = Span(
            trace_id=self.trace.trace_id,
            span_id=self.rng.randbytes(8),
            parent_span_id=parent.span_id if parent is not None else b"",
            name=name,
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=start_ns,
            end_time_unix_nano=start_ns + duration_ns,
        )
        code = int(attributes["http.status_code"])
        error = code >= 500 or code == 0 or (kind == Span.SPAN_KIND_CLIENT and code >= 400)
        if error:
            attributes = {**attributes, "error": "true"}
            span.status.code = Status.STATUS_CODE_ERROR
        app, _, namespace = service.partition(".")
        proxy = "router" if service == GATEWAY else "sidecar"
        tags = {
            "node_id": f"{proxy}~10.244.0.{self.rng.randrange(2, 250)}~{app}-{version}-6d8f9c.{namespace}"
            f"~{namespace}.svc.cluster.local",
            "zone": "",
            "guid:x-request-id": self.request_id,
            "downstream_cluster": "-",
            "user_agent": "python-requests/2.32.3",
            "http.protocol": "HTTP/1.1",
            "component": "proxy",
            "istio.canonical_revision": version if service != GATEWAY else "latest",
            "istio.canonical_service": app,
            "istio.mesh_id": "cluster.local",
            "istio.namespace": namespace,
            "istio.cluster_id": "Kubernetes",
            **attributes,
        }
        span.attributes.extend(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in sorted(tags.items()))
        self.trace.spans.append(ProxySpan(service, span, version))
        return span

    def hop(
        self,
        caller: str,
        caller_version: str,
        parent: Span | None,
        callee_app: str,
        callee_version: str,
        path: str,
        start_ns: int,
        duration_ns: int,
        *,
        status_code: int = 200,
        response_flags: str = "-",
        client_name: str | None = None,
        server_name: str | None = None,
        reach_server: bool = True,
    ) -> Span | None:
        """Caller CLIENT span, and unless the connection failed, the callee's SERVER span under it."""
        host = fqdn(callee_app)
        cluster = f"outbound|9080||{host}"
        common = {
            "http.method": "GET",
            "http.url": f"http://{callee_app}:9080{path}",
            "request_size": "0",
            "response_size": str(self.rng.randrange(180, 5200) if status_code < 400 else 19),
            "http.status_code": str(status_code),
            "response_flags": response_flags,
        }
        operation = f"{host}:9080/*"
        client = self._span(
            caller,
            caller_version,
            Span.SPAN_KIND_CLIENT,
            client_name or operation,
            parent,
            start_ns,
            duration_ns,
            {
                **common,
                "upstream_cluster": cluster,
                "upstream_cluster.name": cluster,
                "peer.address": f"10.96.{self.rng.randrange(1, 250)}.{self.rng.randrange(1, 250)}",
            },
        )
        if not reach_server:
            return None
        net = min(duration_ns // 10, 2 * MS)
        return self._span(
            f"{callee_app}.{NAMESPACE}",
            callee_version,
            Span.SPAN_KIND_SERVER,
            server_name or operation,
            client,
            start_ns + net // 2,
            duration_ns - net,
            {
                **common,
                "upstream_cluster": "inbound|9080||",
                "upstream_cluster.name": "inbound|9080||",
                "peer.address": f"10.244.0.{self.rng.randrange(2, 250)}",
            },
        )


def bookinfo_trace(
    rng: random.Random,
    start_ns: int,
    *,
    reviews_version: str | None = None,
    gateway_spans: int = 2,
    ratings_status: int = 200,
    details_failure: bool = False,
    scale: float = 1.0,
) -> BookinfoTrace:
    """One ``GET /productpage`` through the ingress gateway, as Istio ≥1.28 (or <1.28) traces it.

    ``ratings_status`` 503 makes ratings fail (reviews still answers 200); ``details_failure`` makes the
    details call fail to connect (503, ``UF``, no details SERVER span).
    """
    b = TraceBuilder(rng, start_ns)
    version = reviews_version or rng.choice(("v1", "v2", "v3"))
    total = int(rng.lognormvariate(3.3, 0.35) * MS * scale)
    page = f"{fqdn('productpage')}:9080/productpage"
    if gateway_spans == 2:
        root = b._span(
            GATEWAY,
            "latest",
            Span.SPAN_KIND_SERVER,
            page,
            None,
            start_ns,
            total,
            {
                "http.method": "GET",
                "http.url": "http://bookinfo.local/productpage",
                "request_size": "0",
                "response_size": "5293",
                "http.status_code": "200",
                "response_flags": "-",
                "upstream_cluster": f"outbound|9080||{fqdn('productpage')}",
                "upstream_cluster.name": f"outbound|9080||{fqdn('productpage')}",
                "peer.address": "10.244.0.1",
            },
        )
        client_name = f"router outbound|9080||{fqdn('productpage')}; egress"
        parent: Span | None = root
        hop_start, hop_total = start_ns + MS // 5, total - MS // 2
    else:
        client_name = page
        parent = None
        hop_start, hop_total = start_ns, total
    page_span = b.hop(
        GATEWAY,
        "latest",
        parent,
        "productpage",
        "v1",
        "/productpage",
        hop_start,
        hop_total,
        client_name=client_name,
        server_name=page,
    )
    assert page_span is not None
    t = page_span.start_time_unix_nano + MS
    details_d = int(hop_total * rng.uniform(0.08, 0.15))
    b.hop(
        "productpage.default",
        "v1",
        page_span,
        "details",
        "v1",
        "/details/0",
        t,
        details_d,
        status_code=503 if details_failure else 200,
        response_flags="UF" if details_failure else "-",
        reach_server=not details_failure,
    )
    t += details_d + MS // 2
    reviews_d = int(hop_total * rng.uniform(0.45, 0.7))
    reviews = b.hop("productpage.default", "v1", page_span, "reviews", version, "/reviews/0", t, reviews_d)
    assert reviews is not None
    if version != "v1":
        ratings_d = int(reviews_d * rng.uniform(0.3, 0.6))
        b.hop(
            "reviews.default",
            version,
            reviews,
            "ratings",
            "v1",
            "/ratings/0",
            reviews.start_time_unix_nano + reviews_d // 5,
            ratings_d,
            status_code=ratings_status,
        )
    return b.trace


def export_request(traces: Iterable[BookinfoTrace]) -> ExportTraceServiceRequest:
    """Group spans as Envoy exports them: one ResourceSpans (empty scope) per proxy service."""
    request = ExportTraceServiceRequest()
    by_service: dict[str, ResourceSpans] = {}
    for trace in traces:
        for item in trace.spans:
            resource_spans = by_service.get(item.service)
            if resource_spans is None:
                resource_spans = request.resource_spans.add()
                attributes = {"service.name": item.service, **SDK}
                resource_spans.resource.attributes.extend(
                    KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()
                )
                resource_spans.scope_spans.add()
                by_service[item.service] = resource_spans
            resource_spans.scope_spans[0].spans.append(item.span)
    return request


def traffic(seed: int, start_ns: int, count: int, *, interval_ns: int = 5 * MS) -> Iterator[BookinfoTrace]:
    """A stream of mixed Bookinfo traces: ~1% ratings failures, ~0.5% details connection failures."""
    rng = random.Random(seed)
    for i in range(count):
        roll = rng.random()
        yield bookinfo_trace(
            rng,
            start_ns + i * interval_ns + rng.randrange(interval_ns),
            ratings_status=503 if roll < 0.01 else 200,
            details_failure=0.01 <= roll < 0.015,
        )


def requests_of(traces: Iterable[BookinfoTrace], spans_per_request: int = 512) -> Iterator[bytes]:
    """Serialized export requests of about ``spans_per_request`` spans each (whole traces)."""
    batch: list[BookinfoTrace] = []
    spans = 0
    for trace in traces:
        batch.append(trace)
        spans += len(trace.spans)
        if spans >= spans_per_request:
            yield export_request(batch).SerializeToString()
            batch, spans = [], 0
    if batch:
        yield export_request(batch).SerializeToString()
