"""The component contract every receiver, processor, exporter and extension follows.

- Data moves through one method, ``Consumer.consume(batch)``. It returns once the next stage has taken
  the data (for a queued exporter: once it is in the queue), and raises ``RetryableError`` or
  ``PermanentError`` otherwise; a receiver turns those into the sender's retryable or permanent error.
- ``start`` then ``shutdown``. ``shutdown`` flushes what the component holds, is safe to call without
  ``start``, and safe to call twice.
- A processor wraps the next consumer; fan-out to several consumers is itself a consumer.
- A consumer may also answer ``refusal()`` (an error, or None): receivers ask it before decoding a
  request, so data that would be refused anyway (memory over its limit) costs no decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshtrace.collector.data import Batch
from meshtrace.errors import PermanentError, RetryableError


class Consumer(Protocol):
    async def consume(self, batch: Batch) -> None: ...


def refusal(consumer: Consumer) -> RetryableError | None:
    """The error a consumer would refuse data with right now, if it says so."""
    ask = getattr(consumer, "refusal", None)
    return ask() if ask is not None else None


@dataclass(slots=True)
class Host:
    """What components may ask of the running collector: its extensions, by id."""

    extensions: dict[str, Any] = field(default_factory=dict)

    def extension(self, component_id: str) -> Any:
        return self.extensions.get(component_id)


class Component:
    """Base class: no-op lifecycle; subclasses override what they need."""

    component_id: str = ""

    async def start(self, host: Host) -> None:
        return None

    async def shutdown(self) -> None:
        return None


class Fanout:
    """Hands one batch to several consumers concurrently; the strictest failure wins.

    Every consumer receives the same object, so consumers that mutate must copy first (processors run
    one instance per pipeline; exporters do not mutate).
    """

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self.consumers = list(consumers)

    def refusal(self) -> RetryableError | None:
        return next((error for c in self.consumers if (error := refusal(c)) is not None), None)

    async def consume(self, batch: Batch) -> None:
        if len(self.consumers) == 1:
            await self.consumers[0].consume(batch)
            return
        results = await asyncio.gather(*(c.consume(batch) for c in self.consumers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if isinstance(error, PermanentError):
                raise error
        for error in errors:
            raise error if isinstance(error, RetryableError) else RetryableError(str(error))


class Sink(Component):
    """A consumer that keeps what it gets (tests, benchmarks)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    @property
    def items(self) -> int:
        return sum(b.items for b in self.batches)

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)
