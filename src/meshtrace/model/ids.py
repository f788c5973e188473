"""Trace and span ids as the query APIs accept them: hex text, normalised to lower case and full width."""

from __future__ import annotations

import string

from meshtrace.errors import InvalidQuery

_HEX = frozenset(string.hexdigits)


def normalize_trace_id(text: str) -> str:
    """Return a 32-digit lower-case trace id; shorter ids are left-padded as Jaeger does (64-bit ids)."""
    value = text.strip().lower()
    if not value or len(value) > 32 or not _HEX.issuperset(value):
        raise InvalidQuery(f"trace id {text!r} is not 1 to 32 hexadecimal digits")
    value = value.rjust(32, "0")
    if value == "0" * 32:
        raise InvalidQuery("trace id must not be all zeros")
    return value


def normalize_span_id(text: str) -> str:
    """Return a 16-digit lower-case span id."""
    value = text.strip().lower()
    if not value or len(value) > 16 or not _HEX.issuperset(value):
        raise InvalidQuery(f"span id {text!r} is not 1 to 16 hexadecimal digits")
    return value.rjust(16, "0")
