"""What the benchmarks share: the machine, a process's CPU and memory, a counting OTLP sink."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import sys
from pathlib import Path
from typing import Any

import grpc

from meshtrace.listen import free_port


def machine() -> dict[str, Any]:
    """The machine and the interpreter: builds of one Python version differ by ~10% per request in the
    proxy (``BENCHMARKS.md``, sidecar, "The interpreter")."""
    try:
        libpython = "shared library" if "libpython" in Path("/proc/self/maps").read_text() else "in the executable"
    except OSError:
        libpython = "unknown"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "python_executable": os.path.realpath(sys.executable),
        "libpython": libpython,
        "platform": platform.platform(),
    }


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state is the first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds used, RSS in MiB) of a process, from /proc."""
    fields = stat_fields(pid)
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


def metric(text: str, name: str) -> float:
    """One unlabelled series' value from a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def start_sink(idle: bool = False) -> tuple[multiprocessing.Process, int, Any]:
    """A counting sink in a process of its own: (process, gRPC port, shared span counter). ``idle``: it runs
    only on CPU time nothing else wants (SCHED_IDLE), as a Collector on other cores would cost the
    measured processes nothing."""
    spans = multiprocessing.Value("q", 0)
    port = free_port()
    sink = multiprocessing.Process(target=run_sink, args=(port, spans, idle), daemon=True)
    sink.start()
    return sink, port, spans


def run_sink(port: int, spans: Any, idle: bool = False) -> None:
    """A TraceService that counts the spans it is sent (runs in its own process)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from meshtrace import heap

    if idle:  # before gRPC starts its threads, which inherit the policy
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    # A long-running receiver keeps its heap (a Collector's Go runtime does); glibc's default gives the top
    # back after every request, and the next ~1,000-span request faulted ~900 pages in again here.
    heap.keep()

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = ExportTraceServiceRequest.FromString(request)
        count = sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        with spans.get_lock():
            spans.value += count
        return b""

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20)])
        handler = grpc.unary_unary_rpc_method_handler(export)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))  # fmt: skip
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())
