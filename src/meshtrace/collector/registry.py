"""Every component type meshtrace collector knows, by kind and type name.

Built-in components register here the same way any other would: a ``Factory`` says which signals the
type supports, which settings model validates its configuration, how deprecated forms are migrated, and
how to create an instance.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from meshtrace.collector.data import Signal

ALL_SIGNALS = frozenset(Signal)
TRACES_ONLY = frozenset({Signal.TRACES})
NO_SIGNALS: frozenset[Signal] = frozenset()

Migrate = Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]


@dataclass(frozen=True, slots=True)
class Factory:
    kind: str  # receiver, processor, exporter, extension
    type: str
    config_model: builtins.type[BaseModel]
    create: Callable[..., Any]
    signals: frozenset[Signal] = ALL_SIGNALS
    migrate: Migrate | None = None


FACTORIES: dict[tuple[str, str], Factory] = {}


def register(factory: Factory) -> Factory:
    FACTORIES[(factory.kind, factory.type)] = factory
    return factory


def _load_builtins() -> None:
    from meshtrace.collector import extensions  # noqa: F401
    from meshtrace.collector.exporters import debug, file, otlp  # noqa: F401
    from meshtrace.collector.processors import attributes, batch, memory_limiter, sampling, tail_sampling  # noqa: F401
    from meshtrace.collector.receivers import otlp as otlp_receiver  # noqa: F401


_load_builtins()
