"""The ``debug`` exporter (and ``logging``, removed upstream in v0.111.0, run as ``debug``).

Verbosity as upstream: ``basic`` logs one summary line per batch, ``normal`` one line per span (name,
trace id, span id, attributes), ``detailed`` the full ``ResourceSpans #n`` / ``Span #n`` dump. Log sampling
as upstream: the first ``sampling_initial`` batches each second, then every ``sampling_thereafter``-th.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from meshtrace.collector.component import Component, Host
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Settings

log = logging.getLogger("meshtrace.collector.debug")

_KINDS = ["Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"]
_STATUS = ["Unset", "Ok", "Error"]
_LOGLEVEL_VERBOSITY = {"debug": "detailed", "info": "normal", "warn": "basic", "error": "basic"}


class DebugSettings(Settings):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = 2
    sampling_thereafter: int = 1
    use_internal_logger: bool = True


def migrate_logging(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    settings = dict(raw)
    level = str(settings.pop("loglevel", "") or "").lower()
    notes = ["the 'logging' exporter was removed upstream in v0.111.0; running it as the 'debug' exporter"]
    if level:
        verbosity = _LOGLEVEL_VERBOSITY.get(level, "basic")
        settings.setdefault("verbosity", verbosity)
        notes.append(f"'loglevel: {level}' was replaced by 'verbosity' (v0.63.0); using 'verbosity: {verbosity}'")
    return settings, notes


def _time(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return f"{dt:%Y-%m-%d %H:%M:%S}.{ns % 1_000_000_000:09d} +0000 UTC"


def _value(v: Any) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return f"Str({v.string_value})"
    if kind == "bool_value":
        return f"Bool({str(v.bool_value).lower()})"
    if kind == "int_value":
        return f"Int({v.int_value})"
    if kind == "double_value":
        return f"Double({v.double_value})"
    if kind == "bytes_value":
        return f"Bytes({v.bytes_value.hex()})"
    if kind == "array_value":
        return f"Slice([{', '.join(_value(x) for x in v.array_value.values)}])"
    if kind == "kvlist_value":
        return "Map({" + ", ".join(f"{kv.key}: {_value(kv.value)}" for kv in v.kvlist_value.values) + "})"
    return "Empty()"


def _attrs(lines: list[str], title: str, attributes: Any, indent: str = "     ") -> None:
    if attributes:
        lines.append(title)
        lines += [f"{indent}-> {kv.key}: {_value(kv.value)}" for kv in attributes]


def detailed_traces(message: Any) -> str:
    lines: list[str] = []
    for i, rs in enumerate(message.resource_spans):
        lines += [f"ResourceSpans #{i}", f"Resource SchemaURL: {rs.schema_url}"]
        _attrs(lines, "Resource attributes:", rs.resource.attributes)
        for j, ss in enumerate(rs.scope_spans):
            lines += [
                f"ScopeSpans #{j}",
                f"ScopeSpans SchemaURL: {ss.schema_url}",
                f"InstrumentationScope {ss.scope.name} {ss.scope.version}",
            ]
            for k, span in enumerate(ss.spans):
                lines += [
                    f"Span #{k}",
                    f"    Trace ID       : {span.trace_id.hex()}",
                    f"    Parent ID      : {span.parent_span_id.hex()}",
                    f"    ID             : {span.span_id.hex()}",
                    f"    Name           : {span.name}",
                    f"    Kind           : {_KINDS[span.kind] if 0 <= span.kind < len(_KINDS) else span.kind}",
                ]
                if span.trace_state:
                    lines.append(f"    TraceState     : {span.trace_state}")
                lines += [
                    f"    Start time     : {_time(span.start_time_unix_nano)}",
                    f"    End time       : {_time(span.end_time_unix_nano)}",
                    f"    Status code    : {_STATUS[span.status.code] if span.status.code < 3 else span.status.code}",
                    f"    Status message : {span.status.message}",
                ]
                _attrs(lines, "Attributes:", span.attributes)
                if span.events:
                    lines.append("Events:")
                    for e, event in enumerate(span.events):
                        lines += [
                            f"SpanEvent #{e}",
                            f"     -> Name: {event.name}",
                            f"     -> Timestamp: {_time(event.time_unix_nano)}",
                        ]
                        _attrs(lines, "     -> Attributes::", event.attributes, "          ")
                if span.links:
                    lines.append("Links:")
                    for n, link in enumerate(span.links):
                        lines += [
                            f"SpanLink #{n}",
                            f"     -> Trace ID: {link.trace_id.hex()}",
                            f"     -> ID: {link.span_id.hex()}",
                            f"     -> TraceState: {link.trace_state}",
                        ]
    return "\n".join(lines)


def normal_traces(message: Any) -> str:
    lines = []
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = " ".join(f"{kv.key}={_value(kv.value)}" for kv in span.attributes)
                lines.append(" ".join(x for x in (span.name, span.trace_id.hex(), span.span_id.hex(), attrs) if x))
    return "\n".join(lines)


class DebugExporter(Component):
    def __init__(self, component_id: str, settings: DebugSettings, telemetry: Any) -> None:
        self.component_id = component_id
        self.settings = settings
        self.telemetry = telemetry
        self._second = 0
        self._count = 0

    def _sampled(self) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._count = now, 0
        self._count += 1
        initial, after = self.settings.sampling_initial, max(self.settings.sampling_thereafter, 1)
        return self._count <= initial or (self._count - initial) % after == 0

    async def consume(self, batch: Batch) -> None:
        self.telemetry.sent[batch.signal].labels(self.component_id).inc(batch.items)
        if not self._sampled():
            return
        summary = {Signal.TRACES: "Traces", Signal.METRICS: "Metrics", Signal.LOGS: "Logs"}[batch.signal]
        log.info(
            '%s {"kind": "exporter", "data_type": "%s", "name": "%s", "%s": %d}',
            summary,
            batch.signal,
            self.component_id,
            batch.signal.item_name.replace("_", " "),
            batch.items,
        )
        if batch.signal is not Signal.TRACES or self.settings.verbosity == "basic":
            return
        text = detailed_traces(batch.message) if self.settings.verbosity == "detailed" else normal_traces(batch.message)
        if text:
            log.info("%s", text)

    async def start(self, host: Host) -> None:
        return None


def _create(component_id: str, settings: DebugSettings, ctx: Any) -> DebugExporter:
    return DebugExporter(component_id, settings, ctx.telemetry)


register(Factory("exporter", "debug", DebugSettings, _create))
register(Factory("exporter", "logging", DebugSettings, _create, migrate=migrate_logging))
