"""Envoy's tracing in Istio, one request at a time: request IDs, the sampling decision, W3C/B3 context,
spans with Envoy's and Istio's tags (encoded by the export process: ``records``).

References: Envoy ``source/extensions/request_id/uuid`` (the trace reason packed into the x-request-id),
``ConnectionManagerUtility::mutateTracingRequestHeader`` (the decision), the OpenTelemetry and Zipkin
tracers (context and sampled flag inherited from the parent), ``HttpTracerUtility`` (tags, in its order)
and Istio's ``tracing.go`` (Istio tags, custom tags sorted by name).
"""

from __future__ import annotations

import binascii
import os
import random
import time
from collections.abc import Callable
from typing import Any, Final

from meshtrace.mesh.proxy import spanwire
from meshtrace.mesh.proxy.config import Cluster, Node, TracingSpec

# The trace reason Envoy writes into character 14 of the x-request-id (the UUID version nibble).
NOT_TRACED: Final = "4"
SAMPLED: Final = "9"
FORCED: Final = "a"
CLIENT_FORCED: Final = "b"
_TRACED: Final = frozenset((SAMPLED, FORCED, CLIENT_FORCED))

ENVOY_VERSION: Final = "1.36.2"
_getrandbits: Final = random.getrandbits
_time_ns: Final = time.time_ns

_ID_DIGITS: Final = 2048  # random hex digits cut into span and trace ids per ``os.urandom`` call
_IDS_PER_FILL: Final = 64  # request ids formatted per ``os.urandom`` call
_VARIANT: Final = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")  # RFC 4122's variant, evenly
_LOWER_HEX_DIGITS: Final = b"0123456789abcdef"
_ODD_HEX_DIGITS: Final = frozenset(b"13579bdf")  # the sampled flag is the flags' lowest bit
_DASH: Final = ord("-")
_LOWER_F: Final = ord("f")
# A traceparent's bytes by class (lower-case hex digit h, upper-case H, dash, anything else ?), and the
# shape a valid one has: a translation with a full table is one table lookup per byte, while deleting bytes
# made CPython build a table for every call (~1,250 instructions per traceparent).
_TRACEPARENT_CLASSES: Final = bytes(
    b"h"[0] if c in _LOWER_HEX_DIGITS else b"H"[0] if c in b"ABCDEF" else c if c == _DASH else b"?"[0]
    for c in range(256)
)
_TRACEPARENT_SHAPE: Final = b"hh-" + b"h" * 32 + b"-" + b"h" * 16 + b"-hh"
_ZERO16: Final = b"0" * 16
_ZERO32: Final = b"0" * 32


class _RequestIds:
    """Request ids with one trace reason, formatted in batches (``_request_ids``) and handed out in turn."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.text = ""
        self.at = 0

    def take(self) -> str:
        at = self.at
        if at >= len(self.text):
            self.text = _request_ids(_IDS_PER_FILL, self.reason)
            at = 0
        self.at = at + 36
        return self.text[at : at + 36]


class _Random:
    """Span ids, trace ids and request ids cut from one ``os.urandom`` call per few kilobytes, already in
    the hex the headers carry: a call, a conversion and a formatting per id cost more than the rest of a
    span's handling in the proxy. Emptied in a forked child, which must not repeat its parent's ids."""

    def __init__(self) -> None:
        self.hexed = b""
        self.at = 0
        self.not_traced = _RequestIds(NOT_TRACED)
        self.sampled = _RequestIds(SAMPLED)

    def reset(self) -> None:
        self.hexed, self.at = b"", 0
        self.not_traced, self.sampled = _RequestIds(NOT_TRACED), _RequestIds(SAMPLED)

    def digits(self, count: int) -> bytes:
        at = self.at
        end = at + count
        if end > len(self.hexed):
            self.hexed = binascii.hexlify(os.urandom(_ID_DIGITS // 2))
            at, end = 0, count
        self.at = end
        return self.hexed[at:end]


def _request_ids(count: int, reason: str) -> str:
    """``count`` UUIDv4 strings back to back, formatted by slice assignments over all of them at once."""
    text = bytearray(binascii.hexlify(os.urandom(18 * count)))  # 36 random hex digits per id
    dashes = b"-" * count
    for at in (8, 13, 18, 23):
        text[at::36] = dashes
    text[14::36] = reason.encode() * count
    text[19::36] = bytes(text[19::36]).translate(_VARIANT)
    return text.decode("ascii")


_RANDOM: Final = _Random()
os.register_at_fork(after_in_child=_RANDOM.reset)


def new_request_id() -> str:
    """A UUIDv4 string; its version nibble doubles as "not traced yet"."""
    return _RANDOM.not_traced.take()


def trace_reason(request_id: str) -> str:
    return request_id[14] if len(request_id) == 36 else ""


def with_reason(request_id: str, reason: str) -> str:
    return request_id[:14] + reason + request_id[15:]


def request_id_bucket(request_id: str) -> int | None:
    """The first 8 hex digits modulo 10000, Envoy's ``modBy``; ``None`` for a malformed id."""
    if len(request_id) != 36:
        return None
    try:
        return int(request_id[:8], 16) % 10000
    except ValueError:
        return None


