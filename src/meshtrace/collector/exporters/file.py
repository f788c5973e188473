"""The ``file`` exporter: one OTLP/JSON export request per line (what upstream's ``json`` format writes)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

import orjson
from pydantic import model_validator

from meshtrace.collector.component import Component, Host
from meshtrace.collector.data import Batch
from meshtrace.collector.registry import Factory, register
from meshtrace.collector.settings import Seconds, Settings
from meshtrace.model.otlp_json import to_otlp_json


class FileSettings(Settings):
    path: str
    format: Literal["json", "proto"] = "json"
    append: bool = False
    flush_interval: Seconds = 1.0
    rotation: Any = None
    compression: Literal[""] = ""
    group_by: Any = None

    @model_validator(mode="after")
    def _supported(self) -> FileSettings:
        for key in ("rotation", "group_by"):
            if getattr(self, key) is not None:
                raise ValueError(f"'{key}' is not supported by meshtrace collector")
        return self


class FileExporter(Component):
    def __init__(self, component_id: str, settings: FileSettings, telemetry: Any) -> None:
        self.component_id = component_id
        self.settings = settings
        self.telemetry = telemetry
        self._file: Any = None
        self._lock = asyncio.Lock()

    async def start(self, host: Host) -> None:
        self._file = await asyncio.to_thread(self._open)

    def _open(self) -> Any:
        os.makedirs(os.path.dirname(os.path.abspath(self.settings.path)), exist_ok=True)
        return open(self.settings.path, "ab" if self.settings.append else "wb")

    async def consume(self, batch: Batch) -> None:
        if self.settings.format == "json":
            line = orjson.dumps(to_otlp_json(batch.message)) + b"\n"
        else:
            raw = batch.raw
            line = len(raw).to_bytes(4, "big") + raw  # upstream's proto format: length-prefixed messages
        async with self._lock:
            await asyncio.to_thread(self._write, line)
        self.telemetry.sent[batch.signal].labels(self.component_id).inc(batch.items)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    async def shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


register(
    Factory("exporter", "file", FileSettings, lambda cid, settings, ctx: FileExporter(cid, settings, ctx.telemetry))
)
