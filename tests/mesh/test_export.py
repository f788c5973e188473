"""The proxy's span hand-over to its export process: waiting spans are no objects for the garbage collector,
a flush under load must not stall the event loop, and closing must deliver everything the flush took (a real
export process and a real OTLP/gRPC receiver)."""

from __future__ import annotations

import asyncio
import gc
import marshal
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.mesh.proxy import export, spanwire
from meshtrace.mesh.proxy.config import Cluster, Provider
from meshtrace.mesh.proxy.export import MAX_BATCH, Exporter
from meshtrace.mesh.proxy.tracer import RECORD_FIELDS, Finished

from .test_tracer import NODE, tracer

SPANS = 2 * MAX_BATCH + MAX_BATCH // 2


def _record() -> Any:
    out: list[Any] = []
    t = tracer(sink=out)
    span = t.start({}, t.sample("00000001-0000-4000-8000-000000000000", {}), spanwire.SERVER, "svc:9080/*")
    assert span is not None
    cluster = Cluster("inbound|9080||", "svc.default.svc.cluster.local", 9080, ())
    done = Finished("", "http://svc:9080/", "GET", "t", "10.0.0.2", 0, 1024, 200, "-", cluster, "127.0.0.1:80")
    t.finish(span, done)
    return out[0]


async def _sink() -> tuple[grpc.aio.Server, int, list[int]]:
    """An OTLP/gRPC receiver that records how many spans each export carried."""
    exports: list[int] = []

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = ExportTraceServiceRequest.FromString(request)
        exports.append(sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans))
        return b""

    server = grpc.aio.server()
    method = grpc.unary_unary_rpc_method_handler(handle)
    service = "opentelemetry.proto.collector.trace.v1.TraceService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": method}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, exports


async def _exported(exporter: Exporter, exports: list[int], spans: int) -> None:
    for _ in range(200):
        if sum(exports) >= spans and exporter.stats["spans_sent"] >= spans:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sum(exports)} of {spans} spans exported; stats {exporter.stats}")


@pytest.mark.parametrize("close_at_once", [False, True])
def test_a_large_flush_is_handed_over_a_slice_per_turn_and_close_delivers_all(
    monkeypatch: pytest.MonkeyPatch, close_at_once: bool
) -> None:
    frames: list[int] = []
    dumps = marshal.dumps

    def counting(value: Any, *args: Any) -> bytes:
        if isinstance(value, list):
            frames.append(len(value))
        return dumps(value, *args)

    monkeypatch.setattr(marshal, "dumps", counting)
    assert export.marshal is marshal

    async def scenario() -> None:
        server, port, exports = await _sink()
        provider = Provider("otel", "opentelemetry", "sink.test.svc.cluster.local", 4317, (f"127.0.0.1:{port}",))
        exporter = Exporter(provider, [("service.name", NODE.canonical_service)])
        try:
            record = _record()
            gc.disable()
            try:
                before = gc.get_count()[0]
                for _ in range(SPANS):
                    exporter.add((*record,))  # a new tuple per span, as the tracer makes them
                # The collector counts the objects made and still alive: kept per span, the records would
                # count, and the young-generation collections they set off would walk them.
                alive = gc.get_count()[0] - before
            finally:
                gc.enable()
            assert alive < 100, alive
            frames.clear()
            exporter.flush()
            assert frames == [MAX_BATCH * RECORD_FIELDS], "a flush marshals one slice before it returns"
            assert exporter.stats["spans_pending"] == SPANS
            if close_at_once:
                await exporter.close()
            else:
                for _ in range(3):
                    await asyncio.sleep(0)
            assert frames == [n * RECORD_FIELDS for n in (MAX_BATCH, MAX_BATCH, MAX_BATCH // 2)]
            await _exported(exporter, exports, SPANS)
            assert sorted(exports) == sorted([MAX_BATCH, MAX_BATCH, MAX_BATCH // 2])
            assert exporter.stats["spans_pending"] == 0
            assert exporter.stats["spans_dropped"] == 0
        finally:
            await exporter.close()
            await server.stop(None)

    asyncio.run(scenario())
