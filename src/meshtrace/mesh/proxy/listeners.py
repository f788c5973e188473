"""What each listener does with a request: the sidecar's inbound and outbound sides, the ingress
gateway's routes, the node proxy that stands in for cluster DNS, and the admin port.

Each listener reads the proxy's current ``State`` on every request, so a new configuration (a Telemetry
change, new endpoints) applies to the next request without dropping connections.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable
from typing import Any, Final

import httptools
import orjson

from meshtrace.mesh.proxy import spanwire
from meshtrace.mesh.proxy.config import Cluster, Inbound, ProxyConfig, Route, VirtualHost
from meshtrace.mesh.proxy.http1 import Exchange, Handler
from meshtrace.mesh.proxy.tracer import Finished, Note, SideTracer, Span, new_request_id

_B3: Final = frozenset((b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags", b"b3"))
_W3C: Final = frozenset((b"traceparent", b"tracestate"))
_CONTEXT: Final = _B3 | _W3C
PASSTHROUGH: Final = "PassthroughCluster"


class OutboundRoute:
    """Where the outbound listener sends requests for one Host header, and the span name they get."""

    __slots__ = ("cluster", "decorator", "decorator_line")

    def __init__(self, cluster: Cluster | None, decorator: str) -> None:
        self.cluster = cluster
        self.decorator = decorator
        self.decorator_line = b"x-envoy-decorator-operation: " + decorator.encode() + b"\r\n"


_MAX_ROUTES: Final = 1024  # Host headers remembered per configuration; a client inventing them empties it


class State:
    """One configuration version compiled for the data path, and what the listeners resolved in it (kept
    here, not in the listeners, so that a replaced configuration is garbage as soon as it is replaced)."""

    def __init__(self, config: ProxyConfig, client: SideTracer, server: SideTracer) -> None:
        self.config = config
        self.client = client
        self.server = server
        self.version = config.version
        self._next: dict[str, int] = {}
        self.stats: dict[str, int] = {}
        # Outbound routes by Host header: an app sends the same few (origin-form, as under Istio's
        # interception), and resolving one costs ~2,000 instructions a request.
        self.routes: dict[bytes, OutboundRoute] = {}
        self.inbound: dict[object, tuple[Inbound, Cluster]] = {}  # by port
        for inbound in reversed(config.inbound):  # the first for a port wins
            self.inbound[inbound.port] = inbound, Cluster(f"inbound|{inbound.port}||", "", inbound.port, (inbound.app,))

    def pick(self, cluster: Cluster) -> str | None:
        """Round robin over the cluster's endpoints (all versions of a service)."""
        endpoints = cluster.endpoints
        if not endpoints:
            return None
        index = self._next.get(cluster.name, 0)
        self._next[cluster.name] = index + 1
        return endpoints[index % len(endpoints)]

    def count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1


