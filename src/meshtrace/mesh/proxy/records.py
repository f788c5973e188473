"""Span records: what the proxy's tracer hands its exporter for each finished OTLP span (``SideTracer.finish``,
a tuple of ``RECORD_FIELDS`` fields), and their encoding in the export process, off the request path.

The proxy marshals records and the export process encodes them: encoding a span in the proxy cost it ~10,000
instructions against ~5,000 for marshalling its record, and a proxy that handed over encoded spans served
fewer requests with a p99 two to three times as high (``BENCHMARKS.md``, sidecar). Envoy's tags:
``HttpTracerUtility`` (in its order, ``setCommonTags`` last), Istio's ``tracing.go``. Field numbers:
``opentelemetry/proto/trace/v1/trace.proto``.
"""

from __future__ import annotations

import binascii
import struct
from typing import Any, Final

from meshtrace.mesh.proxy import spanwire

_unhexlify: Final = binascii.unhexlify

_KEYS: Final = {
    k: spanwire.attribute_key(k)
    for k in (
        "guid:x-request-id",
        "http.url",
        "http.method",
        "user_agent",
        "peer.address",
        "guid:x-client-trace-id",
        "request_size",
        "response_size",
        "http.status_code",
        "response_flags",
        "upstream_address",
    )
}
_STATIC: Final = {
    "downstream_cluster": spanwire.string_attributes([("downstream_cluster", "-")]),
    "http.protocol": spanwire.string_attributes([("http.protocol", "HTTP/1.1")]),
    "component": spanwire.string_attributes([("component", "proxy")]),
    "error": spanwire.string_attributes([("error", "true")]),
}


_ENCODED: Final[dict[bytes, dict[Any, bytes]]] = {}  # per attribute key: value → encoded


def _tag(key_prefix: bytes, value: Any) -> bytes:
    """An attribute whose value repeats across spans (method, peer, status...), encoded once, for building
    a group of tags ``_CHUNKS`` has not seen (a new URL among known peers and methods reuses the rest)."""
    cache = _ENCODED.get(key_prefix)
    if cache is None:
        cache = _ENCODED[key_prefix] = {}
    encoded = cache.get(value)
    if encoded is None:
        if len(cache) > 10_000:
            cache.clear()
        encoded = cache[value] = spanwire.string_attribute(key_prefix, str(value))
    return encoded


_CHUNKS: Final[dict[tuple[Any, ...], bytes]] = {}  # the tags around a span's fresh ones → encoded together


def _chunk(key: tuple[Any, ...], tags: list[bytes]) -> bytes:
    if len(_CHUNKS) > 10_000:
        _CHUNKS.clear()
    encoded = _CHUNKS[key] = b"".join(tags)
    return encoded


# The fields of a span record (``SideTracer._finish``), as ``encode_entry`` unpacks them.
RECORD_FIELDS: Final = 24
_PACK_TIMES: Final = struct.Struct("<BBBQBQ").pack  # kind (field 6), start (7) and end (8), tags included
_REQUEST_ID_HEAD: Final = spanwire.string_attribute(_KEYS["guid:x-request-id"], "0" * 36)[:-36]


