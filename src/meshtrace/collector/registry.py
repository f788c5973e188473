"""Every component type meshtrace collector knows, by kind and type name.

Built-in components register here the same way any other would: a ``Factory`` says which signals the
type supports, which settings model validates its configuration, how deprecated forms are migrated, and
how to create an instance.
"""

from __future__ import annotations

import builtins
import importlib
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


BUILTINS = (
    "meshtrace.collector.receivers.otlp",
    "meshtrace.collector.receivers.zipkin",
    "meshtrace.collector.processors.batch",
    "meshtrace.collector.processors.memory_limiter",
    "meshtrace.collector.processors.attributes",
    "meshtrace.collector.processors.sampling",
    "meshtrace.collector.processors.tail_sampling",
    "meshtrace.collector.exporters.otlp",
    "meshtrace.collector.exporters.debug",
    "meshtrace.collector.exporters.file",
    "meshtrace.collector.extensions",
)


def load_builtins() -> dict[tuple[str, str], Factory]:
    """Import the built-in components (each registers itself); returns every factory."""
    for module in BUILTINS:
        importlib.import_module(module)
    return FACTORIES
