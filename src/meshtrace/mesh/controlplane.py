"""istiod for the local mesh: the service registry, and each proxy's configuration derived from it.

Every change (an apply, a pod becoming ready, a label) recomputes all proxy configurations; a proxy's
file is rewritten only when its content changed, under a new version number, which the proxy picks up
within a fraction of a second (Telemetry and routes apply live, as over xDS; the bootstrap part, fixed
when the pod was created, does not change).
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from meshtrace.mesh.cluster import ISTIO_NAMESPACE, Cluster
from meshtrace.mesh.istio import routing
from meshtrace.mesh.istio.meshconfig import ExtensionProvider
from meshtrace.mesh.istio.telemetry import Merged, SideSpec, merge
from meshtrace.mesh.pods import Pod
from meshtrace.mesh.resources import Obj

DOMAIN = "svc.cluster.local"


@dataclass(slots=True)
class ServicePort:
    service: Obj
    fqdn: str
    port: int
    target: int | str
    name: str

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.fqdn}"


@dataclass(slots=True)
class Diagnostics:
    """What istiod would log (and what it would not say, but meshtrace does)."""

    warnings: list[str] = field(default_factory=list)
    tracing: dict[str, str] = field(default_factory=dict)  # pod -> "client+server" / "off: reason"

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


class Registry:
    """Services and their ready endpoints."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ports: list[ServicePort] = []
        for service in cluster.objects_of("Service"):
            fqdn = f"{service.name}.{service.namespace}.{DOMAIN}"
            for raw in service.spec.get("ports") or []:
                port = int(raw["port"])
                self.ports.append(
                    ServicePort(service, fqdn, port, raw.get("targetPort", port), str(raw.get("name", "")))
                )

    def endpoints(self, sp: ServicePort) -> list[str]:
        out = []
        for pod in self.cluster.service_pods(sp.service):
            target = _target_port(pod, sp.target)
            if target is not None:
                out.append(f"{pod.ip}:{target}")
        return out

    def by_fqdn(self, host: str) -> list[ServicePort]:
        return [sp for sp in self.ports if sp.fqdn == host]

    def lookup(self, host: str) -> tuple[list[ServicePort], str]:
        """Istio's ``LookupCluster`` for a provider's ``service``: (ports, error)."""
        namespace = ""
        if "/" in host:
            namespace, _, host = host.partition("/")
        candidates = [sp for sp in self.ports if sp.fqdn == host or (not namespace and _short_match(sp, host))]
        if namespace:
            candidates = [sp for sp in candidates if sp.service.namespace == namespace]
        namespaces = {sp.service.namespace for sp in candidates}
        if not candidates:
            return [], f"could not find service {host} in Istio service registry"
        if len(namespaces) > 1:
            return [], f"found {host} in multiple namespaces {sorted(namespaces)}; use namespace/{host}"
        return candidates, ""


def _short_match(sp: ServicePort, host: str) -> bool:
    return host == sp.fqdn


def _target_port(pod: Pod, target: int | str) -> int | None:
    if isinstance(target, int) or (isinstance(target, str) and target.isascii() and target.isdigit()):
        return int(target)
    for container in pod.containers:
        if target in container.named_ports:
            return container.named_ports[str(target)]
    return None


