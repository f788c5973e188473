"""The configuration a proxy runs with: what the control plane writes for it (its "xDS"), as typed values.

The control plane writes one JSON file per proxy and replaces it atomically on every change; the proxy
re-reads it when its modification time changes. ``bootstrap`` holds what Istio fixes when the pod is
created (node identity, ProxyConfig); everything else may change while the proxy runs, as Telemetry,
routes and endpoints do over xDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Istio's default ``PILOT_TRACE_SAMPLING``: 1% when nothing else sets the sampling rate.
DEFAULT_SAMPLING = 1.0


@dataclass(frozen=True, slots=True)
class Node:
    """The proxy's identity, fixed at injection (bootstrap) time."""

    id: str
    kind: str  # "sidecar" or "router"
    pod: str
    namespace: str
    pod_ip: str
    service_cluster: str
    canonical_service: str
    canonical_revision: str
    mesh_id: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    env: dict[str, str] = field(default_factory=dict)
    sampling: float | None = None  # ProxyConfig tracing.sampling, when set

    @staticmethod
    def from_json(data: dict[str, Any]) -> Node:
        return Node(**data)


@dataclass(frozen=True, slots=True)
class Provider:
    """An extension provider with its ``service`` resolved to endpoints through the mesh registry."""

    name: str
    kind: str  # "opentelemetry" or "zipkin"
    service: str
    port: int
    endpoints: tuple[str, ...]
    transport: str = "grpc"  # opentelemetry: "grpc" or "http"; zipkin: always "http"
    path: str = "/v1/traces"
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    max_tag_length: int = 256
    environment_detector: bool = False
    b3_with_w3c: bool = False
    trace_id_64bit: bool = False

    @staticmethod
    def from_json(data: dict[str, Any]) -> Provider:
        data = dict(data)
        data["endpoints"] = tuple(data.get("endpoints", ()))
        data["headers"] = tuple(tuple(pair) for pair in data.get("headers", ()))
        return Provider(**data)

    @property
    def key(self) -> tuple[Any, ...]:
        """Two sides with the same key share one exporter."""
        return (self.kind, self.transport, self.service, self.port, self.path, self.headers, self.endpoints)


@dataclass(frozen=True, slots=True)
class CustomTag:
    """A Telemetry ``customTags`` entry: ``literal``, ``environment`` or ``header``."""

    name: str
    kind: str
    value: str = ""  # literal value, environment variable name or header name
    default: str = ""

    @staticmethod
    def from_json(data: dict[str, Any]) -> CustomTag:
        return CustomTag(**data)


@dataclass(frozen=True, slots=True)
class TracingSpec:
    """One side's merged Telemetry tracing (``None`` where Istio would leave tracing off)."""

    provider: Provider
    sampling: float
    use_request_id: bool = True
    istio_tags: bool = True
    custom_tags: tuple[CustomTag, ...] = ()
    disable_span_reporting: bool = False
    disable_context_propagation: bool = False

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> TracingSpec | None:
        if not data:
            return None
        data = dict(data)
        data["provider"] = Provider.from_json(data["provider"])
        data["custom_tags"] = tuple(CustomTag.from_json(t) for t in data.get("custom_tags", ()))
        return TracingSpec(**data)


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream: ``outbound|9080||reviews.default.svc.cluster.local`` and its endpoints."""

    name: str
    service: str  # FQDN ("" for inbound and passthrough clusters)
    port: int
    endpoints: tuple[str, ...]

    @property
    def observability_name(self) -> str:
        # Istio (>= 1.24) gives every cluster an alt_stat_name ending in ";" (istio/istio#51861);
        # Envoy uses it for upstream_cluster.name and the gateway's upstream span name.
        return self.name + ";"

    @staticmethod
    def from_json(data: dict[str, Any]) -> Cluster:
        return Cluster(data["name"], data["service"], data["port"], tuple(data["endpoints"]))


@dataclass(frozen=True, slots=True)
class RouteMatch:
    uri_exact: str | None = None
    uri_prefix: str | None = None
    uri_regex: str | None = None
    headers: tuple[tuple[str, str, str], ...] = ()  # (name, "exact"|"prefix"|"regex", value)
    port: int | None = None

    @staticmethod
    def from_json(data: dict[str, Any]) -> RouteMatch:
        data = dict(data)
        data["headers"] = tuple(tuple(h) for h in data.get("headers", ()))
        return RouteMatch(**data)


@dataclass(frozen=True, slots=True)
class Route:
    """One Envoy route: a match, where it goes and the decorator that names its spans."""

    match: RouteMatch
    cluster: str
    decorator: str
    rewrite_uri: str | None = None
    rewrite_authority: str | None = None
    timeout: float | None = None
    weights: tuple[tuple[str, int], ...] = ()  # weighted destinations: (cluster, weight)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Route:
        data = dict(data)
        data["match"] = RouteMatch.from_json(data["match"])
        data["weights"] = tuple((c, int(w)) for c, w in data.get("weights") or ())
        return Route(**data)


@dataclass(frozen=True, slots=True)
class VirtualHost:
    domains: tuple[str, ...]
    routes: tuple[Route, ...]

    @staticmethod
    def from_json(data: dict[str, Any]) -> VirtualHost:
        return VirtualHost(tuple(data["domains"]), tuple(Route.from_json(r) for r in data["routes"]))


@dataclass(frozen=True, slots=True)
class Inbound:
    """An inbound listener: the pod's port, the application behind it and the inbound route's name."""

    port: int
    app: str  # host:port of the application inside the pod
    decorator: str

    @staticmethod
    def from_json(data: dict[str, Any]) -> Inbound:
        return Inbound(**data)


@dataclass(frozen=True, slots=True)
class GatewayListener:
    port: int
    binds: tuple[str, ...]  # extra host:port addresses (the local "load balancer")
    virtual_hosts: tuple[VirtualHost, ...]

    @staticmethod
    def from_json(data: dict[str, Any]) -> GatewayListener:
        return GatewayListener(
            data["port"], tuple(data.get("binds", ())), tuple(VirtualHost.from_json(v) for v in data["virtual_hosts"])
        )


@dataclass(frozen=True, slots=True)
class ServiceName:
    """A name a workload may use for a service port, mapped to its outbound cluster."""

    cluster: str
    decorator: str


@dataclass(slots=True)
class ProxyConfig:
    version: int
    node: Node
    clusters: dict[str, Cluster]
    hosts: dict[str, ServiceName]  # "details:9080", "details.default.svc.cluster.local:9080", ...
    inbound: tuple[Inbound, ...]
    gateway: tuple[GatewayListener, ...]
    client: TracingSpec | None
    server: TracingSpec | None
    outbound_port: int = 15001
    admin_port: int = 15000

    @staticmethod
    def from_json(data: dict[str, Any]) -> ProxyConfig:
        return ProxyConfig(
            version=data["version"],
            node=Node.from_json(data["node"]),
            clusters={c["name"]: Cluster.from_json(c) for c in data.get("clusters", ())},
            hosts={k: ServiceName(*v) for k, v in data.get("hosts", {}).items()},
            inbound=tuple(Inbound.from_json(i) for i in data.get("inbound", ())),
            gateway=tuple(GatewayListener.from_json(g) for g in data.get("gateway", ())),
            client=TracingSpec.from_json(data.get("client")),
            server=TracingSpec.from_json(data.get("server")),
            outbound_port=data.get("outbound_port", 15001),
            admin_port=data.get("admin_port", 15000),
        )
