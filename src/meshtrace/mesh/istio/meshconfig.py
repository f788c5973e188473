"""MeshConfig from an IstioOperator (what ``istioctl install -f`` applies), validated as istiod does.

References: ``istio/api mesh/v1alpha1/config.proto`` and ``proxy.proto``; validation from
``pkg/config/validation/agent/extensionprovider.go``; the sampling fallback from ``PILOT_TRACE_SAMPLING``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from meshtrace.mesh.istio.fields import Fields, duration
from meshtrace.mesh.resources import Obj

SERVICE_NAME_MODES = ("APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE")
TRACING_PROVIDERS = ("opentelemetry", "zipkin")
# Valid extension providers that produce no tracer: (type, what istiod says when one is used for tracing).
NON_TRACING = {
    "stackdriver": "does not support tracing",
    "opencensus": "does not support tracing",
    "lightstep": "does not support tracing",
    "envoyExtAuthzHttp": "does not support tracing",
    "envoyExtAuthzGrpc": "does not support tracing",
    "prometheus": "does not support tracing",
    "envoyFileAccessLog": "does not support tracing",
    "envoyHttpAls": "does not support tracing",
    "envoyTcpAls": "does not support tracing",
    "envoyOtelAls": "does not support tracing",
    "sds": "does not support tracing",
    "datadog": "is not run by the local mesh",
    "skywalking": "is not run by the local mesh",
}
_OTEL_FIELDS = (
    "service",
    "port",
    "maxTagLength",
    "http",
    "grpc",
    "resourceDetectors",
    "dynatraceSampler",
    "serviceAttributeEnrichment",
)
_ZIPKIN_FIELDS = (
    "service",
    "port",
    "maxTagLength",
    "enable64bitTraceId",
    "path",
    "traceContextOption",
    "timeout",
    "headers",
)
_FQDN_LABEL = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


@dataclass(frozen=True, slots=True)
class ExtensionProvider:
    name: str
    kind: str  # "opentelemetry", "zipkin", or a non-tracing type
    service: str = ""
    port: int = 0
    transport: str = "grpc"
    path: str = ""
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    max_tag_length: int = 256
    environment_detector: bool = False
    b3_with_w3c: bool = False
    trace_id_64bit: bool = False
    index: int = 0

    @property
    def traces(self) -> bool:
        return self.kind in TRACING_PROVIDERS


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """``meshConfig.defaultConfig`` (optionally overridden per pod): fixed when a pod gets its sidecar."""

    tracing_service_name: str = "APP_LABEL_AND_NAMESPACE"
    service_cluster: str = ""
    sampling: float | None = None
    custom_tags: tuple[tuple[str, str, str, str], ...] = ()  # (name, kind, value, default)
    proxy_metadata: tuple[tuple[str, str], ...] = ()
    max_path_tag_length: int | None = None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    enable_tracing: bool = True
    default_tracing_providers: tuple[str, ...] = ()
    default_config: ProxyConfig = field(default_factory=ProxyConfig)
    providers: tuple[ExtensionProvider, ...] = ()
    pilot_trace_sampling: float = 1.0
    mesh_id: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    ignored: tuple[str, ...] = ()  # meshConfig fields accepted but not acted on locally

    def provider(self, name: str) -> ExtensionProvider | None:
        """Telemetry looks providers up case-insensitively (``strings.EqualFold``)."""
        for provider in self.providers:
            if provider.name.lower() == name.lower():
                return provider
        return None

    def as_yaml_dict(self) -> dict[str, Any]:
        """What ``kubectl get cm istio -n istio-system -o yaml`` would show under ``mesh``."""
        out: dict[str, Any] = {"enableTracing": self.enable_tracing}
        if self.default_tracing_providers:
            out["defaultProviders"] = {"tracing": list(self.default_tracing_providers)}
        default: dict[str, Any] = {"tracingServiceName": self.default_config.tracing_service_name}
        if self.default_config.sampling is not None:
            default["tracing"] = {"sampling": self.default_config.sampling}
        out["defaultConfig"] = default
        providers = []
        for p in self.providers:
            entry: dict[str, Any] = {"name": p.name}
            if p.traces:
                body: dict[str, Any] = {"service": p.service, "port": p.port}
                if p.kind == "opentelemetry" and p.transport == "http":
                    body["http"] = {"path": p.path, "timeout": f"{p.timeout:g}s"}
                    if p.headers:
                        body["http"]["headers"] = [{"name": n, "value": v} for n, v in p.headers]
                if p.environment_detector:
                    body["resourceDetectors"] = {"environment": {}}
                entry[p.kind] = body
            else:
                entry[p.kind] = {}
            providers.append(entry)
        out["extensionProviders"] = providers
        return out


def valid_host(host: str) -> bool:
    """A FQDN, an IP, or ``ns/host``."""
    if "/" in host:
        namespace, _, host = host.partition("/")
        if not namespace:
            return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return len(host) <= 255 and all(_FQDN_LABEL.match(label) for label in labels) and len(labels) >= 1


def from_istio_operator(obj: Obj, environ: dict[str, str] | None = None) -> MeshConfig:
    """The MeshConfig an IstioOperator installs; ``ResourceError`` for what istioctl would reject."""
    spec = Fields(obj.spec, "spec", obj.source, obj.describe())
    mesh = spec.sub("meshConfig")
    values = Fields(spec.get("values"), "spec.values", obj.source, obj.describe())
    profile = spec.string("profile", "default")
    pilot = Fields(values.get("pilot"), "spec.values.pilot", obj.source, obj.describe())
    sampling_env = pilot.number("traceSampling", 100.0 if profile == "demo" else 1.0)
    global_values = Fields(values.get("global"), "spec.values.global", obj.source, obj.describe())
    multicluster = Fields(global_values.get("multiCluster"), "spec.values.global.multiCluster", obj.source, "")
    return parse_mesh(
        mesh,
        pilot_trace_sampling=_pilot_sampling(sampling_env),
        mesh_id=str(global_values.get("meshID") or mesh.get("meshId") or mesh.get("trustDomain") or "cluster.local"),
        cluster_id=str(multicluster.get("clusterName") or "Kubernetes"),
    )


def _pilot_sampling(value: float | None) -> float:
    """``PILOT_TRACE_SAMPLING``: out of (0, 100] falls back to 1%."""
    if value is None or value <= 0 or value > 100:
        return 1.0
    return value


def parse_mesh(mesh: Fields, pilot_trace_sampling: float = 1.0, mesh_id: str = "", cluster_id: str = "") -> MeshConfig:
    enable = mesh.boolean("enableTracing", True)
    defaults = mesh.sub("defaultProviders")
    tracing_defaults = tuple(str(n) for n in defaults.items("tracing"))
    default_config = parse_proxy_config(mesh.sub("defaultConfig"))
    providers = []
    names: set[str] = set()
    for index, raw in enumerate(mesh.items("extensionProviders")):
        provider = _provider(Fields(raw, f"{mesh.path}.extensionProviders[{index}]", mesh.source, mesh.what), index)
        if provider.name in names:
            raise mesh.error(
                f"extensionProviders[{index}].name",
                f"duplicate extension provider name {provider.name!r}",
                "give each provider a unique name",
            )
        names.add(provider.name)
        providers.append(provider)
    return MeshConfig(
        enable_tracing=bool(enable),
        default_tracing_providers=tracing_defaults,
        default_config=default_config,
        providers=tuple(providers),
        pilot_trace_sampling=pilot_trace_sampling,
        mesh_id=mesh_id or "cluster.local",
        cluster_id=cluster_id or "Kubernetes",
        ignored=tuple(mesh.unknown()),
    )


def parse_proxy_config(proxy: Fields) -> ProxyConfig:
    mode = proxy.string("tracingServiceName", "")
    cluster = proxy.string("serviceCluster", "")
    if mode and cluster:
        raise proxy.error(
            "tracingServiceName",
            "only one of serviceCluster and tracingServiceName may be set",
            "remove serviceCluster (deprecated)",
        )
    if mode and mode not in SERVICE_NAME_MODES:
        raise proxy.error(
            "tracingServiceName",
            f"{mode!r} is not a tracing service name mode",
            f"use one of {', '.join(SERVICE_NAME_MODES)}",
        )
    tracing = proxy.sub("tracing")
    sampling = tracing.number("sampling")
    if sampling is not None and (sampling < 0 or sampling > 100):
        sampling = 1.0  # istiod resets out-of-range values to 1%
    if sampling == 0:
        sampling = None  # 0 means unset: the PILOT_TRACE_SAMPLING fallback applies
    custom_tags = []
    tags = tracing.get("customTags") or {}
    if not isinstance(tags, dict):
        raise tracing.error("customTags", "must be a mapping of tag name to tag")
    for name, tag in tags.items():
        if tag is None:
            raise tracing.error(
                f"customTags.{name}", "a custom tag may not be empty", "give it literal, environment or header"
            )
        custom_tags.append(
            parse_custom_tag(str(name), Fields(tag, f"{tracing.path}.customTags.{name}", proxy.source, proxy.what))
        )
    max_path = tracing.number("maxPathTagLength")
    metadata = proxy.get("proxyMetadata") or {}
    if not isinstance(metadata, dict):
        raise proxy.error("proxyMetadata", "must be a mapping of environment variable to value")
    return ProxyConfig(
        tracing_service_name=mode or "APP_LABEL_AND_NAMESPACE",
        service_cluster=cluster,
        sampling=sampling,
        custom_tags=tuple(custom_tags),
        proxy_metadata=tuple((str(k), str(v)) for k, v in metadata.items()),
        max_path_tag_length=int(max_path) if max_path else None,
    )


def parse_custom_tag(name: str, tag: Fields) -> tuple[str, str, str, str]:
    """(name, kind, value, default) for ``literal``, ``environment``, ``header`` (and ``formatter``)."""
    if not name:
        raise tag.error("", "a custom tag needs a name")
    for kind, key in (("literal", "value"), ("environment", "name"), ("header", "name"), ("formatter", "value")):
        if tag.has(kind):
            body = tag.sub(kind)
            value = body.string(key)
            if not value:
                raise body.error(key, "may not be empty", f"set {kind}.{key}")
            return (name, kind, value, body.string("defaultValue"))
    raise tag.error("", "a custom tag needs one of literal, environment, header or formatter", "")


def _provider(fields: Fields, index: int) -> ExtensionProvider:
    name = fields.string("name")
    if not name:
        raise fields.error("name", "is required", "name the provider; Telemetry resources refer to it by name")
    kinds = [k for k in (*TRACING_PROVIDERS, *NON_TRACING) if fields.has(k)]
    if len(kinds) != 1:
        problem = "sets no provider type" if not kinds else f"sets more than one provider type: {', '.join(kinds)}"
        raise fields.error("", f"extension provider {name!r} {problem}", "set exactly one, e.g. opentelemetry")
    kind = kinds[0]
    fields.get(kind)
    fields.strict("ExtensionProvider")
    if kind not in TRACING_PROVIDERS:
        return ExtensionProvider(name=name, kind=kind, index=index)
    body = fields.sub(kind)
    service = body.string("service")
    if not service or not valid_host(service):
        shown = repr(service) if service else "empty"
        raise body.error(
            "service",
            f"{shown} is not a valid FQDN, IP or namespace/host",
            "use the collector Service's FQDN, e.g. opentelemetry-collector.observability.svc.cluster.local",
        )
    port = body.number("port")
    if port is None or not 1 <= port <= 65535 or port != int(port):
        raise body.error("port", f"{port!r} is not a port (1..65535)", "use 4317 for OTLP/gRPC or 4318 for OTLP/HTTP")
    max_tag = int(body.number("maxTagLength") or 256)
    detectors = body.sub("resourceDetectors")
    environment = detectors.has("environment")
    if kind == "zipkin":
        return _zipkin(name, body, service, int(port), max_tag, index)
    if body.has("http") and body.has("grpc"):
        raise body.error(
            "", "may set http or grpc, not both", "remove one: http means OTLP/HTTP, no http means OTLP/gRPC"
        )
    transport, path, timeout = "grpc", "", 5.0
    headers: tuple[tuple[str, str], ...] = ()
    if body.has("http"):
        http = body.sub("http")
        transport = "http"
        path = http.string("path")
        if not path:
            raise http.error("path", "is required with http", "use /v1/traces")
        timeout = duration(http.get("timeout"), http, "timeout") if http.has("timeout") else 3.0
        headers = _headers(http, "headers")
        http.strict("HttpService")
    elif body.has("grpc"):
        grpc = body.sub("grpc")
        if grpc.has("timeout"):
            timeout = duration(grpc.get("timeout"), grpc, "timeout")
        headers = _headers(grpc, "initialMetadata")
        grpc.strict("GrpcService")
    for known in _OTEL_FIELDS:
        body.get(known)
    body.strict("OpenTelemetryTracingProvider")
    return ExtensionProvider(
        name=name,
        kind=kind,
        service=service,
        port=int(port),
        transport=transport,
        path=path,
        timeout=timeout,
        headers=headers,
        max_tag_length=max_tag,
        environment_detector=environment,
        index=index,
    )


def _zipkin(name: str, body: Fields, service: str, port: int, max_tag: int, index: int) -> ExtensionProvider:
    option = body.string("traceContextOption", "USE_B3")
    if option not in ("USE_B3", "USE_B3_WITH_W3C_PROPAGATION"):
        raise body.error("traceContextOption", f"{option!r} is not a trace context option", "use USE_B3")
    timeout = duration(body.get("timeout"), body, "timeout") if body.has("timeout") else 5.0
    headers = _headers(body, "headers")
    for known in _ZIPKIN_FIELDS:
        body.get(known)
    body.strict("ZipkinTracingProvider")
    return ExtensionProvider(
        name=name,
        kind="zipkin",
        service=service,
        port=port,
        transport="http",
        path=body.string("path", "/api/v2/spans"),
        timeout=timeout,
        headers=headers,
        max_tag_length=max_tag,
        b3_with_w3c=option == "USE_B3_WITH_W3C_PROPAGATION",
        trace_id_64bit=bool(body.boolean("enable64bitTraceId")),
        index=index,
    )


def _headers(fields: Fields, key: str) -> tuple[tuple[str, str], ...]:
    """``HttpHeader{name, value | envName}``; ``envName`` reads istiod's environment."""
    import os

    out = []
    for index, raw in enumerate(fields.items(key)):
        header = Fields(raw, f"{fields.path}.{key}[{index}]", fields.source, fields.what)
        name = header.string("name")
        if not name:
            raise header.error("name", "is required")
        env_name = header.string("envName")
        value = os.environ.get(env_name, "") if env_name else header.string("value")
        out.append((name, value))
    return tuple(out)
