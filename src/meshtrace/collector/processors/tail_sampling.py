"""The ``tail_sampling`` processor: decide per trace, after ``decision_wait``, from all of its spans.

Spans are held per trace id from the first one seen; once ``decision_wait`` has passed the policies run
on everything gathered, with upstream's precedence: an inverted match that matches vetoes the trace; else
any policy saying "sample" keeps it; else an inverted match that does not match keeps it unless another
policy said "do not sample". Spans arriving after the decision follow it. When
more than ``num_traces`` traces are waiting, the oldest is decided early rather than dropped.

Policies: ``always_sample``, ``latency`` (first start to last end ≥ ``threshold_ms``, and ≤
``upper_threshold_ms`` if set), ``status_code``, ``probabilistic`` (FNV-1a-64 of salt + trace id),
``string_attribute`` (span or resource attribute; exact values or anchored regexes), ``numeric_attribute``,
``and`` (every sub-policy), ``composite`` (sub-policies in ``policy_order``, each within its share of
``max_total_spans_per_second``).

Spans are acknowledged when held, as upstream's are: held spans are lost if the process dies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import model_validator

from meshtrace.collector.component import Component, Consumer, Host
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.registry import TRACES_ONLY, Factory, register
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.collector.telemetry import Telemetry

log = logging.getLogger(__name__)

_STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}


class LatencyCfg(Settings):
    threshold_ms: int = 0
    upper_threshold_ms: int = 0


class StatusCodeCfg(Settings):
    status_codes: list[Literal["ERROR", "OK", "UNSET"]]


class ProbabilisticCfg(Settings):
    hash_salt: str = ""
    sampling_percentage: float = 0


class StringAttributeCfg(Settings):
    key: str
    values: list[str]
    enabled_regex_matching: bool = False
    cache_max_size: int = 0
    invert_match: bool = False


class NumericAttributeCfg(Settings):
    key: str
    min_value: float | None = None
    max_value: float | None = None
    invert_match: bool = False


class RateAllocation(Settings):
    policy: str
    percent: float


class Policy(Settings):
    name: str
    type: Literal[
        "always_sample",
        "latency",
        "status_code",
        "probabilistic",
        "string_attribute",
        "numeric_attribute",
        "and",
        "composite",
    ]
    latency: LatencyCfg | None = None
    status_code: StatusCodeCfg | None = None
    probabilistic: ProbabilisticCfg | None = None
    string_attribute: StringAttributeCfg | None = None
    numeric_attribute: NumericAttributeCfg | None = None
    and_: AndCfg | None = None
    composite: CompositeCfg | None = None

    model_config = Settings.model_config | {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _and_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "and" in data:
            data = {**data, "and_": data["and"]}
            del data["and"]
        return data

    @model_validator(mode="after")
    def _has_config(self) -> Policy:
        key = "and_" if self.type == "and" else self.type
        if self.type != "always_sample" and getattr(self, key) is None:
            raise ValueError(f'policy "{self.name}" of type "{self.type}" needs its "{self.type}" settings')
        return self


class AndCfg(Settings):
    and_sub_policy: list[Policy]


class CompositeCfg(Settings):
    max_total_spans_per_second: int
    policy_order: list[str]
    composite_sub_policy: list[Policy]
    rate_allocation: list[RateAllocation] = []


Policy.model_rebuild()


class TailSamplingSettings(Settings):
    decision_wait: Seconds = 30.0
    num_traces: int = 50_000
    expected_new_traces_per_sec: int = 0
    decision_cache: dict[str, Any] = {}
    policies: list[Policy]


@dataclass(slots=True)
class HeldTrace:
    first_seen: float
    spans: list[tuple[bytes, bytes, Span]] = field(default_factory=list)  # (resource, scope, span)


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _attr_values(resource: Any, span: Span, key: str) -> list[Any]:
    return [kv.value for kv in (*span.attributes, *resource.attributes) if kv.key == key]


SAMPLED, NOT_SAMPLED, INVERT_SAMPLED, INVERT_NOT_SAMPLED = "sampled", "not_sampled", "invert_sampled", "veto"


def combine(votes: list[str]) -> bool:
    """Upstream's final decision from every policy's vote."""
    if INVERT_NOT_SAMPLED in votes:
        return False
    if SAMPLED in votes:
        return True
    return INVERT_SAMPLED in votes and NOT_SAMPLED not in votes


class Decider:
    """Evaluates one policy on a trace and votes one of the four outcomes."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        cfg = policy.string_attribute
        self.patterns = [re.compile(v) for v in cfg.values] if cfg and cfg.enabled_regex_matching else []
        self.subs = [Decider(p) for p in policy.and_.and_sub_policy] if policy.and_ else []
        comp = policy.composite
        self.composite: list[tuple[Decider, float]] = []
        if comp is not None:
            share = {r.policy: r.percent for r in comp.rate_allocation}
            by_name = {p.name: p for p in comp.composite_sub_policy}
            for name in comp.policy_order:
                budget = comp.max_total_spans_per_second * share.get(name, 100.0 / len(comp.policy_order)) / 100
                self.composite.append((Decider(by_name[name]), budget))
        self.spent: dict[int, float] = {}
        self.second = -1

    def decide(self, trace_id: bytes, spans: list[tuple[Any, Span]]) -> str:
        vote = self._vote(trace_id, spans)
        if isinstance(vote, str):
            return vote
        return SAMPLED if vote else NOT_SAMPLED

    def _vote(self, trace_id: bytes, spans: list[tuple[Any, Span]]) -> bool | str:
        p = self.policy
        if p.type == "always_sample":
            return True
        if p.type == "latency" and p.latency is not None:
            start = min(s.start_time_unix_nano for _, s in spans)
            end = max(s.end_time_unix_nano for _, s in spans)
            duration_ms = (end - start) / 1e6
            upper = p.latency.upper_threshold_ms
            return duration_ms >= p.latency.threshold_ms and (not upper or duration_ms <= upper)
        if p.type == "status_code" and p.status_code is not None:
            codes = {_STATUS[c] for c in p.status_code.status_codes}
            return any(s.status.code in codes for _, s in spans)
        if p.type == "probabilistic" and p.probabilistic is not None:
            threshold = int(p.probabilistic.sampling_percentage / 100 * 0xFFFFFFFFFFFFFFFF)
            return _fnv1a64(p.probabilistic.hash_salt.encode() + trace_id) <= threshold
        if p.type == "string_attribute" and p.string_attribute is not None:
            cfg = p.string_attribute
            matched = any(
                value.WhichOneof("value") == "string_value"
                and (
                    any(rx.fullmatch(value.string_value) for rx in self.patterns)
                    if self.patterns
                    else value.string_value in cfg.values
                )
                for resource, span in spans
                for value in _attr_values(resource, span, cfg.key)
            )
            if cfg.invert_match:
                return INVERT_NOT_SAMPLED if matched else INVERT_SAMPLED
            return matched
        if p.type == "numeric_attribute" and p.numeric_attribute is not None:
            cfg_n = p.numeric_attribute
            lo = cfg_n.min_value if cfg_n.min_value is not None else float("-inf")
            hi = cfg_n.max_value if cfg_n.max_value is not None else float("inf")
            matched = any(
                lo <= (v.int_value if v.WhichOneof("value") == "int_value" else v.double_value) <= hi
                for resource, span in spans
                for v in _attr_values(resource, span, cfg_n.key)
                if v.WhichOneof("value") in ("int_value", "double_value")
            )
            return (INVERT_NOT_SAMPLED if matched else INVERT_SAMPLED) if cfg_n.invert_match else matched
        if p.type == "and":
            return all(sub.decide(trace_id, spans) in (SAMPLED, INVERT_SAMPLED) for sub in self.subs)
        if p.type == "composite":
            now = int(time.monotonic())
            for index, (sub, budget) in enumerate(self.composite):
                if sub.decide(trace_id, spans) == SAMPLED:
                    used = self.spent.get(index, 0) if self.second == now else 0
                    if used + len(spans) <= budget:
                        if self.second != now:
                            self.spent, self.second = {}, now
                        self.spent[index] = used + len(spans)
                        return True
            return False
        return False


