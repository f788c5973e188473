"""OTLP protobuf bytes for the proxy's spans, written directly.

Building spans through the protobuf library's Python API costs about 22 µs per span with Envoy's
twenty-odd attributes, as much as proxying the request itself; writing the few fixed fields and the
string attributes as bytes costs about 4 µs, and the attributes that never change for a listener and
cluster are encoded once. ``tests/mesh/test_spanwire.py`` checks every encoding against the protobuf
library. Field numbers: ``opentelemetry/proto/trace/v1/trace.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

_FIXED64: Final = struct.Struct("<Q").pack
_ONE_BYTE: Final = [bytes([n]) for n in range(128)]

# Span kinds and status codes, as in trace.proto.
SERVER: Final = 2
CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2
# Span.status (field 15) with its code (field 3), by code; nothing when unset.
STATUS_FIELDS: Final = (b"", b"\x7a\x02\x18\x01", b"\x7a\x02\x18\x02")


def varint(value: int) -> bytes:
    if value < 128:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINTS: Final = [varint(n) for n in range(1 << 14)]  # lengths below 16 KiB: a lookup, not a call


def length(size: int) -> bytes:
    """A length in front of a field (a lookup below 16 KiB)."""
    return _VARINTS[size] if size < 16384 else varint(size)


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_VARINTS[size] if size < 16384 else varint(size)) + payload


def attribute_key(key: str) -> bytes:
    """The start of a ``KeyValue`` for ``key``, to be completed by ``string_attribute``."""
    return b"\x0a" + varint(len(key.encode())) + key.encode() + b"\x12"


def string_attribute(key_prefix: bytes, value: str) -> bytes:
    """One ``Span.attributes`` entry (field 9) with a string value."""
    raw = value.encode()
    size = len(raw)
    if size > 16000 or len(key_prefix) > 300:
        any_value = b"\x0a" + varint(size) + raw
        key_value = key_prefix + varint(len(any_value)) + any_value
        return b"\x4a" + varint(len(key_value)) + key_value
    head = _VARINTS[size]
    inner = len(head) + 1 + size
    length = _VARINTS[inner]
    return b"".join((b"\x4a", _VARINTS[len(key_prefix) + len(length) + inner], key_prefix, length, b"\x0a", head, raw))


def string_attributes(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Attributes encoded once (the ones fixed for a listener and cluster)."""
    return b"".join([string_attribute(attribute_key(k), v) for k, v in pairs])


def span_name(name: str) -> bytes:
    return _field(b"\x2a", name.encode())


def encode_span(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes,
    name: bytes,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    status: int,
    trace_state: str = "",
    flags: int = 0,
) -> bytes:
    """A ``Span`` message; ``name`` comes from ``span_name`` and ``attributes`` is encoded entries."""
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
    if trace_state:
        parts.append(_field(b"\x1a", trace_state.encode()))
    if parent_span_id:
        parts += (b"\x22\x08", parent_span_id)
    parts += (name, b"\x30", _ONE_BYTE[kind], b"\x39", _FIXED64(start_ns), b"\x41", _FIXED64(end_ns), attributes)
    if status:
        parts += (b"\x7a\x02\x18", _ONE_BYTE[status])
    if flags:
        parts += (b"\x85\x01", struct.pack("<I", flags))
    return b"".join(parts)


def resource(attributes: Sequence[tuple[str, str]]) -> bytes:
    """A ``Resource`` message with string attributes (each ``KeyValue`` is field 1 here)."""
    entries = []
    for key, value in attributes:
        raw = value.encode()
        any_value = b"\x0a" + varint(len(raw)) + raw
        key_value = attribute_key(key) + varint(len(any_value)) + any_value
        entries.append(_field(b"\x0a", key_value))
    return b"".join(entries)


def export_request(resource_message: bytes, spans: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``Span`` messages (``export_entries``)."""
    return export_entries(resource_message, [b"\x12" + length(len(span)) + span for span in spans])


def export_entries(resource_message: bytes, entries: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest``: one ``ResourceSpans`` with one ``ScopeSpans`` whose scope is
    empty, as Envoy sends; ``entries`` are its ``spans`` fields, each with its tag and length."""
    resource_field = _field(b"\x0a", resource_message)
    scope_size = 0
    for entry in entries:
        scope_size += len(entry)
    scope_head = length(scope_size)
    head = length(len(resource_field) + 1 + len(scope_head) + scope_size)
    return b"".join([b"\x0a", head, resource_field, b"\x12", scope_head, *entries])  # one copy of the spans
