"""Every registered component through the Collector's lifecycle rules: shutdown is safe without start
(and twice), and start → consume → shutdown works."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from meshtrace.collector.component import Host, Sink
from meshtrace.collector.config import build
from meshtrace.collector.data import Batch, Signal
from meshtrace.collector.registry import load_builtins
from meshtrace.collector.service import BuildContext
from meshtrace.collector.telemetry import Telemetry
from meshtrace.testing.bookinfo import bookinfo_trace, export_request

MINIMAL: dict[tuple[str, str], dict] = {
    ("receiver", "otlp"): {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}},
    ("receiver", "zipkin"): {"endpoint": "127.0.0.1:0"},
    ("processor", "batch"): {},
    ("processor", "memory_limiter"): {"check_interval": "1s", "limit_mib": 64_000},
    ("processor", "attributes"): {"actions": [{"key": "a", "value": "b", "action": "upsert"}]},
    ("processor", "resource"): {"attributes": [{"key": "a", "value": "b", "action": "upsert"}]},
    ("processor", "probabilistic_sampler"): {"sampling_percentage": 100},
    ("processor", "tail_sampling"): {"decision_wait": "1s", "policies": [{"name": "all", "type": "always_sample"}]},
    ("exporter", "otlp"): {
        "endpoint": "127.0.0.1:1",
        "tls": {"insecure": True},
        "retry_on_failure": {"enabled": False},
    },
    ("exporter", "otlp_grpc"): {"endpoint": "127.0.0.1:1", "tls": {"insecure": True}},
    ("exporter", "otlphttp"): {"endpoint": "http://127.0.0.1:1"},
    ("exporter", "debug"): {},
    ("exporter", "logging"): {"loglevel": "info"},
    ("exporter", "file"): {"path": "{tmp}/out.jsonl"},
    ("extension", "health_check"): {"endpoint": "127.0.0.1:0"},
    ("extension", "file_storage"): {"directory": "{tmp}"},
}


def test_every_registered_component_is_covered():
    assert set(load_builtins()) == set(MINIMAL)


@pytest.mark.parametrize(("kind", "type_"), sorted(MINIMAL))
def test_lifecycle(kind, type_, tmp_path):
    factory = load_builtins()[(kind, type_)]
    raw = {
        k: (v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v) for k, v in MINIMAL[(kind, type_)].items()
    }
    settings, _ = factory.migrate(raw) if factory.migrate else (raw, [])
    model = factory.config_model.model_validate(settings)
    sink = Sink()

    def create():
        return factory.create(f"{type_}/test", model, BuildContext(Telemetry(), sink))

    async def go():
        untouched = create()
        await untouched.shutdown()  # without start
        await untouched.shutdown()  # and twice
        component = create()
        if kind == "receiver":
            component.consumers[Signal.TRACES] = sink
        await component.start(Host())
        if kind in ("processor", "exporter"):
            trace = bookinfo_trace(random.Random(1), time.time_ns(), reviews_version="v1")
            batch = Batch(Signal.TRACES, raw=export_request([trace]).SerializeToString(), items=7)
            await component.consume(batch)
        await component.shutdown()
        await component.shutdown()
        if kind == "processor":
            assert sink.items == 7  # everything reached the next consumer by the end of shutdown

    asyncio.run(go())


def test_unsupported_options_are_refused_not_ignored():
    from meshtrace.collector.config import CollectorConfigError

    base = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["x"]}}},
    }
    for exporter, message in (
        ({"file/x": {"path": "a", "rotation": {"max_megabytes": 1}}}, "'rotation' is not supported"),
        ({"otlp/x": {"endpoint": "a:1", "sending_queue": {"batch": {}}}}, "'batch' (batching inside the queue)"),
    ):
        doc = {**base, "exporters": exporter}
        doc["service"] = {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": list(exporter)}}}
        with pytest.raises(CollectorConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            build(doc)
