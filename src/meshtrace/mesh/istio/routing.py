"""Gateway and VirtualService resources, and the routes the ingress gateway gets from them.

Reference: ``pilot/pkg/networking/core/route/route.go`` (one Envoy route per match; the decorator that
names spans: ``<host FQDN>:<port><path>`` for a single destination, ``<VirtualService>:<port><path>`` for
weighted ones; ``<path>`` is ``/*`` without a match, the exact path, ``prefix*`` or the regex).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshtrace.mesh.istio.fields import Fields, duration
from meshtrace.mesh.resources import Obj

DOMAIN = "svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    name: str
    protocol: str
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Gateway:
    namespace: str
    name: str
    selector: dict[str, str]
    servers: tuple[Server, ...]


@dataclass(frozen=True, slots=True)
class Destination:
    host: str  # FQDN
    port: int | None
    subset: str
    weight: int


@dataclass(frozen=True, slots=True)
class Match:
    uri_kind: str  # "", "exact", "prefix", "regex"
    uri: str
    headers: tuple[tuple[str, str, str], ...]
    port: int | None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    matches: tuple[Match, ...]
    destinations: tuple[Destination, ...]
    rewrite_uri: str | None
    rewrite_authority: str | None
    timeout: float | None


@dataclass(frozen=True, slots=True)
class VirtualService:
    namespace: str
    name: str
    created: int
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]  # "namespace/name" (or "mesh")
    http: tuple[HttpRoute, ...]


def fqdn(host: str, namespace: str) -> str:
    """A Service host as a VirtualService writes it, made fully qualified in ``namespace``."""
    if host.endswith("." + DOMAIN) or host == "*":
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{DOMAIN}"
    if len(parts) == 2:
        return f"{host}.{DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


def parse_gateway(obj: Obj) -> Gateway:
    spec = Fields(obj.spec, "spec", obj.source, obj.describe())
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict):
        raise spec.error("selector", "must be a mapping of label to value")
    servers = []
    raw_servers = spec.items("servers")
    if not raw_servers:
        raise spec.error("servers", "at least one server is required", "add a server with a port and hosts")
    for index, raw in enumerate(raw_servers):
        server = Fields(raw, f"spec.servers[{index}]", obj.source, obj.describe())
        port = server.sub("port")
        number = port.number("number")
        if number is None or not 1 <= number <= 65535:
            raise port.error("number", f"{number!r} is not a port number", "use e.g. 8080")
        hosts = tuple(str(h) for h in server.items("hosts"))
        if not hosts:
            raise server.error("hosts", "at least one host is required", 'use "*" for every host')
        protocol = port.string("protocol", "HTTP").upper()
        servers.append(Server(int(number), port.string("name"), protocol, hosts))
    return Gateway(obj.namespace, obj.name, {str(k): str(v) for k, v in selector.items()}, tuple(servers))


def parse_virtual_service(obj: Obj) -> VirtualService:
    spec = Fields(obj.spec, "spec", obj.source, obj.describe())
    hosts = tuple(str(h) for h in spec.items("hosts"))
    if not hosts:
        raise spec.error("hosts", "at least one host is required", 'use "*" or a service name')
    gateways = []
    for gateway in spec.items("gateways"):
        text = str(gateway)
        gateways.append(text if "/" in text or text == "mesh" else f"{obj.namespace}/{text}")
    routes = []
    for index, raw in enumerate(spec.items("http")):
        routes.append(_http_route(Fields(raw, f"spec.http[{index}]", obj.source, obj.describe()), obj.namespace))
    return VirtualService(obj.namespace, obj.name, obj.created, hosts, tuple(gateways), tuple(routes))


def _http_route(route: Fields, namespace: str) -> HttpRoute:
    matches = []
    for index, raw in enumerate(route.items("match")):
        match = Fields(raw, f"{route.path}.match[{index}]", route.source, route.what)
        uri_kind, uri = "", ""
        if match.has("uri"):
            uri_fields = match.sub("uri")
            kinds = [k for k in ("exact", "prefix", "regex") if uri_fields.has(k)]
            if len(kinds) != 1:
                raise uri_fields.error("", "set exactly one of exact, prefix or regex")
            uri_kind, uri = kinds[0], uri_fields.string(kinds[0])
        headers = []
        raw_headers = match.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise match.error("headers", "must be a mapping of header name to match")
        for name, spec in raw_headers.items():
            header = Fields(spec, f"{match.path}.headers.{name}", route.source, route.what)
            kinds = [k for k in ("exact", "prefix", "regex") if header.has(k)]
            if len(kinds) != 1:
                raise header.error("", "set exactly one of exact, prefix or regex")
            headers.append((str(name).lower(), kinds[0], header.string(kinds[0])))
        port = match.number("port")
        matches.append(Match(uri_kind, uri, tuple(headers), int(port) if port else None))
    destinations = []
    raw_destinations = route.items("route")
    if not raw_destinations and not route.has("redirect") and not route.has("directResponse"):
        raise route.error("route", "at least one destination is required", "add route: [{destination: {host: ...}}]")
    for index, raw in enumerate(raw_destinations):
        entry = Fields(raw, f"{route.path}.route[{index}]", route.source, route.what)
        destination = entry.sub("destination")
        host = destination.string("host")
        if not host:
            raise destination.error("host", "is required", "name the destination Service")
        port = destination.sub("port").number("number")
        weight = entry.number("weight")
        destinations.append(
            Destination(
                fqdn(host, namespace),
                int(port) if port else None,
                destination.string("subset"),
                int(weight) if weight is not None else 0,
            )
        )
    if len(destinations) > 1 and sum(d.weight for d in destinations) not in (0, 100):
        raise route.error("route", "the weights of the destinations must add up to 100", "fix the weights")
    rewrite = route.sub("rewrite")
    timeout = duration(route.get("timeout"), route, "timeout") if route.has("timeout") else None
    return HttpRoute(tuple(matches), tuple(destinations), rewrite.get("uri"), rewrite.get("authority"), timeout)


def operation(
    match: Match | None, destinations: tuple[Destination, ...], ports: list[int], vs_name: str, listener_port: int
) -> str:
    """The route decorator, which names the spans of requests it routes."""
    path = "/*"
    if match is not None and match.uri_kind == "exact":
        path = match.uri
    elif match is not None and match.uri_kind == "prefix":
        path = match.uri + "*"
    elif match is not None and match.uri_kind == "regex":
        path = match.uri
    if len(destinations) == 1:
        return f"{destinations[0].host}:{ports[0]}{path}"
    return f"{vs_name}:{listener_port}{path}"
