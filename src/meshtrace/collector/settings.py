"""Value types collector configurations use: Go durations, sizes, endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from meshtrace.errors import InvalidQuery
from meshtrace.listen import parse_address
from meshtrace.query.params import parse_duration_ns


def _seconds(value: Any) -> float:
    """A Go duration string (``5s``, ``200ms``) or a number of nanoseconds, as Go's time.Duration."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 200ms")
    if isinstance(value, int | float):
        return float(value) / 1e9
    try:
        return parse_duration_ns(str(value)) / 1e9
    except InvalidQuery as exc:
        raise ValueError(f"expected a duration such as 5s or 200ms, got {value!r}") from exc


def _endpoint(value: Any) -> str:
    parse_address(str(value))
    return str(value)


Seconds = Annotated[float, BeforeValidator(_seconds)]
Endpoint = Annotated[str, BeforeValidator(_endpoint)]


class Settings(BaseModel):
    """Base of every component's settings: unknown keys are errors, as upstream's are."""

    model_config = ConfigDict(extra="forbid", frozen=True)
