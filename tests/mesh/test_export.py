"""The proxy's span hand-over to its export process: waiting spans are marshalled chunks, not objects for
the garbage collector, a flush under load must not stall the event loop, and closing must deliver everything
the flush took (a real export process and a real OTLP/gRPC receiver)."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import gc
import io
import json
import marshal
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshtrace.mesh.proxy import export, spanwire
from meshtrace.mesh.proxy.config import Cluster, Provider
from meshtrace.mesh.proxy.export import _FRAME, MAX_BATCH, Exporter
from meshtrace.mesh.proxy.records import RECORD_FIELDS
from meshtrace.mesh.proxy.tracer import Finished

from .test_tracer import NODE, tracer

SPANS = 2 * MAX_BATCH + MAX_BATCH // 2 + export.CHUNK // 2  # three frames, the last chunk partial


def _record() -> Any:
    out: list[Any] = []
    t = tracer(sink=out)
    span = t.start({}, t.sample("00000001-0000-4000-8000-000000000000", {}), spanwire.SERVER, "svc:9080/*")
    assert span is not None
    cluster = Cluster("inbound|9080||", "svc.default.svc.cluster.local", 9080, ())
    done = Finished("", "http://svc:9080/", "GET", "t", "10.0.0.2", 0, 1024, 200, "-", cluster, "127.0.0.1:80")
    t.finish(span, done)
    return out[0]


def _spans_in(request: bytes) -> int:
    message = ExportTraceServiceRequest.FromString(request)
    return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)


async def _sink() -> tuple[grpc.aio.Server, int, list[int]]:
    """An OTLP/gRPC receiver that records how many spans each export carried."""
    exports: list[int] = []

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        exports.append(_spans_in(request))
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
def test_records_are_marshalled_as_chunks_and_a_flush_is_handed_over_a_frame_per_turn(
    monkeypatch: pytest.MonkeyPatch, close_at_once: bool
) -> None:
    marshalled: list[int] = []
    dumps = marshal.dumps

    def counting(value: Any, *args: Any) -> bytes:
        if isinstance(value, list):
            marshalled.append(len(value))
        return dumps(value, *args)

    monkeypatch.setattr(marshal, "dumps", counting)
    assert export.marshal is marshal

    async def scenario() -> None:
        server, port, exports = await _sink()
        provider = Provider("otel", "opentelemetry", "sink.test.svc.cluster.local", 4317, (f"127.0.0.1:{port}",))
        exporter = Exporter(provider, [("service.name", NODE.canonical_service)])
        written: list[int] = []
        writev = os.writev

        def counting_writev(fd: int, buffers: Any) -> int:
            if fd == exporter._stdin:
                written.append(len(buffers))
            return writev(fd, buffers)

        try:
            record = _record()
            gc.disable()
            try:
                before = gc.get_count()[0]
                for _ in range(SPANS):
                    exporter.add((*record,))  # a new tuple per span, as the tracer makes them
                # The collector counts the objects made and still alive: kept per span until the flush, the
                # records would count, and the young-generation collections they set off would walk them.
                alive = gc.get_count()[0] - before
            finally:
                gc.enable()
            assert alive < 100, alive
            assert marshalled == [export.CHUNK * RECORD_FIELDS] * (SPANS // export.CHUNK), "sealed as they come"
            monkeypatch.setattr(os, "writev", counting_writev)
            exporter.flush()
            assert marshalled[-1] == SPANS % export.CHUNK * RECORD_FIELDS, "the flush seals the rest"
            assert len(written) == 1, "a flush writes one frame before it returns"
            assert exporter.stats["spans_pending"] == SPANS
            if close_at_once:
                await exporter.close()
            else:
                for _ in range(3):
                    await asyncio.sleep(0)
            assert len(written) == 3, written
            await _exported(exporter, exports, SPANS)
            assert sorted(exports) == sorted([MAX_BATCH, MAX_BATCH, SPANS - 2 * MAX_BATCH])
            assert exporter.stats["spans_pending"] == 0
            assert exporter.stats["spans_dropped"] == 0
        finally:
            monkeypatch.setattr(os, "writev", writev)
            await exporter.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_the_pipe_to_the_export_process_takes_a_whole_frame_in_one_write() -> None:
    """Through the default 64 KiB pipe a 1,000-span frame went in three writes or more, waking the export
    process for each piece and the proxy's loop again for the next."""
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    frame = len(marshal.dumps([*_record()] * MAX_BATCH))

    async def scenario() -> None:
        provider = Provider("otel", "opentelemetry", "sink.test.svc.cluster.local", 4317, ())
        exporter = Exporter(provider, [("service.name", NODE.canonical_service)])
        try:
            size = fcntl.fcntl(exporter._stdin, fcntl.F_GETPIPE_SZ)
        finally:
            await exporter.close()
        if limit >= export.PIPE_SIZE:
            assert size == export.PIPE_SIZE >= frame, (size, frame)
        else:  # only a privileged process goes past the system's limit; others keep the default
            assert size in (export.PIPE_SIZE, 64 << 10), size

    asyncio.run(scenario())