class Holder:
    """The current ``State``; swapped whole on reload."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.totals: dict[str, int] = {}


def _split_target(target: bytes, host_header: bytes | None) -> tuple[str, int, bytes]:
    """(host, port, origin-form path) from an absolute-form or origin-form request target."""
    if target[:1] != b"/" and target.startswith((b"http://", b"HTTP://")):
        # Typed Any: httptools declares these bytes and int, but a part the URL lacks is None.
        url: Any = httptools.parse_url(target)
        path: bytes = url.path or b"/"
        if url.query:
            path += b"?" + url.query
        return url.host.decode(), url.port or 80, path
    host, port = _host_port(host_header or b"")
    return host, port, target


def _host_port(value: bytes) -> tuple[str, int]:
    text = value.decode("latin-1")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit() else 80
    host, sep, port = text.rpartition(":")
    if sep and port.isascii() and port.isdigit():
        return host, int(port)
    return text, 80


def _request_id(exchange: Exchange, tracer: SideTracer, traced: bool) -> str:
    """The request's x-request-id or a new one, with this proxy's sampling decision in it when it traces."""
    value = exchange.headers.get(b"x-request-id")
    if not traced:
        return value.decode("latin-1") if value else new_request_id()
    if value:
        return tracer.sample(value.decode("latin-1"), exchange.headers)
    return tracer.fresh_request_id(exchange.headers)


def _trace_headers(exchange: Exchange, tracer: SideTracer, span: Span | None) -> bytes:
    """The incoming context replaced by ``span`` (when tracing injects), or passed on unchanged."""
    headers = exchange.headers
    if span is not None and tracer.propagate:
        out = tracer.inject(span)
        if not tracer.w3c:
            out += _copy(headers, _W3C)
        if not tracer.zipkin:
            out += _copy(headers, _B3)
        return out
    return _copy(headers, _CONTEXT)


def _copy(headers: dict[bytes, bytes], names: frozenset[bytes]) -> bytes:
    """The headers among ``names``, in arrival order (``headers`` holds only the few the proxy manages)."""
    out = b""
    for name, value in headers.items():
        if name in names:
            out += name + b": " + value + b"\r\n"
    return out


def _head(
    exchange: Exchange, path: bytes, host: bytes, request_id: str, extra: bytes, forwarded_for: bytes = b""
) -> bytes:
    headers = exchange.headers
    proto = headers.get(b"x-forwarded-proto", b"http")
    parts = [exchange.method, b" ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\n", *exchange.lines]
    parts += (b"x-forwarded-proto: ", proto, b"\r\nx-request-id: ", request_id.encode(), b"\r\n", extra)
    if forwarded_for:
        parts.append(forwarded_for)
    if exchange.body:
        parts.append(b"content-length: %d\r\n" % len(exchange.body))
    parts.append(b"\r\n")
    return b"".join(parts)


def _url(exchange: Exchange, host: bytes, path: bytes, max_length: int) -> str:
    proto = exchange.headers.get(b"x-forwarded-proto", b"http")
    return b"".join((proto, b"://", host, path[:max_length])).decode("latin-1")


def _finished(exchange: Exchange, note: Note, peer: str) -> Finished:
    headers = exchange.headers
    user_agent = headers.get(b"user-agent")
    client_trace = headers.get(b"x-client-trace-id")
    return Finished(  # positional: this runs for every sampled span
        note.request_id,
        _url(exchange, note.host, note.path, note.tracer.max_tag_length),
        exchange.method.decode(),
        user_agent.decode("latin-1") if user_agent else "-",
        peer,
        len(exchange.body),
        exchange.response_bytes,
        exchange.status,
        exchange.flags,
        exchange.cluster,
        exchange.endpoint,
        client_trace.decode("latin-1") if client_trace else "",
        headers if note.tracer.header_tags else None,
    )


class InboundListener(Handler):
    """Requests to the pod: a SERVER span (named by the caller's decorator header), then the app."""

    def __init__(self, holder: Holder, port: int) -> None:
        self.holder = holder
        self.port = port
        self._key: object = port  # boxed once, not on every lookup

    def _inbound(self, state: State) -> tuple[Inbound, Cluster] | None:
        return state.inbound.get(self._key)

    def handle(self, exchange: Exchange) -> None:
        state = self.holder.state
        route = self._inbound(state)
        state.count("downstream_rq_total")
        if route is None:
            exchange.local_reply(503, "no healthy upstream", "UH")
            return
        inbound, cluster = route
        headers = exchange.headers
        tracer = state.server
        request_id = _request_id(exchange, tracer, tracer.enabled)
        span = None
        host = headers.get(b"host", b"")
        path = exchange.target
        if path[:1] != b"/":
            path = _split_target(path, host)[2]
        if tracer.enabled:
            operation = headers.pop(b"x-envoy-decorator-operation", None)
            name = operation.decode("latin-1") if operation else inbound.decorator
            span = tracer.start(headers, request_id, spanwire.SERVER, name)
            exchange.note = Note(tracer, request_id, host, path)
        exchange.span = span
        exchange.cluster = cluster
        extra = _trace_headers(exchange, tracer, span)
        operation = headers.get(b"x-envoy-decorator-operation")
        if operation is not None:
            extra += b"x-envoy-decorator-operation: " + operation + b"\r\n"
        exchange.forward(inbound.app, _head(exchange, path, host, request_id, extra))

    def complete(self, exchange: Exchange) -> None:
        span, note = exchange.span, exchange.note
        if span is not None and span.sampled and note is not None:
            note.tracer.finish(span, _finished(exchange, note, exchange.down.peer))


class OutboundListener(Handler):
    """Requests from the pod's app (an HTTP proxy for it): service names resolved through the mesh
    registry, a CLIENT span named by the route decorator, endpoints in round robin."""

    def __init__(self, holder: Holder, traced: bool = True) -> None:
        self.holder = holder
        self.traced = traced

    def _route(self, state: State, host: str, port: int) -> OutboundRoute:
        service = state.config.hosts.get(f"{host}:{port}")
        if service is None:
            return OutboundRoute(Cluster(PASSTHROUGH, "", port, (f"{host}:{port}",)), f"{host}:{port}/*")
        return OutboundRoute(state.config.clusters.get(service.cluster), service.decorator)

    def _origin_route(self, state: State, host_header: bytes) -> OutboundRoute:
        routes = state.routes
        route = routes.get(host_header)
        if route is None:
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            route = routes[host_header] = self._route(state, *_host_port(host_header))
        return route

    def handle(self, exchange: Exchange) -> None:
        state = self.holder.state
        state.count("downstream_rq_total")
        headers = exchange.headers
        host_header = headers.get(b"host")
        path = exchange.target
        if path[:1] == b"/" and host_header is not None:
            route = self._origin_route(state, host_header)
            host_bytes = host_header
        else:
            host, port, path = _split_target(path, host_header)
            route = self._route(state, host, port)
            host_bytes = host_header or f"{host}:{port}".encode()
        cluster = route.cluster
        if cluster is None:
            exchange.local_reply(503, "no healthy upstream", "UH")
            return
        exchange.cluster = cluster
        tracer = state.client
        request_id = _request_id(exchange, tracer, self.traced and tracer.enabled)
        span = None
        extra = b""
        if self.traced and tracer.enabled:
            span = tracer.start(headers, request_id, spanwire.CLIENT, route.decorator)
            exchange.note = Note(tracer, request_id, host_bytes, path)
            if span is not None:
                extra = route.decorator_line
        exchange.span = span
        endpoint = state.pick(cluster)
        if endpoint is None:
            exchange.local_reply(503, "no healthy upstream", "UH")
            return
        extra += _trace_headers(exchange, tracer, span) if self.traced else _copy(headers, _CONTEXT)
        exchange.forward(endpoint, _head(exchange, path, host_bytes, request_id, extra))

    def complete(self, exchange: Exchange) -> None:
        span, note = exchange.span, exchange.note
        if span is not None and span.sampled and note is not None:
            # The downstream of an outbound span is the pod's own application.
            note.tracer.finish(span, _finished(exchange, note, self.holder.state.config.node.pod_ip))


class GatewayListener(Handler):
    """The ingress gateway: Gateway + VirtualService routes; a SERVER span and, as Envoy does for
    gateways since Istio 1.28, a CLIENT child span per upstream request."""

    def __init__(self, holder: Holder, port: int) -> None:
        self.holder = holder
        self.port = port
        self._regex: dict[str, re.Pattern[str]] = {}

    def _virtual_hosts(self, state: State) -> tuple[VirtualHost, ...]:
        for listener in state.config.gateway:
            if listener.port == self.port:
                return listener.virtual_hosts
        return ()

    def route(self, state: State, host: str, path: str, headers: dict[bytes, bytes]) -> Route | None:
        bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        for vhost in self._virtual_hosts(state):
            if not any(_domain_matches(d, host, bare) for d in vhost.domains):
                continue
            for route in vhost.routes:
                if self._matches(route, path, headers):
                    return route
        return None

    def _matches(self, route: Route, path: str, headers: dict[bytes, bytes]) -> bool:
        match = route.match
        uri = path.split("?", 1)[0]
        if match.uri_exact is not None and uri != match.uri_exact:
            return False
        if match.uri_prefix is not None and not uri.startswith(match.uri_prefix):
            return False
        if match.uri_regex is not None and not self._compiled(match.uri_regex).fullmatch(uri):
            return False
        if match.port is not None and match.port != self.port:
            return False
        for name, kind, value in match.headers:
            actual = headers.get(name.encode())
            if actual is None:
                return False
            text = actual.decode("latin-1")
            if (kind == "exact" and text != value) or (kind == "prefix" and not text.startswith(value)):
                return False
            if kind == "regex" and not self._compiled(value).fullmatch(text):
                return False
        return True

    def _compiled(self, pattern: str) -> re.Pattern[str]:
        compiled = self._regex.get(pattern)
        if compiled is None:
            compiled = self._regex[pattern] = re.compile(pattern)
        return compiled

    def handle(self, exchange: Exchange) -> None:
        state = self.holder.state
        state.count("downstream_rq_total")
        headers = exchange.headers
        host_bytes = headers.get(b"host", b"")
        _, _, path = _split_target(exchange.target, host_bytes)
        route = self.route(state, host_bytes.decode("latin-1"), path.decode("latin-1"), _observed(exchange))
        tracer = state.client
        request_id = _request_id(exchange, tracer, tracer.enabled)
        span = None
        name = route.decorator if route is not None else f"egress {host_bytes.decode('latin-1')}"
        if tracer.enabled:
            # Gateways spawn an upstream span, so Envoy makes the downstream span a SERVER span.
            span = tracer.start(headers, request_id, spanwire.SERVER, name)
            exchange.note = Note(tracer, request_id, host_bytes, path)
        exchange.span = span
        if route is None:
            exchange.local_reply(404, "", "NR")
            return
        cluster = state.config.clusters.get(_weighted(route) if route.weights else route.cluster)
        exchange.cluster = cluster
        endpoint = state.pick(cluster) if cluster is not None else None
        if cluster is None or endpoint is None:
            exchange.local_reply(503, "no healthy upstream", "UH")
            return
        child = None
        if span is not None:
            child = tracer.child(span, f"router {cluster.observability_name} egress")
            exchange.upstream_span = child
        extra = _trace_headers(exchange, tracer, child or span)
        if span is not None:
            extra += b"x-envoy-decorator-operation: " + route.decorator.encode() + b"\r\n"
        if route.rewrite_uri is not None:
            path = _rewrite(path, route)
        if route.rewrite_authority:
            host_bytes = route.rewrite_authority.encode()
        forwarded = headers_forwarded_for(exchange)
        exchange.forward(endpoint, _head(exchange, path, host_bytes, request_id, extra, forwarded))

    def complete(self, exchange: Exchange) -> None:
        span, note = exchange.span, exchange.note
        if note is None or span is None or not span.sampled:
            return
        done = _finished(exchange, note, exchange.down.peer)
        if exchange.upstream_span is not None:
            note.tracer.finish_upstream(exchange.upstream_span, done)
        note.tracer.finish(span, done)


def _weighted(route: Route) -> str:
    total = sum(weight for _, weight in route.weights)
    point = random.random() * total  # noqa: S311 - traffic splitting, not security
    for cluster, weight in route.weights:
        point -= weight
        if point < 0:
            return cluster
    return route.weights[-1][0]


def headers_forwarded_for(exchange: Exchange) -> bytes:
    """The edge appends the client's address to ``x-forwarded-for`` (``use_remote_address``)."""
    previous = None
    for line in exchange.lines:
        if line[:16].lower() == b"x-forwarded-for:":
            previous = line
    if previous is not None:
        exchange.lines.remove(previous)
        return previous.rstrip(b"\r\n") + b", " + exchange.down.peer.encode() + b"\r\n"
    return b"x-forwarded-for: " + exchange.down.peer.encode() + b"\r\n"


def _observed(exchange: Exchange) -> dict[bytes, bytes]:
    """All request headers by lower-case name (only for routes that match on headers)."""
    headers = dict(exchange.headers)
    for line in exchange.lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), value.strip())
    return headers


