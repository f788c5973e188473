"""Reading Istio API objects written in YAML: protobuf's JSON mapping accepts ``camelCase`` and the
original ``snake_case`` field names (the seed writes ``resource_detectors``), and rejects unknown fields."""

from __future__ import annotations

import re
from typing import Any

from meshtrace.mesh.resources import ResourceError, Source


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


class Fields:
    """A mapping read field by field; ``done()`` reports fields nobody asked for."""

    def __init__(self, data: Any, path: str, source: Source | None, what: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ResourceError(source, what, path, f"must be a mapping, not {type(data).__name__}", "")
        self.data = data
        self.path = path
        self.source = source
        self.what = what
        self._seen: set[str] = set()

    def error(self, field: str, problem: str, fix: str = "") -> ResourceError:
        path = f"{self.path}.{field}" if field else self.path
        return ResourceError(self.source, self.what, path, problem, fix)

    def has(self, name: str) -> bool:
        return name in self.data or snake(name) in self.data

    def get(self, name: str, default: Any = None) -> Any:
        for key in (name, snake(name)):
            if key in self.data:
                self._seen.add(key)
                return self.data[key]
        return default

    def sub(self, name: str) -> Fields:
        return Fields(self.get(name), f"{self.path}.{name}", self.source, self.what)

    def string(self, name: str, default: str = "", required: bool = False) -> str:
        value = self.get(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.error(name, f"must be a string, not {type(value).__name__}")
        return str(value)

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {value!r}")
        return value

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.error(name, f"must be a number, not {value!r}")
        try:
            return float(value)
        except ValueError:
            raise self.error(name, f"must be a number, not {value!r}") from None

    def items(self, name: str) -> list[Any]:
        value = self.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, not {type(value).__name__}")
        return value

    def unknown(self) -> list[str]:
        return [k for k in self.data if k not in self._seen]

    def strict(self, message_type: str) -> None:
        """Unknown fields are errors, as protobuf's strict JSON parsing makes them for istioctl."""
        for key in self.unknown():
            raise self.error(
                key, f"unknown field {key!r} in {message_type}", "check the spelling against the Istio API"
            )


def duration(text: Any, fields: Fields, name: str) -> float:
    """``5s``, ``500ms``, ``1m``, ``1.5s`` (protobuf Duration in YAML) → seconds."""
    value = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not match:
        raise fields.error(name, f"{value!r} is not a duration", "write it like 5s or 500ms")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) * scale