class TailSampler(Component):
    def __init__(
        self, component_id: str, settings: TailSamplingSettings, next_consumer: Consumer, telemetry: Telemetry
    ) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer
        self.telemetry = telemetry
        self.deciders = [Decider(p) for p in settings.policies]
        self.held: OrderedDict[bytes, HeldTrace] = OrderedDict()
        self.decided: OrderedDict[bytes, bool] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.kept = 0
        self.dropped = 0

    async def consume(self, batch: Batch) -> None:
        late: list[tuple[bytes, bytes, Span]] = []
        now = time.monotonic()
        for rs in batch.message.resource_spans:
            resource = rs.resource.SerializeToString()
            for ss in rs.scope_spans:
                scope = ss.scope.SerializeToString()
                for span in ss.spans:
                    decision = self.decided.get(span.trace_id)
                    if decision is not None:
                        if decision:
                            late.append((resource, scope, span))
                        continue
                    held = self.held.get(span.trace_id)
                    if held is None:
                        held = self.held[span.trace_id] = HeldTrace(now)
                    held.spans.append((resource, scope, span))
        while len(self.held) > self.settings.num_traces:
            trace_id, held = self.held.popitem(last=False)
            await self._release([(trace_id, held)])
        if late:
            await self._forward(late)

    def _decide(self, trace_id: bytes, held: HeldTrace) -> bool:
        parsed: dict[bytes, Any] = {}
        spans = []
        for resource, _, span in held.spans:
            if resource not in parsed:
                from opentelemetry.proto.resource.v1.resource_pb2 import Resource

                parsed[resource] = Resource.FromString(resource)
            spans.append((parsed[resource], span))
        return combine([d.decide(trace_id, spans) for d in self.deciders])

    async def _release(self, traces: list[tuple[bytes, HeldTrace]]) -> None:
        keep: list[tuple[bytes, bytes, Span]] = []
        for trace_id, held in traces:
            sampled = self._decide(trace_id, held)
            self.decided[trace_id] = sampled
            if sampled:
                keep += held.spans
                self.kept += 1
            else:
                self.dropped += 1
                self.telemetry.dropped.labels(self.component_id).inc(len(held.spans))
        while len(self.decided) > max(self.settings.num_traces, 1000):
            self.decided.popitem(last=False)
        if keep:
            await self._forward(keep)

    async def _forward(self, spans: list[tuple[bytes, bytes, Span]]) -> None:
        request = ExportTraceServiceRequest()
        groups: dict[tuple[bytes, bytes], Any] = {}
        for resource, scope, span in spans:
            scope_spans = groups.get((resource, scope))
            if scope_spans is None:
                rs = request.resource_spans.add()
                rs.resource.ParseFromString(resource)
                scope_spans = rs.scope_spans.add()
                scope_spans.scope.ParseFromString(scope)
                groups[(resource, scope)] = scope_spans
            scope_spans.spans.append(span)
        try:
            await self.next.consume(Batch(Signal.TRACES, message=request))
        except Exception as exc:
            log.error("%s: could not pass on %d sampled spans: %s", self.component_id, len(spans), exc)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.decision_wait / 4))
            await self.flush(max_age=self.settings.decision_wait)

    async def flush(self, max_age: float = 0.0) -> None:
        """Decide every trace held for at least ``max_age`` seconds."""
        now = time.monotonic()
        due = []
        while self.held:
            trace_id, held = next(iter(self.held.items()))
            if now - held.first_seen < max_age:
                break
            self.held.popitem(last=False)
            due.append((trace_id, held))
        if due:
            await self._release(due)

    async def start(self, host: Host) -> None:
        self._task = asyncio.create_task(self._tick())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()


def _create(component_id: str, settings: TailSamplingSettings, ctx: Any) -> TailSampler:
    return TailSampler(component_id, settings, ctx.next_consumer, ctx.telemetry)


register(Factory("processor", "tail_sampling", TailSamplingSettings, _create, signals=TRACES_ONLY))