def encode_entry(record: tuple[Any, ...]) -> bytes:
    """The OTLP ``Span`` of a record from ``SideTracer.finish``, as an entry of ``ScopeSpans.spans`` (its
    field and length in front, so that a request is the entries side by side: ``spanwire.export_entries``).
    Tags in Envoy's order (``setCommonTags`` last). Runs in the export process, off the request path. The
    tags between the fresh ones (request id, client trace id) repeat from span to span as a group: each group
    is encoded once and found again by its values (one lookup instead of one per tag). The ids become bytes
    in one ``unhexlify`` of their fields written in hex, tags included, kind and times in one ``struct``
    call, and the whole entry in one join: each call and join was ~500-1,000 instructions of ~11,500 per
    span (``BENCHMARKS.md``, sidecar)."""
    (upstream, trace_id, span_id, parent_id, name, kind, start_ns, end_ns, status, trace_state, prefix,
     request_id, url, method, user_agent, peer, client_trace_id, request_size, response_size, cluster, code,
     flags, upstream_address, custom) = record  # fmt: skip
    if trace_state:
        state = trace_state.encode()
        ids = _unhexlify(b"0a10" + trace_id + b"1208" + span_id) + b"\x1a" + spanwire.length(len(state)) + state
        if parent_id:
            ids += _unhexlify(b"2208" + parent_id)
    elif parent_id:
        ids = _unhexlify(b"".join((b"0a10", trace_id, b"1208", span_id, b"2208", parent_id)))
    else:
        ids = _unhexlify(b"".join((b"0a10", trace_id, b"1208", span_id)))
    parts = [b"\x12", b"", ids, name, _PACK_TIMES(0x30, kind, 0x39, start_ns, 0x41, end_ns)]
    if upstream:
        key: tuple[Any, ...] = (True, upstream_address, cluster, code, flags, custom)
        attributes = _CHUNKS.get(key)
        if attributes is None:
            tags = [_STATIC["http.protocol"]]
            if upstream_address:
                tags += (
                    _tag(_KEYS["upstream_address"], upstream_address),
                    _tag(_KEYS["peer.address"], upstream_address),
                )
            attributes = _chunk(key, tags + _closing(cluster, code, flags, "", custom))
        parts.append(attributes)
    else:
        parts.append(prefix)
        if request_id:
            raw = request_id.encode()
            if len(raw) == 36:  # as every id Envoy or meshtrace makes: the tag's head is known
                parts += (_REQUEST_ID_HEAD, raw)
            else:
                parts.append(spanwire.string_attribute(_KEYS["guid:x-request-id"], request_id))
        if client_trace_id:
            parts.append(_head(url, method, user_agent, peer))
            parts.append(spanwire.string_attribute(_KEYS["guid:x-client-trace-id"], client_trace_id))
            parts.append(_tail(request_size, response_size, cluster, code, flags, upstream_address, custom))
        else:  # the usual case: the two groups side by side, found in one lookup
            key = (url, method, user_agent, peer, request_size, response_size, cluster, code, flags,
                   upstream_address, custom)  # fmt: skip
            group = _CHUNKS.get(key)
            if group is None:
                tail = _tail(request_size, response_size, cluster, code, flags, upstream_address, custom)
                group = _chunk(key, [_head(url, method, user_agent, peer), tail])
            parts.append(group)
    if status:
        parts.append(spanwire.STATUS_FIELDS[status])
    size = -1  # the entry's tag is not in its length
    for part in parts:
        size += len(part)
    parts[1] = spanwire.length(size)
    return b"".join(parts)


def _head(url: str, method: str, user_agent: str, peer: str) -> bytes:
    """A downstream span's tags from ``http.url`` to ``peer.address``."""
    key = (url, method, user_agent, peer)
    head = _CHUNKS.get(key)
    if head is None:
        head = _chunk(
            key,
            [
                _tag(_KEYS["http.url"], url),
                _tag(_KEYS["http.method"], method),
                _STATIC["downstream_cluster"],
                _tag(_KEYS["user_agent"], user_agent),
                _STATIC["http.protocol"],
                _tag(_KEYS["peer.address"], peer),
            ],
        )
    return head


def _tail(
    request_size: int, response_size: int, cluster: bytes, code: int, flags: str, upstream_address: str, custom: bytes
) -> bytes:
    """A downstream span's tags from ``request_size`` to the custom tags."""
    key = (False, request_size, response_size, cluster, code, flags, upstream_address, custom)
    tail = _CHUNKS.get(key)
    if tail is None:
        sizes = [_tag(_KEYS["request_size"], request_size), _tag(_KEYS["response_size"], response_size)]
        tail = _chunk(key, sizes + _closing(cluster, code, flags, upstream_address, custom))
    return tail


def _closing(cluster: bytes, code: int, flags: str, upstream_address: str, custom: bytes) -> list[bytes]:
    """``component`` to the custom tags: the span's last tags."""
    tags = [
        _STATIC["component"],
        cluster,
        _tag(_KEYS["http.status_code"], code),
        _tag(_KEYS["response_flags"], flags),
    ]
    if upstream_address:
        tags.append(_tag(_KEYS["upstream_address"], upstream_address))
    if code == 0 or code >= 500:
        tags.append(_STATIC["error"])
    tags.append(custom)
    return tags