def _rewrite(path: bytes, route: Route) -> bytes:
    text = path.decode("latin-1")
    match = route.match
    new = route.rewrite_uri or "/"
    if match.uri_prefix is not None and text.startswith(match.uri_prefix):
        return (new + text[len(match.uri_prefix) :]).encode("latin-1")
    query = "?" + text.split("?", 1)[1] if "?" in text else ""
    return (new + query).encode("latin-1")


def _domain_matches(domain: str, host: str, bare: str) -> bool:
    if domain == "*":
        return True
    if domain.startswith("*"):
        return bare.endswith(domain[1:]) or host.endswith(domain[1:])
    return domain in (host, bare)


class AdminListener(Handler):
    """The proxy's admin and status ports: ``/ready``, ``/healthz/ready``, ``/stats``, ``/config_dump``,
    ``/quitquitquit`` (ask the proxy to exit, as Istio's agent does)."""

    def __init__(self, holder: Holder, stats: Callable[[], dict[str, Any]], quit: Callable[[], None]) -> None:
        self.holder = holder
        self.stats = stats
        self.quit = quit

    def handle(self, exchange: Exchange) -> None:
        path = exchange.target.split(b"?", 1)[0]
        state = self.holder.state
        if path in (b"/ready", b"/healthz/ready"):
            return _json(exchange, {"state": "LIVE", "version": state.version})
        if path == b"/stats":
            return _json(exchange, self.stats())
        if path == b"/config_dump":
            return _json(exchange, {"version": state.version, "node": state.config.node.id})
        if path == b"/quitquitquit" and exchange.method == b"POST":
            _json(exchange, {"state": "exiting"})
            self.quit()
            return None
        exchange.local_reply(404, "not found", "-")
        return None

    def complete(self, exchange: Exchange) -> None:
        return None


def _json(exchange: Exchange, data: Any) -> None:
    body = orjson.dumps(data)
    exchange.status = 200
    exchange.down.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    exchange.down.finish(exchange)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
