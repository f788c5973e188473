"""Span export off the request path, flushing like Envoy's OpenTelemetry tracer: every 5 s, or as soon as
5 spans wait, but at most twice a second, so that under load a busy proxy hands over fewer, larger batches
(every hand-over wakes the export process and the receiver on a box the requests share: at 50 ms the proxy
served 15–18 % fewer requests, ``BENCHMARKS.md``, sidecar).

The proxy's event loop only appends span records (``tracer.encode_record``, or Zipkin dicts) to a list, the
fields of OTLP records one after another: a tuple kept per span would be an object the garbage collector
counts and walks until the flush (a young-generation collection every ~760 requests under load). At each
flush the list goes, marshalled a slice per turn of the loop, down a pipe to an export process of its own
(``main`` below, in a child Python), which encodes the OTLP or Zipkin request and sends it. A thread
would share the interpreter lock with the request path, and encoding and sending cost more than proxying
the request itself (``BENCHMARKS.md``, sidecar). Failed exports are dropped and counted, as Envoy does;
what waits for the export process is bounded. The export process runs at a lower priority (nice 10), so
that on a shared core requests go first, and ignores SIGTERM (the pod's signal): it
sends what it was given and exits when the proxy closes the pipe, or dies with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO, Final

import orjson

from meshtrace import heap
from meshtrace.mesh.proxy import spanwire
from meshtrace.mesh.proxy.config import Provider
from meshtrace.mesh.proxy.tracer import RECORD_FIELDS, encode_record

log = logging.getLogger("meshtrace.proxy.export")

FLUSH_INTERVAL: Final = 5.0
MIN_FLUSH_SPANS: Final = 5
MIN_EXPORT_INTERVAL: Final = 0.5
MAX_BUFFERED: Final = 50_000
MAX_PIPE_BACKLOG: Final = 64 << 20
# Spans per export, ~0.7 MB of OTLP (well under the 4 MiB a Collector accepts by default), and per frame
# down the pipe: marshalling one takes ~0.4 ms; a whole flush under load (~12,000) stalled requests ~5 ms.
MAX_BATCH: Final = 1000
# The export process gives the core up between slices of a batch it encodes: on a busy core a whole batch
# otherwise held it for a scheduler slice or more (runs up to 18 ms seen) while requests waited.
YIELD_EVERY: Final = 100
FAILURE_PAUSE: Final = 1.0
_FRAME: Final = struct.Struct("<I")
_EXPORT_PATH: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# Not ``-m``: this module may be compiled (``native``), and ``-m`` runs only interpreted modules.
_CHILD: Final = "from meshtrace.mesh.proxy.export import main; raise SystemExit(main())"


def _width(provider: Provider) -> int:
    """Items per span in the proxy's buffer: an OTLP record's fields, flattened, or a Zipkin span (a dict)."""
    return 1 if provider.kind == "zipkin" else RECORD_FIELDS


class Exporter:
    """The proxy's side: buffers finished spans and hands them to the export process."""

    def __init__(self, provider: Provider, resource: list[tuple[str, str]]) -> None:
        self.provider = provider
        self._width = _width(provider)
        self._buffer: list[Any] = []
        self._backlog = bytearray()
        self._dropped = 0
        self._child_stats: dict[str, Any] = {}
        self._stats_tail = b""
        self._loop = asyncio.get_running_loop()
        self._last_flush = 0.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self._writing = False
        self._drained = asyncio.Event()
        self._reading = True
        self._resource = resource
        self._earlier: dict[str, int] = {}  # what export processes that are gone had counted
        self._handed = 0  # spans handed to the current export process
        self._handing: list[Any] = []  # taken from the buffer, not yet marshalled down the pipe
        self._handing_at = 0
        self._started = 0.0
        self._start_child()
        self._schedule(FLUSH_INTERVAL)

    def _start_child(self) -> None:
        self._started = time.monotonic()
        self._proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        # The file objects own the descriptors (closing those, not the numbers, avoids a double close).
        self._files = (self._proc.stdin, self._proc.stdout)
        self._stdin, self._stdout = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        self._child_stats = {}
        self._stats_tail = b""
        self._handed = 0
        self._gone = False
        self._backlog.clear()
        self._send_frame(marshal.dumps({"provider": dataclasses.asdict(self.provider), "resource": self._resource}))
        os.set_blocking(self._stdin, False)
        os.set_blocking(self._stdout, False)
        self._loop.add_reader(self._stdout, self._read_stats)
        self._reading = True

    @property
    def stats(self) -> dict[str, int]:
        child, earlier = self._child_stats, self._earlier
        out = {
            key: child.get(key, 0) + earlier.get(key, 0) + (self._dropped if key == "spans_dropped" else 0)
            for key in ("spans_sent", "spans_dropped", "exports_ok", "exports_failed")
        }
        # Buffered here, or handed over and not yet reported sent or dropped.
        settled = child.get("spans_sent", 0) + child.get("spans_dropped", 0)
        out["spans_pending"] = self._spans(len(self._buffer)) + (0 if self._gone else max(0, self._handed - settled))
        return out

    @property
    def last_error(self) -> str:
        return str(self._child_stats.get("last_error", ""))

    def add(self, record: Any) -> None:
        buffer = self._buffer
        width = self._width
        if len(buffer) >= MAX_BUFFERED * width:
            self._dropped += 1
            return
        if width == 1:
            buffer.append(record)
        else:
            buffer += record
        if len(buffer) == MIN_FLUSH_SPANS * width:
            self._schedule(self._last_flush + MIN_EXPORT_INTERVAL - time.monotonic())

    def _spans(self, items: int) -> int:
        """Spans in ``items`` items of the buffer."""
        return items // self._width

    def _schedule(self, delay: float) -> None:
        when = self._loop.time() + max(0.0, delay)
        handle = self._flush_handle
        if handle is not None:
            if handle.when() <= when:
                return
            handle.cancel()
        self._flush_handle = self._loop.call_at(when, self.flush)

    def _cancel_flush(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()

    def flush(self) -> None:
        self._flush_handle = None
        self._last_flush = time.monotonic()
        if self._gone and not self._closed and self._last_flush - self._started >= FAILURE_PAUSE:
            log.info("starting a new export process for %s", self.provider.name)
            self._start_child()
        if self._gone and self._buffer:
            self._dropped += self._spans(len(self._buffer))
            self._buffer = []
        if self._buffer and not self._closed:
            batch, self._buffer = self._buffer, []
            if len(self._backlog) > MAX_PIPE_BACKLOG:
                self._dropped += self._spans(len(batch))  # the export process does not keep up
            else:
                self._handed += self._spans(len(batch))
                if self._handing:
                    self._handing += batch
                else:
                    self._handing, self._handing_at = batch, 0
                    self._hand_over()
        if not self._closed:
            self._schedule(FLUSH_INTERVAL)

    def _hand_over(self) -> None:
        """Marshals the next slice of what the flush took down the pipe; the rest on the loop's next turns,
        so that requests are served in between."""
        records, at = self._handing, self._handing_at
        if not records or self._gone:
            return
        end = at + MAX_BATCH * self._width
        self._handing_at = end
        if end >= len(records):
            self._handing = []
        else:
            self._loop.call_soon(self._hand_over)
        self._send_frame(marshal.dumps(records[at:end]))

    def _send_frame(self, frame: bytes) -> None:
        waiting = bool(self._backlog)
        self._backlog += _FRAME.pack(len(frame))
        self._backlog += frame
        if not waiting:
            self._write()

    def _write(self) -> None:
        try:
            written = os.write(self._stdin, self._backlog)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._on_child_gone()
            return
        del self._backlog[:written]
        if self._backlog and not self._writing:
            self._loop.add_writer(self._stdin, self._write)
            self._writing = True
        elif not self._backlog and self._writing:
            self._loop.remove_writer(self._stdin)
            self._writing = False
            self._drained.set()

    def _on_child_gone(self) -> None:
        """The export process died under the proxy: what was on its way is lost (counted as dropped);
        the next flush starts another."""
        if self._gone:
            return
        self._gone = True
        if self._writing:
            self._loop.remove_writer(self._stdin)
            self._writing = False
        self._drained.set()
        self._dropped += self._spans(max(0, len(self._handing) - self._handing_at))
        self._handing = []
        self._read_stats()
        if self._reading:
            self._loop.remove_reader(self._stdout)
            self._reading = False
        for key, value in self._child_stats.items():
            if key != "last_error":
                self._earlier[key] = self._earlier.get(key, 0) + int(value)
        self._child_stats = {}
        if not self._closed:
            log.error("the export process of %s exited (%s)", self.provider.name, self._proc.poll())
        self._backlog.clear()
        for file in self._files:
            with contextlib.suppress(OSError):
                file.close()

    def _read_stats(self) -> None:
        if not self._reading:
            return
        try:
            data = os.read(self._stdout, 65536)
        except BlockingIOError:
            return
        if not data:
            self._loop.remove_reader(self._stdout)
            self._reading = False
            if not self._closed and not self._gone:
                self._on_child_gone()
            return
        lines = (self._stats_tail + data).split(b"\n")
        self._stats_tail = lines.pop()
        if lines:
            self._child_stats = orjson.loads(lines[-1])

    async def close(self, within: float = 2.0) -> None:
        """Hand over what is buffered and let the export process send it and exit (bounded by ``within``
        seconds; the event loop keeps serving meanwhile)."""
        deadline = time.monotonic() + within
        self._cancel_flush()
        if not self._closed:
            self.flush()
            while self._handing and not self._gone:
                self._hand_over()
            self._closed = True
            self._cancel_flush()  # (a method: the compiled code would trust the narrowing above past flush())
        if self._backlog and self._writing:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), deadline - time.monotonic())
        if self._writing:
            self._loop.remove_writer(self._stdin)
            self._writing = False
        with contextlib.suppress(OSError):
            self._files[0].close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._proc.wait, max(0.0, deadline - time.monotonic()))
        if self._proc.poll() is None:
            log.warning("the export process of %s did not finish in %.1f s: stopped", self.provider.name, within)
            self._proc.kill()
            self._proc.wait()
        self._read_stats()
        if self._reading:
            self._loop.remove_reader(self._stdout)
            self._reading = False
        with contextlib.suppress(OSError):
            self._files[1].close()


