"""Parsing what query APIs send: Go durations, Jaeger tag filters, size and time strings."""

from __future__ import annotations

import re
from datetime import datetime

import orjson

from meshtrace.errors import InvalidQuery

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}


def parse_duration_ns(text: str, *, name: str = "duration") -> int:
    """A Go duration (``1h30m``, ``250ms``, ``1.5s``, ``10us``), plus ``d`` for days; returns nanoseconds."""
    value = text.strip()
    if value == "0":
        return 0
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise InvalidQuery(f"{name} {text!r} is not a duration like 250ms, 1.5s, 2m or 1h30m")
    return round(total)


def parse_size(text: str, *, name: str = "size") -> int:
    """``16MiB``, ``500kB``, ``1048576`` → bytes."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise InvalidQuery(f"{name} {text!r} is not a size like 16MiB, 500kB or 1048576")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_time_ns(text: str, *, name: str, unit_ns: int) -> int:
    """An integer in ``unit_ns`` units since the epoch, or an RFC 3339 timestamp."""
    value = text.strip()
    if re.fullmatch(r"-?\d+", value):
        return int(value) * unit_ns
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError as exc:
        raise InvalidQuery(f"{name} {text!r} is neither an integer timestamp nor RFC 3339") from exc


def parse_int(text: str | None, *, name: str, default: int, minimum: int = 0, maximum: int = 10_000) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise InvalidQuery(f"{name} {text!r} is not an integer") from exc
    if not minimum <= value <= maximum:
        raise InvalidQuery(f"{name} must be between {minimum} and {maximum}")
    return value


def parse_jaeger_tags(tags_json: list[str], tag_pairs: list[str]) -> dict[str, str]:
    """Jaeger's ``tags={"k":"v"}`` (repeatable JSON maps) and ``tag=k:v``; every value as a string."""
    out: dict[str, str] = {}
    for doc in tags_json:
        try:
            parsed = orjson.loads(doc)
        except orjson.JSONDecodeError as exc:
            raise InvalidQuery(f"malformed 'tags' parameter {doc!r}: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidQuery(f"'tags' must be a JSON object of key to value, got {doc!r}")
        for key, value in parsed.items():
            out[str(key)] = value if isinstance(value, str) else orjson.dumps(value).decode()
    for pair in tag_pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise InvalidQuery(f"malformed 'tag' parameter {pair!r}: expected key:value")
        out[key] = value
    return out
