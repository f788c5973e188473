"""Processors on real data: batching, memory limits, attribute actions, and both samplers."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from meshtrace.collector.component import Host, Sink
from meshtrace.collector.config import build
from meshtrace.collector.data import Batch, Signal, split
from meshtrace.collector.processors.attributes import AttributesProcessor, ResourceProcessor
from meshtrace.collector.processors.batch import BatchProcessor
from meshtrace.collector.processors.memory_limiter import MemoryLimiter
from meshtrace.collector.processors.sampling import ProbabilisticSampler, fnv1a32
from meshtrace.collector.processors.tail_sampling import TailSampler
from meshtrace.collector.telemetry import Telemetry
from meshtrace.errors import PermanentError, RetryableError
from meshtrace.testing.bookinfo import bookinfo_trace, export_request, traffic

NOW = time.time_ns()


def settings(kind: str, type_: str, raw: dict) -> object:
    """Validate settings through the real configuration path."""
    doc = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
        f"{kind}s": {type_: raw},
    }
    if kind == "processor":
        doc["service"]["pipelines"]["traces"]["processors"] = [type_]
    return getattr(build(doc), f"{kind}s")[type_].settings


def trace_batch(*seeds: int, **kwargs: object) -> Batch:
    traces = [bookinfo_trace(random.Random(s), NOW, reviews_version="v2", **kwargs) for s in seeds]
    return Batch(Signal.TRACES, raw=export_request(traces).SerializeToString(), items=9 * len(seeds))


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def consume(self, batch: Batch) -> None:
        raise self.error


def test_batch_before_a_persistent_queue_acknowledges_only_after_handing_over():
    async def go():
        sink = Sink()
        batcher = BatchProcessor(
            "batch",
            settings("processor", "batch", {"send_batch_size": 20, "timeout": "50ms"}),
            sink,
            Telemetry(),
            durable_downstream=True,
        )
        await asyncio.gather(*(batcher.consume(trace_batch(i)) for i in range(3)))  # 27 spans ≥ 20: one flush
        assert [b.items for b in sink.batches] == [27]
        assert sink.batches[0].message.resource_spans  # concatenated bytes parse as one request
        started = time.monotonic()
        await batcher.consume(trace_batch(9))  # alone: waits for the timeout, then is handed over
        assert time.monotonic() - started >= 0.04
        assert [b.items for b in sink.batches] == [27, 9]
        await batcher.shutdown()

    asyncio.run(go())


def test_batch_before_a_persistent_queue_passes_errors_back_to_every_contributor():
    async def go():
        batcher = BatchProcessor(
            "batch",
            settings("processor", "batch", {"send_batch_size": 18}),
            Failing(RetryableError("queue full")),
            Telemetry(),
            durable_downstream=True,
        )
        results = await asyncio.gather(*(batcher.consume(trace_batch(i)) for i in range(2)), return_exceptions=True)
        assert all(isinstance(r, RetryableError) for r in results)

    asyncio.run(go())


def test_batch_before_memory_queues_acknowledges_on_buffering_and_pushes_back_when_refused():
    async def go():
        sink = Sink()
        batcher = BatchProcessor(
            "batch", settings("processor", "batch", {"send_batch_size": 1000, "timeout": "1s"}), sink, Telemetry()
        )
        started = time.monotonic()
        await batcher.consume(trace_batch(1))
        assert time.monotonic() - started < 0.5  # not held for the timeout
        await batcher.shutdown()  # flushes what it holds
        assert sink.items == 9
        refusing = BatchProcessor(
            "batch",
            settings("processor", "batch", {"send_batch_size": 9}),
            Failing(RetryableError("sending queue is full")),
            Telemetry(),
        )
        await refusing.consume(trace_batch(2))  # accepted; the flush it triggers is refused downstream
        await asyncio.sleep(0.05)
        with pytest.raises(RetryableError, match="sending queue is full"):
            await refusing.consume(trace_batch(3))  # so new data is refused until a flush succeeds

    asyncio.run(go())


def test_split_respects_send_batch_max_size():
    batch = trace_batch(*range(5))  # 45 spans
    parts = split(batch, 20)
    assert [p.items for p in parts] == [20, 20, 5]
    ids = sorted(s.span_id for p in parts for rs in p.message.resource_spans for ss in rs.scope_spans for s in ss.spans)
    original = sorted(s.span_id for rs in batch.message.resource_spans for ss in rs.scope_spans for s in ss.spans)
    assert ids == original


def test_memory_limiter_refuses_with_a_retryable_error_over_its_soft_limit():
    async def go():
        sink = Sink()
        limiter = MemoryLimiter(
            "memory_limiter",
            settings("processor", "memory_limiter", {"check_interval": "1s", "limit_mib": 8}),
            sink,
            Telemetry(),
        )
        await limiter.start(Host())
        try:
            with pytest.raises(RetryableError, match="data refused due to high memory usage"):
                await limiter.consume(trace_batch(1))  # any Python process is over 8 MiB
            assert sink.batches == []
        finally:
            await limiter.shutdown()
        roomy = MemoryLimiter(
            "memory_limiter",
            settings("processor", "memory_limiter", {"check_interval": "1s", "limit_mib": 64_000}),
            sink,
            Telemetry(),
        )
        await roomy.start(Host())
        await roomy.consume(trace_batch(1))
        await roomy.shutdown()
        assert sink.items == 9

    asyncio.run(go())


def attrs_of(message, level="span"):
    out = []
    for rs in message.resource_spans:
        if level == "resource":
            out.append({kv.key: kv.value for kv in rs.resource.attributes})
            continue
        for ss in rs.scope_spans:
            out += [{kv.key: kv.value for kv in s.attributes} for s in ss.spans]
    return out


def test_attribute_actions():
    raw = {
        "actions": [
            {"key": "env", "value": "prod", "action": "insert"},
            {"key": "http.method", "value": "PATCHED", "action": "update"},
            {"key": "missing", "value": "x", "action": "update"},
            {"key": "retries", "value": 3, "action": "upsert"},
            {"key": "user_agent", "action": "delete"},
            {"key": "copied", "from_attribute": "response_flags", "action": "insert"},
        ],
        "include": {"match_type": "regexp", "services": ["^reviews"]},
    }
    sink = Sink()
    asyncio.run(
        AttributesProcessor("attributes", settings("processor", "attributes", raw), sink).consume(trace_batch(1))
    )
    message = sink.batches[0].message
    for rs in message.resource_spans:
        service = next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name")
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {kv.key: kv.value for kv in span.attributes}
                if service.startswith("reviews"):
                    assert attrs["env"].string_value == "prod"
                    assert attrs["http.method"].string_value == "PATCHED"
                    assert attrs["retries"].int_value == 3
                    assert "missing" not in attrs
                    assert "user_agent" not in attrs
                    assert attrs["copied"].string_value == "-"
                else:
                    assert "env" not in attrs
                    assert "user_agent" in attrs


def test_resource_processor():
    raw = {
        "attributes": [
            {"key": "k8s.cluster.name", "value": "kind", "action": "upsert"},
            {"key": "telemetry.sdk.version", "action": "delete"},
        ]
    }
    sink = Sink()
    asyncio.run(ResourceProcessor("resource", settings("processor", "resource", raw), sink).consume(trace_batch(1)))
    for attrs in attrs_of(sink.batches[0].message, "resource"):
        assert attrs["k8s.cluster.name"].string_value == "kind"
        assert "telemetry.sdk.version" not in attrs


def test_fnv1a32_matches_the_reference_vectors():
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_probabilistic_sampler_keeps_whole_traces_at_the_configured_rate():
    sampler_settings = settings("processor", "probabilistic_sampler", {"sampling_percentage": 25, "hash_seed": 22})
    sink = Sink()
    sampler = ProbabilisticSampler("probabilistic_sampler", sampler_settings, sink, Telemetry())
    traces = list(traffic(5, NOW, 4000))

    async def go():
        for i in range(0, len(traces), 100):
            await sampler.consume(Batch(Signal.TRACES, message=export_request(traces[i : i + 100])))

    asyncio.run(go())
    kept_spans: dict[bytes, int] = {}
    for batch in sink.batches:
        for rs in batch.message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    kept_spans[span.trace_id] = kept_spans.get(span.trace_id, 0) + 1
    sizes = {t.trace_id: len(t.spans) for t in traces}
    assert all(kept_spans[tid] == sizes[tid] for tid in kept_spans)  # no trace cut in half
    assert 0.22 < len(kept_spans) / len(traces) < 0.28
    again = Sink()  # another collector with the same seed decides the same way
    other = ProbabilisticSampler("p2", sampler_settings, again, Telemetry())
    asyncio.run(other.consume(Batch(Signal.TRACES, message=export_request(traces[:500]))))
    kept_again = {
        s.trace_id for b in again.batches for rs in b.message.resource_spans for ss in rs.scope_spans for s in ss.spans
    }
    assert kept_again == {t.trace_id for t in traces[:500]} & set(kept_spans)


TAIL = {
    "decision_wait": "10s",
    "policies": [
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "slow", "type": "latency", "latency": {"threshold_ms": 200}},
        {
            "name": "not-health",
            "type": "string_attribute",
            "string_attribute": {
                "key": "http.url",
                "values": [".*/health"],
                "enabled_regex_matching": True,
                "invert_match": True,
            },
        },
    ],
}


def test_tail_sampling_keeps_error_and_slow_traces_and_drops_the_rest():
    rng = random.Random(8)
    traces = []
    for i in range(300):
        kind = i % 10
        traces.append(
            (
                kind,
                bookinfo_trace(
                    rng,
                    NOW + i * 1_000_000,
                    ratings_status=503 if kind == 0 else 200,
                    reviews_version="v2",
                    scale=12.0 if kind == 1 else 1.0,
                ),
            )
        )

    async def go() -> tuple[Sink, TailSampler]:
        sink = Sink()
        sampler = TailSampler("tail_sampling", settings("processor", "tail_sampling", TAIL), sink, Telemetry())
        await sampler.start(Host())
        for i in range(0, len(traces), 25):
            # spans of one trace split over two requests, as different proxies export them
            chunk = [t for _, t in traces[i : i + 25]]
            first = export_request(chunk)
            for rs in first.resource_spans:
                del rs.scope_spans[0].spans[len(rs.scope_spans[0].spans) // 2 :]
            await sampler.consume(Batch(Signal.TRACES, message=first))
        for i in range(0, len(traces), 25):
            second = export_request([t for _, t in traces[i : i + 25]])
            for rs in second.resource_spans:
                del rs.scope_spans[0].spans[: len(rs.scope_spans[0].spans) // 2]
            await sampler.consume(Batch(Signal.TRACES, message=second))
        await sampler.flush()  # as if decision_wait had passed
        await sampler.shutdown()
        return sink, sampler

    sink, sampler = asyncio.run(go())
    kept: dict[bytes, int] = {}
    for batch in sink.batches:
        for rs in batch.message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    kept[span.trace_id] = kept.get(span.trace_id, 0) + 1

    def qualifies(trace) -> bool:
        spans = [s.span for s in trace.spans]
        duration = max(s.end_time_unix_nano for s in spans) - min(s.start_time_unix_nano for s in spans)
        return any(s.status.code == 2 for s in spans) or duration >= 200_000_000

    wanted = {t.trace_id for _, t in traces if qualifies(t)}
    assert len(wanted) >= 50  # the mix really has ~10% errors and ~10% slow traces
    assert set(kept) == wanted  # every error trace and every slow trace, nothing else
    assert all(kept[t.trace_id] == len(t.spans) for _, t in traces if t.trace_id in wanted)
    assert (sampler.kept, sampler.dropped) == (len(wanted), len(traces) - len(wanted))


def test_tail_sampling_follows_its_decision_for_late_spans_and_honours_vetoes():
    async def go():
        sink = Sink()
        sampler = TailSampler("t", settings("processor", "tail_sampling", TAIL), sink, Telemetry())
        failing = trace_batch(1, ratings_status=503)
        await sampler.consume(failing)
        await sampler.flush()
        assert sink.items == 9
        await sampler.consume(trace_batch(1, ratings_status=503))  # the same trace's spans, late
        assert sink.items == 18
        health = trace_batch(2, ratings_status=503)
        for rs in health.message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for kv in span.attributes:
                        if kv.key == "http.url":
                            kv.value.string_value = "http://productpage:9080/health"
        health.changed()
        await sampler.consume(health)
        await sampler.flush()
        assert sink.items == 18  # an error, but a health check: the inverted match vetoes it

    asyncio.run(go())


def test_a_downstream_permanent_error_reaches_the_sender():
    sink = Failing(PermanentError("bad data"))
    processor = ResourceProcessor(
        "resource",
        settings("processor", "resource", {"attributes": [{"key": "a", "value": "b", "action": "insert"}]}),
        sink,
    )
    with pytest.raises(PermanentError):
        asyncio.run(processor.consume(trace_batch(3)))