class Sender:
    """The export process's side: encodes each batch and sends it to the provider's endpoints."""

    def __init__(self, provider: Provider, resource: list[tuple[str, str]]) -> None:
        self.provider = provider
        self.resource = spanwire.resource(resource)
        self._endpoints = itertools.cycle(provider.endpoints) if provider.endpoints else None
        self.stats: dict[str, Any] = {"spans_sent": 0, "spans_dropped": 0, "exports_ok": 0, "exports_failed": 0}
        self.last_error = ""
        self._client: Any = None
        self._channels: dict[str, Any] = {}

    def send(self, batch: list[Any]) -> bool:
        if self._endpoints is None:
            self.stats["spans_dropped"] += len(batch)
            return False
        endpoint = next(self._endpoints)
        started = time.monotonic()
        try:
            if self.provider.kind == "zipkin":
                self._post(endpoint, orjson.dumps(batch), "application/json")
            else:
                encoded: list[bytes] = []
                for start in range(0, len(batch), YIELD_EVERY):
                    encoded += [encode_record(r) for r in batch[start : start + YIELD_EVERY]]
                    os.sched_yield()
                body = spanwire.export_request(self.resource, encoded)
                if self.provider.transport == "http":
                    self._post(endpoint, body, "application/x-protobuf")
                else:
                    self._grpc(endpoint, body)
        except Exception as exc:
            self.stats["exports_failed"] += 1
            self.stats["spans_dropped"] += len(batch)
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.warning(
                    "export of %d spans to %s (%s) failed: %s", len(batch), self.provider.name, endpoint, message
                )
            self.last_error = message
            return False
        self.stats["exports_ok"] += 1
        self.stats["spans_sent"] += len(batch)
        if self.last_error:
            log.info("export to %s (%s) works again", self.provider.name, endpoint)
            self.last_error = ""
        log.debug("exported %d spans in %.1f ms", len(batch), (time.monotonic() - started) * 1000)
        return True

    def _post(self, endpoint: str, body: bytes, content_type: str) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.provider.timeout, trust_env=False)
        headers = {"content-type": content_type, "host": f"{self.provider.service}:{self.provider.port}"}
        for name, value in self.provider.headers:
            headers[name] = value  # OVERWRITE_IF_EXISTS_OR_ADD
        path = "/" + self.provider.path.lstrip("/")
        response = self._client.post(f"http://{endpoint}{path}", content=body, headers=headers)
        if response.status_code >= 300:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

    def _grpc(self, endpoint: str, body: bytes) -> None:
        import grpc

        channel = self._channels.get(endpoint)
        if channel is None:
            # The provider's address is already resolved; never through an HTTP proxy from the environment.
            options = [("grpc.default_authority", self.provider.service), ("grpc.enable_http_proxy", 0)]
            channel = self._channels[endpoint] = grpc.insecure_channel(endpoint, options=options)
        call = channel.unary_unary(_EXPORT_PATH)
        metadata = [(name.lower(), value) for name, value in self.provider.headers] or None
        call(body, timeout=self.provider.timeout, metadata=metadata)


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """The export process: a setup frame, then batches until the proxy closes the pipe."""
    setup = _read_frame(stdin)
    if setup is None:
        return 1
    config = marshal.loads(setup)  # noqa: S302 - frames come from the parent proxy over a private pipe
    sender = Sender(Provider.from_json(config["provider"]), [tuple(p) for p in config["resource"]])
    width = _width(sender.provider)
    while (frame := _read_frame(stdin)) is not None:
        batch = marshal.loads(frame)  # noqa: S302 - as above
        if width > 1:
            batch = list(zip(*[iter(batch)] * width, strict=True))  # the flattened records, whole again
        for start in range(0, len(batch), MAX_BATCH):
            if not sender.send(batch[start : start + MAX_BATCH]) and sender.last_error:
                time.sleep(min(FAILURE_PAUSE, sender.provider.timeout))
        report = {**sender.stats, "last_error": sender.last_error}
        stdout.write(json.dumps(report).encode() + b"\n")
        stdout.flush()
    return 0


def main() -> int:
    os.nice(10)  # requests first: on a busy core, exporting spans waits
    heap.keep()  # every batch would otherwise fault its megabyte back in
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("MESHTRACE_PROXY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        return 0
