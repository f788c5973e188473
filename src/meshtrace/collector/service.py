"""The running collector: components built from a configuration, wired into pipelines, started in order.

Each pipeline is ``receivers → processors → exporters``: processors get one instance per pipeline,
exporters and receivers one per id, shared; where one component feeds several, a fan-out hands the data
to all. Start order is extensions, exporters, processors, receivers (nothing accepts data before its
destination is up); shutdown runs the other way, so batches still held are flushed into the exporters.
"""

from __future__ import annotations

import asyncio
import logging
import signal as signals
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshtrace.collector.component import Component, Consumer, Fanout, Host, refusal
from meshtrace.collector.config import CollectorConfig, CollectorConfigError
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.extensions import HealthCheck
from meshtrace.collector.receivers.common import Receiver
from meshtrace.collector.registry import FACTORIES, load_builtins
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import RetryableError
from meshtrace.listen import RunningHttp, bind, parse_address, serve_http

log = logging.getLogger("meshtrace.collector")


@dataclass(slots=True)
class BuildContext:
    telemetry: Telemetry
    next_consumer: Consumer | None = None
    durable_downstream: bool = False  # an exporter of the pipeline keeps its queue on disk


class Copying:
    """Gives a consumer its own copy of each batch: used where several pipelines share a receiver, so a
    processor changing one pipeline's data cannot change another's."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def consume(self, batch: Batch) -> None:
        await self.consumer.consume(Batch(batch.signal, raw=batch.raw, items=batch.items, metadata=batch.metadata))

    def refusal(self) -> RetryableError | None:
        return refusal(self.consumer)


class Collector:
    def __init__(self, config: CollectorConfig) -> None:
        load_builtins()
        self.config = config
        self.telemetry = Telemetry()
        self.extensions: dict[str, Component] = {}
        self.exporters: dict[str, Component] = {}
        self.pipelines: dict[str, list[Component]] = {}
        self.receivers: dict[str, Receiver] = {}
        self.telemetry_address = ""
        self._metrics: RunningHttp | None = None
        self._started: list[Component] = []
        self._build()

    def _create(self, kind: str, component: Any, next_consumer: Consumer | None = None, durable: bool = False) -> Any:
        factory = FACTORIES[(kind, component.type)]
        context = BuildContext(self.telemetry, next_consumer, durable)
        return factory.create(component.id, component.settings, context)

    def _build(self) -> None:
        config = self.config
        for ext_id in config.service_extensions:
            self.extensions[ext_id] = self._create("extension", config.extensions[ext_id])
        heads: dict[tuple[str, Signal], list[Consumer]] = {}
        for pipeline in config.pipelines.values():
            exporters = []
            for exp_id in pipeline.exporters:
                if exp_id not in self.exporters:
                    self.exporters[exp_id] = self._create("exporter", config.exporters[exp_id])
                    self._check_storage(exp_id)
                exporters.append(self.exporters[exp_id])
            head: Consumer = Fanout(exporters)  # type: ignore[arg-type]
            durable = any(self._storage_of(exp_id) for exp_id in pipeline.exporters)
            processors: list[Component] = []
            for proc_id in reversed(pipeline.processors):
                processor = self._create("processor", config.processors[proc_id], head, durable)
                processors.insert(0, processor)
                head = processor
            self.pipelines[pipeline.id] = processors
            for rec_id in pipeline.receivers:
                if rec_id not in self.receivers:
                    self.receivers[rec_id] = self._create("receiver", config.receivers[rec_id])
                heads.setdefault((rec_id, pipeline.signal), []).append(head)
        for (rec_id, signal), consumers in heads.items():
            consumer: Consumer = consumers[0] if len(consumers) == 1 else Fanout([Copying(c) for c in consumers])
            self.receivers[rec_id].consumers[signal] = consumer

    def _storage_of(self, exporter_id: str) -> str | None:
        queue = getattr(self.config.exporters[exporter_id].settings, "sending_queue", None)
        return getattr(queue, "storage", None) if queue is not None and queue.enabled else None

    def _check_storage(self, exporter_id: str) -> None:
        storage = self._storage_of(exporter_id)
        if storage is None:
            return
        component = self.config.extensions.get(storage)
        if storage not in self.config.service_extensions or component is None or component.type != "file_storage":
            raise CollectorConfigError(
                f'exporters::{exporter_id}: sending_queue::storage "{storage}" is not a file_storage '
                "extension listed in service::extensions"
            )

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        host = Host(extensions=dict(self.extensions))
        order: list[Component] = [
            *self.extensions.values(),
            *self.exporters.values(),
            *(p for processors in self.pipelines.values() for p in reversed(processors)),
            *self.receivers.values(),
        ]
        for component in order:
            await component.start(host)
            self._started.append(component)
        await self._serve_metrics()
        for extension in self.extensions.values():
            if isinstance(extension, HealthCheck):
                extension.ready = True
        log.info("Everything is ready. Begin running and processing data.")

    async def _serve_metrics(self) -> None:
        address = self.config.telemetry.metrics_address
        if not address:
            return

        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

        sock = bind(parse_address(address), "service::telemetry::metrics")
        self._metrics = await serve_http(Starlette(routes=[Route("/metrics", metrics)]), sock)
        self.telemetry_address = self._metrics.address

    async def shutdown(self) -> None:
        for extension in self.extensions.values():
            if isinstance(extension, HealthCheck):
                extension.ready = False
        started = set(map(id, self._started))
        order: list[Component] = [
            *self.receivers.values(),
            *(p for processors in self.pipelines.values() for p in processors),
            *self.exporters.values(),
            *self.extensions.values(),
        ]
        for component in order:
            if id(component) in started:
                try:
                    await component.shutdown()
                except Exception:
                    log.exception("%s: shutdown failed", component.component_id)
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None
        self._started = []

    def addresses(self) -> dict[str, Any]:
        out: dict[str, Any] = {rid: dict(r.addresses) for rid, r in self.receivers.items()}
        for ext_id, ext in self.extensions.items():
            if isinstance(ext, HealthCheck):
                out[ext_id] = ext.address
        if self.telemetry_address:
            out["telemetry"] = self.telemetry_address
        return out


async def run(config: CollectorConfig, on_ready: Any = None) -> None:
    """Start, wait for SIGINT/SIGTERM, shut down."""
    collector = Collector(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await collector.start()
        if on_ready is not None:
            on_ready(collector)
        await stop.wait()
        log.info("Received signal from OS, shutting down.")
    finally:
        await collector.shutdown()
        log.info("Shutdown complete.")