def test_behind_a_stalled_export_process_frames_wait_whole_and_all_arrive_once_it_reads() -> None:
    """The pipe fills, the rest of the flush waits in the proxy frame by frame (appending to one buffer
    copied all of it again every few frames), and partial writes resume where they stopped."""
    spans = 24 * MAX_BATCH  # ~2.9 MB of frames (~120 KB each), near three times what the pipe holds

    async def scenario() -> None:
        server, port, exports = await _sink()
        provider = Provider("otel", "opentelemetry", "sink.test.svc.cluster.local", 4317, (f"127.0.0.1:{port}",))
        exporter = Exporter(provider, [("service.name", NODE.canonical_service)])
        os.kill(exporter._proc.pid, signal.SIGSTOP)
        try:
            record = _record()
            for _ in range(spans):
                exporter.add((*record,))
            exporter.flush()
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(exporter._backlog) > 2, "the frames the pipe could not take wait whole"
            assert exporter._backlog_size > 2 * fcntl.fcntl(exporter._stdin, fcntl.F_GETPIPE_SZ) / 3
            assert exporter.stats["spans_pending"] == spans
            os.kill(exporter._proc.pid, signal.SIGCONT)
            await _exported(exporter, exports, spans)
            assert exports == [MAX_BATCH] * 24
            assert exporter.stats["spans_dropped"] == 0
            assert exporter._backlog_size == 0
        finally:
            os.kill(exporter._proc.pid, signal.SIGCONT)
            await exporter.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_the_export_process_collects_no_garbage_amid_a_batch() -> None:
    """A batch's records go with their last reference; young collections amid a batch walked its thousands
    of live records again and again. ``serve`` runs here, in the test's process, so its collections count."""
    exports: list[int] = []

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        exports.append(_spans_in(request))
        return b""

    server = grpc.server(ThreadPoolExecutor(2))
    method = grpc.unary_unary_rpc_method_handler(handle)
    service = "opentelemetry.proto.collector.trace.v1.TraceService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": method}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        provider = Provider("otel", "opentelemetry", "sink.test.svc.cluster.local", 4317, (f"127.0.0.1:{port}",))
        setup = marshal.dumps({"provider": dataclasses.asdict(provider), "resource": [("service.name", "x")]})
        pipe = _FRAME.pack(len(setup)) + setup
        record = list(_record())
        for frame in range(3):
            chunks = b""
            for chunk in range(MAX_BATCH // export.CHUNK):
                records = []
                for n in range(export.CHUNK):
                    record[11] = f"{frame:08x}-{chunk:04x}-4000-8000-{n:012x}"  # a request id of its own
                    records += record
                body = marshal.dumps(records)
                chunks += _FRAME.pack(len(body)) + body
            pipe += _FRAME.pack(len(chunks)) + chunks
        out = io.BytesIO()
        threshold = gc.get_threshold()
        gc.set_threshold(100)  # a young collection every 100 objects kept: dozens per batch if it may collect
        before = gc.get_stats()[0]["collections"]
        try:
            assert export.serve(io.BytesIO(pipe), out) == 0
        finally:
            collections = gc.get_stats()[0]["collections"] - before
            gc.set_threshold(*threshold)
            gc.unfreeze()
    finally:
        server.stop(None)
    assert exports == [MAX_BATCH] * 3
    assert json.loads(out.getvalue().splitlines()[-1])["spans_sent"] == 3 * MAX_BATCH
    assert collections <= 3, f"{collections} young collections while 3 batches were exported"  # one after each
