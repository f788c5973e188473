"""Collector configuration: the seed's config as it is, merging, overrides, substitution, and errors
worded like upstream's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshtrace.collector.config import CollectorConfigError, build, load, load_documents
from meshtrace.collector.data import Signal

from .conftest import seed_collector_config


def test_the_seed_config_loads_unchanged_with_a_warning_per_deprecation(seed_file):
    config = load([str(seed_file)])
    otlp = config.receivers["otlp"].settings.protocols
    assert otlp.grpc.endpoint == "0.0.0.0:4317"
    assert otlp.http.endpoint == "0.0.0.0:4318"
    assert config.exporters["logging"].settings.verbosity == "detailed"
    assert config.exporters["otlp"].settings.headers == {"Authentication": "tok-acme"}
    assert config.exporters["otlp"].settings.tls.insecure is True
    assert config.extensions["health_check"].settings.endpoint == "0.0.0.0:13133"
    assert config.service_extensions == ["health_check"]
    assert config.pipelines["traces"].exporters == ["logging", "otlp"]
    assert config.pipelines["logs"].signal is Signal.LOGS
    warnings = "\n".join(config.warnings)
    assert "listening on 0.0.0.0:4317" in warnings
    assert "localhost:4317 since v0.104.0" in warnings
    assert "removed upstream in v0.111.0; running it as the 'debug' exporter" in warnings
    assert "'loglevel: debug' was replaced by 'verbosity'" in warnings
    assert "'port: 13133' was replaced by 'endpoint'" in warnings
    assert len(config.warnings) == 5


def test_files_merge_in_order_and_set_wins(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(
        "exporters:\n  otlp:\n    endpoint: a:4317\n    headers: {x: '1'}\nreceivers: {otlp: {protocols: {grpc: {}}}}\n"
        "service: {pipelines: {traces: {receivers: [otlp], exporters: [otlp]}}}\n"
    )
    b = tmp_path / "b.yaml"
    b.write_text("exporters:\n  otlp:\n    headers: {y: '2'}\n")
    config = load([str(a), str(b)], ["exporters::otlp::endpoint=c:4317", "exporters::otlp::timeout=2s"])
    settings = config.exporters["otlp"].settings
    assert settings.endpoint == "c:4317"
    assert settings.headers == {"x": "1", "y": "2"}
    assert settings.timeout == 2.0
    assert config.receivers["otlp"].settings.protocols.grpc.endpoint == "localhost:4317"


def test_environment_substitution(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "receivers: {otlp: {protocols: {grpc: {endpoint: '${env:HOST}:${PORT}'}}}}\n"
        "processors: {batch: {send_batch_size: '${env:SIZE}', timeout: '${env:MISSING:-3s}'}}\n"
        "exporters: {debug: {}, file: {path: '$${literal}'}}\n"
        "service: {pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [debug]}}}\n"
    )
    env = {"HOST": "127.0.0.1", "PORT": "4317", "SIZE": "100"}
    config = load([str(path)], env=env)
    assert config.receivers["otlp"].settings.protocols.grpc.endpoint == "127.0.0.1:4317"
    assert config.processors["batch"].settings.send_batch_size == 100  # typed from the variable
    assert config.processors["batch"].settings.timeout == 3.0
    assert config.exporters["file"].settings.path == "${literal}"
    _, warnings = load_documents([str(path)], [], {"HOST": "h", "SIZE": "1"})
    assert any("'PORT' is not set" in w for w in warnings)


BASE = {
    "receivers": {"otlp": {"protocols": {"grpc": {}}}},
    "exporters": {"debug": {}},
    "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
}


def with_(**sections):
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    doc.update(sections)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (with_(exporters={"kafka": {}}), '\'exporters\' unknown type: "kafka" for id: "kafka" (valid values: ['),
        (with_(exporters={"debug": {"verbosity": "loud"}}), 'error reading configuration for "debug"'),
        (with_(exporters={"debug": {"colour": "red"}}), "'' has invalid keys: colour"),
        (
            with_(exporters={"otlp": {"tls": {"insecure": True}}}),
            'requires a non-empty \\"endpoint\\"'.replace("\\", ""),
        ),
        (with_(processors={"batch": {"timeout": "soon"}}), "expected a duration such as 5s or 200ms"),
        (with_(processors={"memory_limiter": {"limit_mib": 100}}), "'check_interval' must be greater than zero"),
        (
            with_(receivers={"otlp": {"protocols": {}}}),
            "must specify at least one protocol when using the OTLP receiver",
        ),
        (
            with_(service={"pipelines": {"traces": {"receivers": ["otlp/2"], "exporters": ["debug"]}}}),
            'service::pipelines::traces: references receiver "otlp/2" which is not configured',
        ),
        (
            with_(service={"pipelines": {"traces": {"receivers": ["otlp"], "exporters": []}}}),
            "service::pipelines::traces: must have at least one exporter",
        ),
        (
            with_(
                receivers={"otlp": {"protocols": {"grpc": {}}}, "zipkin": {}},
                service={"pipelines": {"logs": {"receivers": ["zipkin"], "exporters": ["debug"]}}},
            ),
            'failed to create "zipkin" receiver for data type "logs": telemetry type is not supported',
        ),
        (
            with_(service={"pipelines": {"spans": {"receivers": ["otlp"], "exporters": ["debug"]}}}),
            'unknown signal "spans"',
        ),
        (
            with_(service={"extensions": ["health_check"], "pipelines": BASE["service"]["pipelines"]}),
            'service::extensions: references extension "health_check" which is not configured',
        ),
        (with_(receivers={"otlp/": {"protocols": {"grpc": {}}}}), "has invalid id 'otlp/'"),
        (with_(connectors={"spanmetrics": {}}), "'connectors' are not supported"),
    ],
)
def test_bad_configurations_are_refused_like_upstream(doc, message):
    with pytest.raises(CollectorConfigError) as caught:
        build(doc)
    assert message in str(caught.value)


def test_bad_config_files_exit_1_with_the_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers:\n  otlp:\n    protocols:\n      grpc: [\n")
    for path, expect in ((bad, "cannot parse"), (tmp_path / "missing.yaml", "no such file")):
        result = subprocess.run(
            [sys.executable, "-m", "meshtrace", "collector", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "300", "PATH": ""},
        )
        assert result.returncode == 1
        assert "Error:" in result.stderr
        assert expect in result.stderr


def test_validate_flag(seed_file):
    result = subprocess.run(
        [sys.executable, "-m", "meshtrace", "collector", "--config", str(seed_file), "--validate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "300", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "the configuration is valid" in result.stderr
    assert "removed upstream in v0.111.0" in result.stderr


def test_seed_text_is_the_configmap():
    text = seed_collector_config("x:1", "t")
    assert 'endpoint: "x:1"' in text
    assert 'Authentication: "t"' in text