def decide(request_id: str, threshold: int, use_request_id: bool, client_trace: bool, force: bool) -> str:
    """The request id after the sampling decision (``threshold`` = percentage × 100, of 10000)."""
    if not use_request_id or trace_reason(request_id) != NOT_TRACED:
        return request_id  # decided upstream already (the usual case past the first proxy): nothing to parse
    bucket = request_id_bucket(request_id)
    if bucket is None:
        return request_id
    if client_trace:
        return with_reason(request_id, CLIENT_FORCED)
    if force:
        return with_reason(request_id, FORCED)
    if bucket < threshold:
        return with_reason(request_id, SAMPLED)
    return request_id


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """``00-<32 hex>-<16 hex>-<2 hex>`` → (trace id, parent span id, sampled), the ids in lower-case hex;
    ``None`` if invalid. Checked with one ``translate`` into classes of bytes rather than parsing the digits,
    and indexes rather than slices: this runs on every proxy past the first."""
    size = len(value)
    if size < 55 or value[2] != _DASH or value[35] != _DASH or value[52] != _DASH:
        return None
    if size != 55:  # a later version may append fields
        if value[:2] in (b"00", b"ff"):
            return None
        value = value[:55]
    elif value[0] == value[1] == _LOWER_F:
        return None  # version ff is invalid
    shape = value.translate(_TRACEPARENT_CLASSES)
    if shape != _TRACEPARENT_SHAPE:  # or upper-case digits, made lower
        if shape.replace(b"H", b"h") != _TRACEPARENT_SHAPE:
            return None
        value = value.lower()
    trace_id, span_id = value[3:35], value[36:52]
    if trace_id == _ZERO32 or span_id == _ZERO16:
        return None
    return trace_id, span_id, value[54] in _ODD_HEX_DIGITS


def parse_b3(headers: dict[bytes, bytes]) -> tuple[bytes, bytes, bool | None] | None:
    """B3 multi-header or single-header context → (trace id, span id, sampled or ``None`` if unset), the
    ids in lower-case hex, a 64-bit trace id padded to 128 bits."""
    single = headers.get(b"b3")
    if single:
        parts = single.split(b"-")
        if len(parts) == 1:
            return None
        try:
            trace_id = bytes.fromhex(parts[0].decode().rjust(32, "0"))
            span_id = bytes.fromhex(parts[1].decode())
        except ValueError:
            return None
        sampled = None if len(parts) < 3 else parts[2] in (b"1", b"d")
        if len(span_id) != 8 or len(trace_id) != 16:
            return None
        return binascii.hexlify(trace_id), binascii.hexlify(span_id), sampled
    trace_hex, span_hex = headers.get(b"x-b3-traceid"), headers.get(b"x-b3-spanid")
    if not trace_hex or not span_hex:
        return None
    try:
        trace_id = bytes.fromhex(trace_hex.decode().rjust(32, "0"))
        span_id = bytes.fromhex(span_hex.decode())
    except ValueError:
        return None
    if len(trace_id) != 16 or len(span_id) != 8:
        return None
    flag = headers.get(b"x-b3-sampled")
    trace_hex, span_hex = binascii.hexlify(trace_id), binascii.hexlify(span_id)
    if headers.get(b"x-b3-flags") == b"1":
        return trace_hex, span_hex, True
    return trace_hex, span_hex, None if flag is None else flag in (b"1", b"true")


