"""Exporters against a real gRPC destination: retries, permanent errors, full queues, persistent queues."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from meshtrace.collector.component import Host
from meshtrace.collector.config import build
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.exporters.otlp import OtlpGrpcExporter
from meshtrace.collector.extensions import FileStorage, FileStorageSettings
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import PermanentError, RetryableError
from meshtrace.testing.bookinfo import bookinfo_trace, export_request


class Destination:
    """A TraceService that fails the first ``failures`` calls with ``code``, then accepts."""

    def __init__(self, failures: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0
        self.received: list[bytes] = []
        self.metadata: list[dict[str, str]] = []

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= self.failures:
            details = status_pb2.Status(code=self.code.value[0], message="not now")
            details.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(nanos=50_000_000)))
            await context.abort(
                self.code, "not now", trailing_metadata=(("grpc-status-details-bin", details.SerializeToString()),)
            )
        self.received.append(request)
        return b""


@asynccontextmanager
async def serving(destination: Destination) -> AsyncIterator[str]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(destination.export)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def exporter_settings(endpoint: str, **extra: object) -> object:
    raw = {
        "endpoint": endpoint,
        "tls": {"insecure": True},
        "headers": {"Authentication": "tok"},
        "retry_on_failure": {"initial_interval": "10ms", "max_interval": "50ms", "max_elapsed_time": "2s"},
    }
    raw.update(extra)
    doc = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {"otlp": raw},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp"]}}},
    }
    return build(doc).exporters["otlp"].settings


def batch(seed: int) -> Batch:
    trace = bookinfo_trace(random.Random(seed), time.time_ns(), reviews_version="v1")
    return Batch(Signal.TRACES, raw=export_request([trace]).SerializeToString(), items=7)


async def drained(exporter: OtlpGrpcExporter, destination: Destination, count: int) -> None:
    async with asyncio.timeout(10):
        while len(destination.received) < count:  # noqa: ASYNC110 - polling a test double's list
            await asyncio.sleep(0.01)


def test_retryable_errors_are_retried_with_the_server_delay_and_headers_sent():
    async def go():
        destination = Destination(failures=3)
        async with serving(destination) as endpoint:
            telemetry = Telemetry()
            exporter = OtlpGrpcExporter("otlp", exporter_settings(endpoint), telemetry)
            await exporter.start(Host())
            sent = batch(1)
            await exporter.consume(sent)  # queued: returns at once
            await drained(exporter, destination, 1)
            await exporter.shutdown()
        assert destination.calls == 4
        assert destination.received == [sent.raw]  # the bytes as they came
        assert destination.metadata[-1]["authentication"] == "tok"
        assert telemetry.sent[Signal.TRACES].labels("otlp")._value.get() == 7

    asyncio.run(go())


def test_permanent_errors_are_dropped_without_retry():
    async def go():
        destination = Destination(failures=10, code=grpc.StatusCode.INVALID_ARGUMENT)
        async with serving(destination) as endpoint:
            telemetry = Telemetry()
            exporter = OtlpGrpcExporter(
                "otlp", exporter_settings(endpoint, sending_queue={"enabled": False}), telemetry
            )
            await exporter.start(Host())
            with pytest.raises(PermanentError, match="INVALID_ARGUMENT"):
                await exporter.consume(batch(2))
            await exporter.shutdown()
        assert destination.calls == 1
        assert telemetry.send_failed[Signal.TRACES].labels("otlp")._value.get() == 7

    asyncio.run(go())


def test_a_full_queue_refuses_with_a_retryable_error():
    async def go():
        destination = Destination(failures=1000)
        async with serving(destination) as endpoint:
            exporter = OtlpGrpcExporter(
                "otlp", exporter_settings(endpoint, sending_queue={"queue_size": 2, "num_consumers": 1}), Telemetry()
            )
            await exporter.start(Host())
            await exporter.consume(batch(1))
            await exporter.consume(batch(2))
            with pytest.raises(RetryableError, match="sending queue is full"):
                await exporter.consume(batch(3))
            await exporter.shutdown()

    asyncio.run(go())


def test_the_persistent_queue_survives_a_restart(tmp_path):
    """Queued while the destination is down, stopped, started again with the destination up: delivered."""
    storage = FileStorage("file_storage", FileStorageSettings(directory=str(tmp_path)))
    host = Host(extensions={"file_storage": storage})

    async def go():
        down = Destination(failures=10**6)
        async with serving(down) as endpoint:
            settings = exporter_settings(endpoint, sending_queue={"storage": "file_storage", "num_consumers": 2})
            first = OtlpGrpcExporter("otlp", settings, Telemetry())
            await first.start(host)
            batches = [batch(i) for i in range(5)]
            for item in batches:
                await first.consume(item)
            await asyncio.sleep(0.2)
            await first.shutdown()  # nothing was delivered: all five stay on disk
        up = Destination()
        async with serving(up) as endpoint2:
            settings2 = exporter_settings(endpoint2, sending_queue={"storage": "file_storage"})
            second = OtlpGrpcExporter("otlp", settings2, Telemetry())
            await second.start(host)
            await drained(second, up, 5)
            await second.shutdown()
        assert sorted(up.received) == sorted(b.raw for b in batches)
        third = OtlpGrpcExporter("otlp", settings2, Telemetry())
        await third.start(host)
        assert len(third._queue) == 0  # delivered ones are not sent again
        await third.shutdown()

    asyncio.run(go())
