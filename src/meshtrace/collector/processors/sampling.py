"""The ``probabilistic_sampler`` processor for traces, consistent with upstream's across collectors.

``hash_seed`` mode (the default): a span is kept when FNV-1a-32 over the 4-byte little-endian seed and
the 16-byte trace id, masked to 14 bits, is below ``sampling_percentage`` × 16384 / 100 — so every
collector with the same seed keeps or drops a whole trace alike. ``proportional`` mode uses the trace
id's 56 random bits (W3C trace context level 2) against a threshold of (1 − p) × 2^56.
"""

from __future__ import annotations

from typing import Any, Literal

from meshtrace.collector.component import Component, Consumer
from meshtrace.collector.data import Batch
from meshtrace.collector.registry import TRACES_ONLY, Factory, register
from meshtrace.collector.settings import Settings
from meshtrace.collector.telemetry import Telemetry

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_BUCKETS = 0x4000
_MAX_RANDOMNESS = 1 << 56


def fnv1a32(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


class ProbabilisticSettings(Settings):
    sampling_percentage: float = 0
    hash_seed: int = 0
    mode: Literal["", "hash_seed", "proportional", "equalizing"] = ""
    fail_closed: bool = True
    sampling_precision: int = 4
    attribute_source: str | None = None
    from_attribute: str | None = None


class ProbabilisticSampler(Component):
    def __init__(
        self, component_id: str, settings: ProbabilisticSettings, next_consumer: Consumer, telemetry: Telemetry
    ) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer
        self.telemetry = telemetry
        percent = min(max(settings.sampling_percentage, 0.0), 100.0)
        self.scaled = int(percent * _BUCKETS / 100)
        self.seed = (settings.hash_seed & 0xFFFFFFFF).to_bytes(4, "little")
        self.proportional = settings.mode in ("proportional", "equalizing")
        self.threshold = int((1 - percent / 100) * _MAX_RANDOMNESS)

    def keep(self, trace_id: bytes) -> bool:
        if self.proportional:
            return int.from_bytes(trace_id[9:16], "big") >= self.threshold
        return (fnv1a32(trace_id, fnv1a32(self.seed)) & (_BUCKETS - 1)) < self.scaled

    async def consume(self, batch: Batch) -> None:
        message = batch.message
        decisions: dict[bytes, bool] = {}
        dropped = 0
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                spans = ss.spans
                for i in reversed(range(len(spans))):
                    trace_id = spans[i].trace_id
                    keep = decisions.get(trace_id)
                    if keep is None:
                        keep = decisions[trace_id] = self.keep(trace_id)
                    if not keep:
                        del spans[i]
                        dropped += 1
        if dropped:
            self.telemetry.dropped.labels(self.component_id).inc(dropped)
            batch.changed()
        if batch.items:
            await self.next.consume(batch)


def _create(component_id: str, settings: ProbabilisticSettings, ctx: Any) -> ProbabilisticSampler:
    return ProbabilisticSampler(component_id, settings, ctx.next_consumer, ctx.telemetry)


register(Factory("processor", "probabilistic_sampler", ProbabilisticSettings, _create, signals=TRACES_ONLY))