def _new_id(digits: int) -> bytes:
    """A random id of ``digits`` hex digits (16 or 32), never all zero."""
    while True:
        value = _RANDOM.digits(digits)
        if value != _ZERO16 and value != _ZERO32:
            return value


class Span:
    """A span in flight; ``finish`` turns it into a record for the exporter. Its ids are lower-case hex, as
    headers carry them: the proxy never converts them, the export process does (``records.encode_entry``)."""

    __slots__ = ("kind", "name", "parent_id", "sampled", "span_id", "start_ns", "trace_id", "trace_state")

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent_id: bytes, sampled: bool, kind: int, name: str, state: str
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.kind = kind
        self.name = name
        self.trace_state = state
        self.start_ns = _time_ns()


class Finished:
    """What a request left for its span's tags. A plain class, not a dataclass: a dataclass's ``__init__``
    is generated at run time, so it would run interpreted in the compiled data path (``native``)."""

    __slots__ = (
        "client_trace_id",
        "cluster",
        "flags",
        "headers",
        "method",
        "peer_address",
        "request_id",
        "request_size",
        "response_size",
        "status",
        "upstream_address",
        "url",
        "user_agent",
    )

    def __init__(
        self,
        request_id: str,
        url: str,
        method: str,
        user_agent: str,
        peer_address: str,
        request_size: int,
        response_size: int,
        status: int,
        flags: str,
        cluster: Cluster | None,
        upstream_address: str,
        client_trace_id: str = "",
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        self.request_id = request_id
        self.url = url
        self.method = method
        self.user_agent = user_agent
        self.peer_address = peer_address
        self.request_size = request_size
        self.response_size = response_size
        self.status = status
        self.flags = flags
        self.cluster = cluster
        self.upstream_address = upstream_address
        self.client_trace_id = client_trace_id
        self.headers = headers


class Note:
    """What a listener's ``complete`` needs to tag the spans of an exchange (kept on the exchange)."""

    __slots__ = ("host", "path", "request_id", "tracer")

    def __init__(self, tracer: SideTracer, request_id: str, host: bytes, path: bytes) -> None:
        self.tracer = tracer
        self.request_id = request_id
        self.host = host
        self.path = path


class SideTracer:
    """One side's Telemetry spec compiled for the hot path; ``None`` spec means tracing is off."""

    def __init__(self, spec: TracingSpec | None, node: Node, sink: Callable[[Any], None] | None) -> None:
        self.spec = spec
        self.enabled = spec is not None
        self.sink = sink
        self.node = node
        if spec is None:
            self.threshold = 0
            return
        self.threshold = round(spec.sampling * 100)
        self.use_request_id = spec.use_request_id
        self.propagate = not spec.disable_context_propagation
        self.report = not spec.disable_span_reporting and sink is not None
        self.zipkin = spec.provider.kind == "zipkin"
        self.w3c = not self.zipkin or spec.provider.b3_with_w3c
        self.max_tag_length = spec.provider.max_tag_length
        self.header_tags = tuple(t for t in spec.custom_tags if t.kind == "header")
        fixed = self._fixed_tags()
        self.fixed_tags = fixed
        self.fixed_bytes = spanwire.string_attributes(fixed)
        self.start_bytes = spanwire.string_attributes([("node_id", node.id), ("zone", "")])
        self._cluster_bytes: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}

    def _fixed_tags(self) -> list[tuple[str, str]]:
        """Istio's tags and the literal/environment custom tags: the same on every span, sorted by name."""
        assert self.spec is not None
        tags: dict[str, str] = {}
        if self.spec.istio_tags:
            tags.update(
                {
                    "istio.canonical_revision": self.node.canonical_revision,
                    "istio.canonical_service": self.node.canonical_service,
                    "istio.mesh_id": self.node.mesh_id,
                    "istio.namespace": self.node.namespace,
                    "istio.cluster_id": self.node.cluster_id,
                }
            )
        for tag in self.spec.custom_tags:
            if tag.kind == "literal":
                tags[tag.name] = tag.value
            elif tag.kind == "environment":
                value = self.node.env.get(tag.value, os.environ.get(tag.value, tag.default))
                if value:
                    tags[tag.name] = value
        return sorted(tags.items())

    # -- the request path ---------------------------------------------------------------------

    def sample(self, request_id: str, headers: dict[bytes, bytes]) -> str:
        """The request id with this proxy's decision in it (only while still undecided)."""
        return decide(
            request_id,
            self.threshold,
            self.use_request_id,
            b"x-client-trace-id" in headers,
            b"x-envoy-force-trace" in headers,
        )

    def fresh_request_id(self, headers: dict[bytes, bytes]) -> str:
        """``sample(new_request_id(), headers)``, without parsing the new id when the rate alone decides."""
        if not self.use_request_id:
            return _RANDOM.not_traced.take()
        if b"x-client-trace-id" not in headers and b"x-envoy-force-trace" not in headers:
            if self.threshold >= 10000:
                return _RANDOM.sampled.take()
            if self.threshold <= 0:
                return _RANDOM.not_traced.take()
        return self.sample(_RANDOM.not_traced.take(), headers)

    def start(self, headers: dict[bytes, bytes], request_id: str, kind: int, name: str) -> Span | None:
        """A span continuing the incoming context, or a new trace with the local decision."""
        local = trace_reason(request_id) in _TRACED
        if not self.use_request_id:
            local = _getrandbits(14) % 10000 < self.threshold or b"x-client-trace-id" in headers
        if self.zipkin:
            b3 = parse_b3(headers)
            if b3 is not None:
                trace_id, parent, sampled = b3
                return Span(trace_id, _new_id(16), parent, local if sampled is None else sampled, kind, name, "")
        if self.w3c:
            traceparent = headers.get(b"traceparent")
            if traceparent is not None:
                context = parse_traceparent(traceparent)
                if context is None:
                    return None  # Envoy: an invalid traceparent gives a null span
                state = headers.get(b"tracestate", b"").decode("latin-1")
                return Span(context[0], _new_id(16), context[1], context[2], kind, name, state)
        if self.zipkin and self.spec and self.spec.provider.trace_id_64bit:
            trace_id = _ZERO16 + _new_id(16)  # 64 random bits, kept as 128 like a padded B3 id
        else:
            trace_id = _new_id(32)
        return Span(trace_id, _new_id(16), b"", local, kind, name, "")

    def child(self, parent: Span, name: str) -> Span:
        """The gateway's upstream span (Envoy's ``spawn_upstream_span``)."""
        return Span(
            parent.trace_id, _new_id(16), parent.span_id, parent.sampled, spanwire.CLIENT, name, parent.trace_state
        )

    def inject(self, span: Span) -> bytes:
        """Header lines carrying ``span`` to the upstream."""
        if not self.propagate:
            return b""
        out = b""
        if self.w3c:
            end = b"-01\r\n" if span.sampled else b"-00\r\n"
            out = b"".join((b"traceparent: 00-", span.trace_id, b"-", span.span_id, end))
            if span.trace_state:
                out += b"tracestate: " + span.trace_state.encode("latin-1") + b"\r\n"
        if self.zipkin:
            trace_hex = span.trace_id
            if self.spec and self.spec.provider.trace_id_64bit:
                trace_hex = trace_hex[16:]
            sampled = b"1" if span.sampled else b"0"
            out += b"".join((b"x-b3-traceid: ", trace_hex, b"\r\nx-b3-spanid: ", span.span_id, b"\r\n"))
            out += b"x-b3-sampled: " + sampled + b"\r\n"
            if span.parent_id:
                out += b"x-b3-parentspanid: " + span.parent_id + b"\r\n"
        return out

    def _cluster_tags(self, cluster: Cluster | None) -> bytes:
        if cluster is None:
            return b""
        cached = self._cluster_bytes.get(cluster.name)
        if cached is None:
            cached = spanwire.string_attributes(
                [("upstream_cluster", cluster.name), ("upstream_cluster.name", cluster.observability_name)]
            )
            self._cluster_bytes[cluster.name] = cached
        return cached

    def _name(self, name: str) -> bytes:
        cached = self._names.get(name)
        if cached is None:
            if len(self._names) > 4096:
                self._names.clear()
            cached = self._names[name] = spanwire.span_name(name)
        return cached

    def finish(self, span: Span, done: Finished) -> None:
        """Envoy's ``finalizeDownstreamSpan``; the exporter encodes the record (``records.encode_entry``)."""
        if span.sampled and self.report:
            self._finish(span, done, False)

    def finish_upstream(self, span: Span, done: Finished) -> None:
        """Envoy's ``finalizeUpstreamSpan`` for the gateway's upstream child span."""
        if span.sampled and self.report:
            self._finish(span, done, True)

    def _finish(self, span: Span, done: Finished, upstream: bool) -> None:
        assert self.sink is not None
        if self.zipkin:
            self.sink(self._zipkin(span, done, upstream))
            return
        status = done.status
        self.sink(
            (
                upstream,
                span.trace_id,
                span.span_id,
                span.parent_id,
                self._name(span.name),
                span.kind,
                span.start_ns,
                _time_ns(),
                self._status(span, status),
                span.trace_state,
                self.start_bytes,
                done.request_id,
                done.url,
                done.method,
                done.user_agent,
                done.peer_address,
                done.client_trace_id,
                done.request_size,
                done.response_size,
                self._cluster_tags(done.cluster),
                status,
                done.flags,
                done.upstream_address,
                self.fixed_bytes if not self.header_tags else spanwire.string_attributes(self._all_custom(done)),
            )
        )

    def _all_custom(self, done: Finished) -> list[tuple[str, str]]:
        tags = dict(self.fixed_tags)
        headers = done.headers or {}
        for tag in self.header_tags:
            value = headers.get(tag.value.lower().encode())
            text = value.decode("latin-1") if value is not None else tag.default
            if text:
                tags[tag.name] = text
        return sorted(tags.items())

    @staticmethod
    def _status(span: Span, status: int) -> int:
        if status == 0 or status >= 500 or (span.kind == spanwire.CLIENT and 400 <= status < 500):
            return spanwire.STATUS_ERROR
        return spanwire.STATUS_UNSET

    def _zipkin(self, span: Span, done: Finished, upstream: bool) -> dict[str, Any]:
        """A Zipkin v2 JSON span, as Envoy's Zipkin tracer reports it."""
        tags: dict[str, str] = {
            "component": "proxy",
            "http.status_code": str(done.status),
            "response_flags": done.flags,
        }
        if not upstream:
            tags.update(
                {
                    "node_id": self.node.id,
                    "guid:x-request-id": done.request_id,
                    "http.url": done.url,
                    "http.method": done.method,
                    "downstream_cluster": "-",
                    "user_agent": done.user_agent,
                    "http.protocol": "HTTP/1.1",
                    "peer.address": done.peer_address,
                    "request_size": str(done.request_size),
                    "response_size": str(done.response_size),
                }
            )
        if done.cluster is not None:
            tags["upstream_cluster"] = done.cluster.name
            tags["upstream_cluster.name"] = done.cluster.observability_name
        if done.upstream_address:
            tags["upstream_address"] = done.upstream_address
        if done.status == 0 or done.status >= 500:
            tags["error"] = "true"
        tags.update(self._all_custom(done))
        trace_hex = span.trace_id.decode()
        if self.spec and self.spec.provider.trace_id_64bit:
            trace_hex = trace_hex[16:]
        out: dict[str, Any] = {
            "traceId": trace_hex,
            "id": span.span_id.decode(),
            "name": span.name,
            "kind": "SERVER" if span.kind == spanwire.SERVER else "CLIENT",
            "timestamp": span.start_ns // 1000,
            "duration": max(1, (_time_ns() - span.start_ns) // 1000),
            "localEndpoint": {"serviceName": self.node.service_cluster, "ipv4": self.node.pod_ip},
            "tags": tags,
        }
        if span.parent_id:
            out["parentId"] = span.parent_id.decode()
        return out


def resource_attributes(node: Node, spec: TracingSpec | None) -> list[tuple[str, str]]:
    """``service.name`` is the proxy's service cluster; the environment detector adds
    ``OTEL_RESOURCE_ATTRIBUTES`` from the proxy's environment."""
    attributes = [
        ("service.name", node.service_cluster),
        ("telemetry.sdk.language", "cpp"),
        ("telemetry.sdk.name", "envoy"),
        ("telemetry.sdk.version", ENVOY_VERSION),
    ]
    if spec is not None and spec.provider.environment_detector:
        raw = node.env.get("OTEL_RESOURCE_ATTRIBUTES", "")
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            if sep and key.strip():
                attributes.append((key.strip(), value.strip()))
    return attributes
