"""The ``attributes`` processor (span and log-record attributes) and the ``resource`` processor.

Actions, in order: ``insert`` (only if absent), ``update`` (only if present), ``upsert`` (either),
``delete``; a value comes from ``value``, ``from_attribute`` or ``from_context`` (``metadata.<header>``,
kept by a receiver with ``include_metadata: true``). ``include``/``exclude`` limit the
attributes processor to spans of some services or span names (``match_type`` strict or regexp, where
regexp, as upstream's, matches anywhere in the text).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import model_validator

from meshtrace.collector.component import Component, Consumer
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.registry import ALL_SIGNALS, Factory, register
from meshtrace.collector.settings import Settings


class Action(Settings):
    key: str
    action: Literal["insert", "update", "upsert", "delete"]
    value: str | bool | int | float | None = None
    from_attribute: str | None = None
    # "metadata.<key>": a request header / gRPC metadata value kept by a receiver's include_metadata.
    from_context: str | None = None

    @model_validator(mode="after")
    def _source(self) -> Action:
        sources = (self.value, self.from_attribute, self.from_context)
        if self.action != "delete" and all(s is None for s in sources):
            raise ValueError(f'error creating AttrProc due to missing value field for "{self.key}"')
        return self


class Match(Settings):
    match_type: Literal["strict", "regexp"] = "strict"
    services: list[str] = []
    span_names: list[str] = []

    def matches(self, service: str, name: str) -> bool:
        def one(patterns: list[str], text: str) -> bool:
            if not patterns:
                return True
            if self.match_type == "strict":
                return text in patterns
            return any(re.search(p, text) for p in patterns)

        return one(self.services, service) and one(self.span_names, name)


class AttributesSettings(Settings):
    actions: list[Action]
    include: Match | None = None
    exclude: Match | None = None


class ResourceSettings(Settings):
    attributes: list[Action]


def any_value(value: str | bool | int | float) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def apply(actions: list[Action], attributes: Any, metadata: dict[str, tuple[str, ...]] | None = None) -> bool:
    """Run ``actions`` on a repeated KeyValue field; True if anything changed."""
    changed = False
    for action in actions:
        index = next((i for i, kv in enumerate(attributes) if kv.key == action.key), None)
        if action.action == "delete":
            if index is not None:
                del attributes[index]
                changed = True
            continue
        if action.from_context is not None:
            key = action.from_context.removeprefix("metadata.").lower()
            found = (metadata or {}).get(key)
            if not found:
                continue  # upstream: a missing key means no action
            value = AnyValue(string_value=";".join(found))
        elif action.from_attribute is not None:
            source = next((kv.value for kv in attributes if kv.key == action.from_attribute), None)
            if source is None:
                continue
            value = AnyValue()
            value.CopyFrom(source)
        else:
            value = any_value(action.value)  # type: ignore[arg-type]
        if index is None and action.action in ("insert", "upsert"):
            attributes.append(KeyValue(key=action.key, value=value))
            changed = True
        elif index is not None and action.action in ("update", "upsert"):
            attributes[index].value.CopyFrom(value)
            changed = True
    return changed


def service_of(resource: Any) -> str:
    return next((kv.value.string_value for kv in resource.attributes if kv.key == "service.name"), "")


class AttributesProcessor(Component):
    def __init__(self, component_id: str, settings: AttributesSettings, next_consumer: Consumer) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer

    def _selected(self, service: str, name: str) -> bool:
        s = self.settings
        return (s.include is None or s.include.matches(service, name)) and not (
            s.exclude is not None and s.exclude.matches(service, name)
        )

    async def consume(self, batch: Batch) -> None:
        message, changed = batch.message, False
        if batch.signal is Signal.TRACES:
            for rs in message.resource_spans:
                service = service_of(rs.resource)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        if self._selected(service, span.name):
                            changed |= apply(self.settings.actions, span.attributes, batch.metadata)
        else:
            for rl in message.resource_logs:
                service = service_of(rl.resource)
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        if self._selected(service, ""):
                            changed |= apply(self.settings.actions, record.attributes, batch.metadata)
        if changed:
            batch.changed()
        await self.next.consume(batch)


class ResourceProcessor(Component):
    def __init__(self, component_id: str, settings: ResourceSettings, next_consumer: Consumer) -> None:
        self.component_id = component_id
        self.settings = settings
        self.next = next_consumer

    async def consume(self, batch: Batch) -> None:
        field = {Signal.TRACES: "resource_spans", Signal.LOGS: "resource_logs", Signal.METRICS: "resource_metrics"}
        resources = getattr(batch.message, field[batch.signal])
        changed = False
        for item in resources:
            changed |= apply(self.settings.attributes, item.resource.attributes)
        if changed:
            batch.changed()
        await self.next.consume(batch)


register(
    Factory(
        "processor",
        "attributes",
        AttributesSettings,
        lambda cid, s, ctx: AttributesProcessor(cid, s, ctx.next_consumer),
        signals=frozenset({Signal.TRACES, Signal.LOGS}),
    )
)
register(
    Factory(
        "processor",
        "resource",
        ResourceSettings,
        lambda cid, s, ctx: ResourceProcessor(cid, s, ctx.next_consumer),
        signals=ALL_SIGNALS,
    )
)