class ControlPlane:
    def __init__(self, cluster: Cluster, gateway_binds: list[str]) -> None:
        self.cluster = cluster
        self.gateway_binds = gateway_binds
        self.version = 0
        self._written: dict[tuple[str, str], bytes] = {}
        self.diagnostics = Diagnostics()
        self.node_configs: dict[str, dict[str, Any]] = {}  # namespace -> config of the node proxy

    def push(self) -> Diagnostics:
        """Recompute every proxy's configuration; write those that changed."""
        registry = Registry(self.cluster)
        diagnostics = Diagnostics()
        clusters = self._clusters(registry)
        telemetries = list(self.cluster.telemetries.values())
        any_traced_app = False
        gateway_off: list[tuple[Pod, Merged]] = []
        for pod in self.cluster.pods_in(None):
            if pod.proxy is None or pod.deleting:
                continue
            merged = merge(telemetries, self.cluster.mesh, pod.namespace, pod.labels)
            client = self._side(merged.client, pod, registry, diagnostics, merged)
            server = self._side(merged.server, pod, registry, diagnostics, merged)
            if pod.router and client is None:
                gateway_off.append((pod, merged))
            if not pod.router and (client or server):
                any_traced_app = True
            diagnostics.tracing[f"{pod.namespace}/{pod.name}"] = _describe(client, server, merged)
            config = {
                "node": pod.proxy["node"],
                "clusters": clusters,
                "hosts": self._hosts(registry, pod.namespace),
                "inbound": [] if pod.router else self._inbound(pod, registry),
                "gateway": self._gateway(pod, registry) if pod.router else [],
                "client": client,
                "server": server,
            }
            self._write(pod, config)
        for namespace in {p.namespace for p in self.cluster.pods.values()}:
            self.node_configs[namespace] = {"clusters": clusters, "hosts": self._hosts(registry, namespace)}
        self._explain(diagnostics, telemetries, gateway_off, any_traced_app)
        self.diagnostics = diagnostics
        return diagnostics

    # -- pieces -------------------------------------------------------------------------------

    def _clusters(self, registry: Registry) -> list[dict[str, Any]]:
        return [
            {"name": sp.cluster, "service": sp.fqdn, "port": sp.port, "endpoints": registry.endpoints(sp)}
            for sp in registry.ports
        ]

    def _hosts(self, registry: Registry, namespace: str) -> dict[str, list[str]]:
        hosts: dict[str, list[str]] = {}
        for sp in registry.ports:
            name, ns = sp.service.name, sp.service.namespace
            value = [sp.cluster, f"{sp.fqdn}:{sp.port}/*"]
            names = [f"{name}.{ns}", f"{name}.{ns}.svc", sp.fqdn]
            if ns == namespace:
                names.append(name)
            for host in names:
                hosts[f"{host}:{sp.port}"] = value
        return hosts

    def _inbound(self, pod: Pod, registry: Registry) -> list[dict[str, Any]]:
        ports: dict[int, str] = {}
        for sp in registry.ports:
            if sp.service.namespace != pod.namespace or pod not in self.cluster.service_pods(
                sp.service, ready_only=False
            ):
                continue
            target = _target_port(pod, sp.target)
            if target is not None and target not in ports:
                ports[target] = f"{sp.fqdn}:{sp.port}/*"
        for container in pod.containers:
            if container.is_proxy:
                continue
            for port in container.ports:
                ports.setdefault(port, f"{pod.ip}:{port}/*")
        return [{"port": p, "app": f"{pod.local_ip}:{p}", "decorator": d} for p, d in sorted(ports.items())]

    def _gateway(self, pod: Pod, registry: Registry) -> list[dict[str, Any]]:
        """Listeners and routes from the Gateways selecting this pod and the VirtualServices bound to them."""
        services = [
            s
            for s in self.cluster.objects_of("Service", pod.namespace)
            if pod in self.cluster.service_pods(s, ready_only=False)
        ]
        port_map: dict[int, int] = {}
        for service in services:
            for raw in service.spec.get("ports") or []:
                target = raw.get("targetPort", raw["port"])
                number = str(target).isascii() and str(target).isdigit()
                port_map[int(raw["port"])] = int(target) if number else int(raw["port"])
        listeners: dict[int, list[dict[str, Any]]] = {}
        for (ns, name), gateway in sorted(self.cluster.gateways.items()):
            if not gateway.selector or any(pod.labels.get(k) != v for k, v in gateway.selector.items()):
                continue
            for server in gateway.servers:
                if server.protocol not in ("HTTP", "HTTP2", "GRPC"):
                    continue
                port = port_map.get(server.port, server.port)
                vhosts = listeners.setdefault(port, [])
                for vs in sorted(self.cluster.virtual_services.values(), key=lambda v: (v.created, v.name)):
                    if f"{ns}/{name}" not in vs.gateways:
                        continue
                    vhosts.append(self._virtual_host(vs, registry, port))
        gateway_port = port_map.get(80)
        out = []
        for port, vhosts in sorted(listeners.items()):
            binds = self.gateway_binds if port == gateway_port else []
            out.append({"port": port, "binds": binds, "virtual_hosts": vhosts})
        return out

    def _virtual_host(self, vs: routing.VirtualService, registry: Registry, listener_port: int) -> dict[str, Any]:
        routes = []
        for http in vs.http:
            ports = []
            weights = []
            for destination in http.destinations:
                service_ports = registry.by_fqdn(destination.host)
                port = destination.port or (service_ports[0].port if len(service_ports) == 1 else 0)
                ports.append(port)
                weights.append((f"outbound|{port}|{destination.subset}|{destination.host}", destination.weight or 100))
            matches: list[routing.Match | None] = [*http.matches] or [None]
            for match in matches:
                route: dict[str, Any] = {
                    "match": _match_json(match),
                    "cluster": weights[0][0] if weights else "",
                    "decorator": routing.operation(match, http.destinations, ports or [0], vs.name, listener_port),
                    "rewrite_uri": http.rewrite_uri,
                    "rewrite_authority": http.rewrite_authority,
                    "timeout": http.timeout,
                }
                if len(weights) > 1:
                    route["weights"] = weights
                routes.append(route)
        return {"domains": ["*" if h == "*" else h for h in vs.hosts], "routes": routes}

    def _side(
        self, spec: SideSpec | None, pod: Pod, registry: Registry, diagnostics: Diagnostics, merged: Merged
    ) -> dict[str, Any] | None:
        if spec is None or spec.provider is None:
            if spec is not None and spec.missing_provider:
                names = ", ".join(p.name for p in self.cluster.mesh.providers) or "none"
                diagnostics.warn(
                    f"provider {spec.missing_provider!r} named by {' / '.join(merged.applied) or 'defaultProviders'} "
                    f"matches no meshConfig.extensionProviders entry (have: {names}); Istio silently disables "
                    "tracing for the proxies it applies to, so they produce no spans"
                )
            return None
        provider = self._provider(spec.provider, registry, diagnostics)
        if provider is None:
            return None
        assert pod.proxy is not None
        node = pod.proxy["node"]
        sampling = spec.sampling
        if sampling is None:
            sampling = node.get("sampling")
        if sampling is None:
            sampling = self.cluster.mesh.pilot_trace_sampling
        tags = spec.custom_tags if spec.custom_tags is not None else tuple(tuple(t) for t in pod.proxy["custom_tags"])
        if pod.proxy.get("max_path_tag_length"):
            provider["max_tag_length"] = pod.proxy["max_path_tag_length"]
        return {
            "provider": provider,
            "sampling": float(sampling),
            "use_request_id": spec.use_request_id,
            "istio_tags": spec.istio_tags,
            "custom_tags": [_tag_json(t) for t in tags],
            "disable_span_reporting": spec.disable_span_reporting,
            "disable_context_propagation": spec.disable_context_propagation,
        }

    def _provider(
        self, provider: ExtensionProvider, registry: Registry, diagnostics: Diagnostics
    ) -> dict[str, Any] | None:
        host = provider.service.split("/", 1)[-1]
        try:
            ipaddress.ip_address(host)
            endpoints = [f"{host}:{provider.port}"]
        except ValueError:
            ports, error = registry.lookup(provider.service)
            if error:
                diagnostics.warn(f"{error}; Not able to configure requested tracing provider {provider.name!r}")
                return None
            matching = [sp for sp in ports if sp.port == provider.port]
            if not matching:
                diagnostics.warn(
                    f"service {provider.service} has no port {provider.port}; Not able to configure requested tracing "
                    f"provider {provider.name!r}"
                )
                return None
            endpoints = registry.endpoints(matching[0])
        return {
            "name": provider.name,
            "kind": provider.kind,
            "service": host,
            "port": provider.port,
            "endpoints": endpoints,
            "transport": provider.transport,
            "path": provider.path or "/v1/traces",
            "timeout": provider.timeout,
            "headers": [list(h) for h in provider.headers],
            "max_tag_length": provider.max_tag_length,
            "environment_detector": provider.environment_detector,
            "b3_with_w3c": provider.b3_with_w3c,
            "trace_id_64bit": provider.trace_id_64bit,
        }

    def _explain(
        self, diagnostics: Diagnostics, telemetries: list[Any], gateway_off: list[tuple[Pod, Merged]], traced: bool
    ) -> None:
        """Say what Istio would leave the user to discover."""
        for pod, merged in gateway_off:
            elsewhere = [t for t in telemetries if t.namespace != ISTIO_NAMESPACE and t.selector is None]
            if merged.legacy and elsewhere and traced:
                names = ", ".join(t.id for t in elsewhere)
                diagnostics.warn(
                    f"the ingress gateway {pod.namespace}/{pod.owner} is not traced: Telemetry {names} applies only "
                    f"to its own namespace (a Telemetry applied without a namespace lands in the current one), and "
                    f"none is in the root namespace {ISTIO_NAMESPACE}. Traces start at the first sidecar. To trace "
                    f"the gateway too, apply the Telemetry to {ISTIO_NAMESPACE}: "
                    f"meshtrace apply -f <telemetry.yaml> -n {ISTIO_NAMESPACE}"
                )
        if not telemetries and not self.cluster.mesh.default_tracing_providers and self.cluster.pods:
            diagnostics.warn(
                "no Telemetry resource and no meshConfig.defaultProviders.tracing: Istio configures no tracer, "
                "so no spans are produced (apply a Telemetry naming an extension provider)"
            )

    def _write(self, pod: Pod, config: dict[str, Any]) -> None:
        body = orjson.dumps(config, option=orjson.OPT_SORT_KEYS)
        if self._written.get(pod.key) == body:
            return
        self._written[pod.key] = body
        self.version += 1
        data = orjson.dumps({"version": self.version, **config})
        path = Path(pod.directory) / "proxy.json"
        tmp = path.with_name(f".proxy.json.{random.getrandbits(32):x}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def written_version(self, pod: Pod) -> int | None:
        path = Path(pod.directory) / "proxy.json"
        if not path.exists():
            return None
        return int(orjson.loads(path.read_bytes())["version"])

    def forget(self, pod: Pod) -> None:
        self._written.pop(pod.key, None)


def _describe(client: dict[str, Any] | None, server: dict[str, Any] | None, merged: Merged) -> str:
    if merged.legacy:
        return "off (no Telemetry, no default provider)"
    sides = []
    for name, side in (("client", client), ("server", server)):
        if side is not None:
            sides.append(f"{name} {side['sampling']:g}% → {side['provider']['name']}")
    return ", ".join(sides) if sides else "off"


def _match_json(match: routing.Match | None) -> dict[str, Any]:
    if match is None:
        return {}
    out: dict[str, Any] = {}
    if match.uri_kind:
        out[f"uri_{match.uri_kind}"] = match.uri
    if match.headers:
        out["headers"] = [list(h) for h in match.headers]
    if match.port:
        out["port"] = match.port
    return out


def _tag_json(tag: tuple[str, ...]) -> dict[str, str]:
    name, kind, value, default = [*tag, "", "", "", ""][:4]
    if kind == "formatter":
        inner = value.strip()
        if inner.startswith("%REQ(") and inner.endswith(")%"):
            return {"name": name, "kind": "header", "value": inner[5:-2], "default": default}
        return {"name": name, "kind": "literal", "value": value, "default": default}
    return {"name": name, "kind": kind, "value": value, "default": default}
