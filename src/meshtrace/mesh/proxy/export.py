"""Span export off the request path, flushing like Envoy's OpenTelemetry tracer: every 5 s, or as soon as
5 spans wait, but at most twice a second, so that under load a busy proxy hands over fewer, larger batches
(every hand-over wakes the export process and the receiver on a box the requests share: at 50 ms the proxy
served 15–18 % fewer requests, ``BENCHMARKS.md``, sidecar).

The proxy's event loop only appends span records (``records``, or Zipkin dicts) to a list, the
fields of OTLP records one after another, and marshals the list into a chunk of bytes every ``CHUNK`` spans:
records kept as objects until the flush were ~10 MB of them to allocate, walk and free every half second under
load (as tuples they set off a young-generation collection every ~760 requests; in a flat list the proxy spent
0.6 µs more per request than now and its p99 under load was 2-3 times as high, ``BENCHMARKS.md``), while a
chunk's records are freed as soon as they are marshalled, their memory reused still warm. At each flush the
chunks go down a pipe, a frame of up to ``MAX_BATCH`` spans per turn of the loop, to an export process of its
own (``main`` below, in a child Python), which encodes the OTLP or Zipkin request and sends it. A thread would
share the interpreter lock with the request path, and encoding and sending cost more than proxying the request
itself (``BENCHMARKS.md``, sidecar). Failed exports are dropped and counted, as Envoy does; what waits for the
export process is bounded. The export process runs at a lower priority (nice 10), so that on a shared core
requests go first, and ignores SIGTERM (the pod's signal): it sends what it was given and exits when the proxy
closes the pipe, or dies with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import gc
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
from meshtrace.mesh.proxy.records import RECORD_FIELDS, encode_entry

log = logging.getLogger("meshtrace.proxy.export")

FLUSH_INTERVAL: Final = 5.0
MIN_FLUSH_SPANS: Final = 5
MIN_EXPORT_INTERVAL: Final = 0.5
MAX_BUFFERED: Final = 50_000
MAX_PIPE_BACKLOG: Final = 64 << 20
# Spans per export, ~0.7 MB of OTLP (well under the 4 MiB a Collector accepts by default), and per frame
# down the pipe, a frame per turn of the loop (a flush under load is ~21,000 spans, ~4 MB).
MAX_BATCH: Final = 1000
# Spans marshalled together as they finish (~18 KB): large enough that marshal's cost per call is spread,
# small enough that the records are freed while the memory is still in the CPU's cache.
CHUNK: Final = 100
# The pipe to the export process holds whole frames (~185 KB per 1,000 spans): through the default 64 KiB a
# frame took three writes or more, each waking the export process for a piece and the proxy's loop again to
# write the next (one hop under load: the proxy on a CPU 80-84 % of the time, 84-86 % with 1 MiB; BENCHMARKS.md).
PIPE_SIZE: Final = 1 << 20
_WRITEV_FRAMES: Final = 16  # frames per writev: more than the pipe takes, far below IOV_MAX
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
        self._backlog: collections.deque[bytes] = collections.deque()  # frames for the pipe, kept whole
        self._backlog_size = 0
        self._written = 0  # of the first frame in the backlog
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
        self._chunks: list[bytes] = []  # marshalled records, each with its length in front
        self._chunked = 0  # spans in the chunks
        self._handed = 0  # spans handed to the current export process
        # Frames a flush made, not yet down the pipe, first out first: (spans, frame).
        self._handing: collections.deque[tuple[int, bytes]] = collections.deque()
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
        with contextlib.suppress(OSError):  # above the system's limit (fs.pipe-max-size): the default stays
            fcntl.fcntl(self._stdin, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._child_stats = {}
        self._stats_tail = b""
        self._handed = 0
        self._gone = False
        self._clear_backlog()
        setup = marshal.dumps({"provider": dataclasses.asdict(self.provider), "resource": self._resource})
        self._send_frame(_FRAME.pack(len(setup)) + setup)
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
        waiting = self._spans(len(self._buffer)) + self._chunked
        out["spans_pending"] = waiting + (0 if self._gone else max(0, self._handed - settled))
        return out

    @property
    def last_error(self) -> str:
        return str(self._child_stats.get("last_error", ""))

    def add(self, record: Any) -> None:
        if self._chunked >= MAX_BUFFERED:
            self._dropped += 1
            return
        buffer = self._buffer
        width = self._width
        if width == 1:
            buffer.append(record)
        else:
            buffer += record
        size = len(buffer)
        if size == MIN_FLUSH_SPANS * width and not self._chunked:
            self._schedule(self._last_flush + MIN_EXPORT_INTERVAL - time.monotonic())
        if size == CHUNK * width:
            self._seal()

    def _seal(self) -> None:
        """The buffer's records into a chunk; the list is kept (and its memory with it) for the next ones."""
        chunk = marshal.dumps(self._buffer)
        self._chunks.append(_FRAME.pack(len(chunk)) + chunk)
        self._chunked += self._spans(len(self._buffer))
        self._buffer.clear()

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
        if self._buffer and not self._closed:
            self._seal()
        if self._chunks and not self._closed:
            chunks, spans = self._chunks, self._chunked
            self._chunks, self._chunked = [], 0
            if self._gone or self._backlog_size > MAX_PIPE_BACKLOG:
                self._dropped += spans  # no export process, or it does not keep up
            else:
                self._handed += spans
                per_frame = MAX_BATCH // CHUNK
                handing = not self._handing
                for at in range(0, len(chunks), per_frame):  # every chunk but the last is full
                    group = chunks[at : at + per_frame]
                    frame = b"".join([_FRAME.pack(sum(len(chunk) for chunk in group)), *group])
                    self._handing.append((min(spans - at * CHUNK, MAX_BATCH), frame))
                if handing:
                    self._hand_over()
        if not self._closed:
            self._schedule(FLUSH_INTERVAL)

    def _hand_over(self) -> None:
        """Writes the next frame the flush made down the pipe; the rest on the loop's next turns, so that
        requests are served in between (a whole flush under load is ~4 MB to copy)."""
        if not self._handing or self._gone:
            return
        _, frame = self._handing.popleft()
        if self._handing:
            self._loop.call_soon(self._hand_over)
        self._send_frame(frame)

    def _send_frame(self, frame: bytes) -> None:
        """Queues a frame (its length in front) for the pipe. Frames stay whole objects: behind a slow
        receiver the backlog grows to tens of MB, and one bytearray appended to was copied whole again every
        few frames (stalls of 5-26 ms per request seen)."""
        waiting = bool(self._backlog)
        self._backlog.append(frame)
        self._backlog_size += len(frame)
        if not waiting:
            self._write()

    def _write(self) -> None:
        backlog = self._backlog
        while backlog:
            parts: list[bytes | memoryview] = [memoryview(backlog[0])[self._written :]]
            parts += itertools.islice(backlog, 1, _WRITEV_FRAMES)
            try:
                written = os.writev(self._stdin, parts)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self._on_child_gone()
                return
            self._backlog_size -= written
            written += self._written
            while backlog and written >= len(backlog[0]):
                written -= len(backlog.popleft())
            self._written = written
            if written:  # the pipe took part of a frame: it is full
                break
        if backlog and not self._writing:
            self._loop.add_writer(self._stdin, self._write)
            self._writing = True
        elif not self._backlog and self._writing:
            self._loop.remove_writer(self._stdin)
            self._writing = False
            self._drained.set()

    def _clear_backlog(self) -> None:
        self._backlog.clear()
        self._backlog_size = self._written = 0

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
        self._dropped += sum(spans for spans, _ in self._handing)
        self._handing.clear()
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
        self._clear_backlog()
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
                    encoded += [encode_entry(r) for r in batch[start : start + YIELD_EVERY]]
                    os.sched_yield()
                body = spanwire.export_entries(self.resource, encoded)
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
    gc.freeze()  # start-up's objects, out of every collection's walk
    while (frame := _read_frame(stdin)) is not None:
        # A batch's records go with their last reference; collections amid one walked its thousands of live
        # records again and again (14% of this process's time per span), so there are none until it is sent.
        gc.disable()
        try:
            _export_frame(sender, frame, width)
        finally:
            gc.enable()
        report = {**sender.stats, "last_error": sender.last_error}
        stdout.write(json.dumps(report).encode() + b"\n")
        stdout.flush()
    return 0


def _export_frame(sender: Sender, frame: bytes, width: int) -> None:
    batch: list[Any] = []
    view, at = memoryview(frame), 0
    while at < len(frame):  # the frame's chunks, each with its length in front
        (size,) = _FRAME.unpack_from(frame, at)
        batch += marshal.loads(view[at + _FRAME.size : at + _FRAME.size + size])  # noqa: S302 - from the proxy, as above
        at += _FRAME.size + size
    if width > 1:
        batch = list(zip(*[iter(batch)] * width, strict=True))  # the flattened records, whole again
    for start in range(0, len(batch), MAX_BATCH):
        if not sender.send(batch[start : start + MAX_BATCH]) and sender.last_error:
            time.sleep(min(FAILURE_PAUSE, sender.provider.timeout))


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
