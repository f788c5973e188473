"""One fixture per cause of "no traces", each the seed's tutorial YAML with one mistake put in, each
asserting the exact finding; the seed's own files pass with only deprecation warnings."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshtrace.cli import build
from meshtrace.doctor import Level, Report, diagnose_files

SEED = Path(__file__).parents[2].parent / "shared" / "seed" / "yaml"
FILL = {"<gRPC-Endpoint>": "meshtrace.observability.svc.cluster.local:4317", "<gRPC-Token>": "s3cret"}
Docs = dict[str, list[dict[str, Any]]]


def seed() -> Docs:
    """The tutorial's files, as the guide applies them (Telemetry mesh-wide here; see the scope test)."""
    files = {
        "mesh.yaml": "istio-otel-config-tutorial.yaml",
        "telemetry.yaml": "istio-telemetry.yaml",
        "otel.yaml": "otel.yaml",
        "bookinfo.yaml": "bookinfo.yaml",
    }
    return {name: [d for d in yaml.safe_load_all((SEED / src).read_text()) if d] for name, src in files.items()}


NAMESPACES = {"telemetry.yaml": "istio-system", "otel.yaml": "observability"}


def run(
    tmp_path: Path,
    change: Callable[[Docs], None] | None = None,
    placeholders: dict[str, str] | None = FILL,
    namespaces: dict[str, str] | None = None,
) -> Report:
    docs = seed()
    if change is not None:
        change(docs)
    specs = []
    for name, documents in docs.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(documents))
        ns = (NAMESPACES if namespaces is None else namespaces).get(name)
        specs.append(f"{tmp_path / name}@{ns}" if ns else str(tmp_path / name))
    return diagnose_files(specs, placeholders)


def only(report: Report, check: str, level: Level = Level.FAIL) -> Any:
    found = [f for f in report.findings if f.check == check and f.level is level]
    assert len(found) == 1, [f"{f.level}: {f.check}: {f.title}" for f in report.problems()]
    return found[0]


def otel(docs: Docs) -> dict[str, Any]:
    return docs["mesh.yaml"][0]["spec"]["meshConfig"]["extensionProviders"][0]["opentelemetry"]


def collector_config(docs: Docs) -> dict[str, Any]:
    return yaml.safe_load(docs["otel.yaml"][0]["data"]["opentelemetry-collector-config"])


def set_collector_config(docs: Docs, config: dict[str, Any]) -> None:
    docs["otel.yaml"][0]["data"]["opentelemetry-collector-config"] = yaml.safe_dump(config)


def deprecations(report: Report) -> list[str]:
    return sorted(f.title for f in report.problems() if f.check == "collector-deprecated")


def test_the_seed_passes_with_only_deprecation_warnings(tmp_path: Path) -> None:
    report = run(tmp_path)
    assert not report.failed
    assert {f.check for f in report.problems()} == {"collector-deprecated"}
    assert len(deprecations(report)) == 4  # logging, loglevel, health_check port, the OpenCensus port
    assert any("'logging' exporter was removed" in t for t in deprecations(report))


def test_the_guides_telemetry_in_default_leaves_the_gateway_out(tmp_path: Path) -> None:
    report = run(tmp_path, namespaces={"otel.yaml": "observability"})  # `kubectl apply -f istio-telemetry.yaml`
    finding = only(report, "telemetry-scope", Level.WARN)
    assert finding.where.endswith("(Telemetry default/otel-demo): metadata.namespace")
    assert "-n istio-system" in finding.fix


def test_provider_name_that_matches_no_extension_provider(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        docs["telemetry.yaml"][0]["spec"]["tracing"][0]["providers"][0]["name"] = "otel"

    finding = only(run(tmp_path, change), "provider-name")
    assert finding.where.endswith("spec.tracing[0].providers[0].name")
    assert "silently" in finding.why
    assert "name: otel-tracing" in finding.fix


def test_provider_names_compare_case_insensitively_as_istio_does(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        docs["telemetry.yaml"][0]["spec"]["tracing"][0]["providers"][0]["name"] = "OTEL-Tracing"

    report = run(tmp_path, change)
    assert not report.failed
    assert any("case-insensitively" in f.title for f in report.of("provider-name"))


def test_no_telemetry_and_no_default_provider(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        docs["telemetry.yaml"] = []

    finding = only(run(tmp_path, change), "tracing-off")
    assert "kind: Telemetry" in finding.fix


def test_default_providers_alone_turn_tracing_on_and_are_checked(tmp_path: Path) -> None:
    def alone(docs: Docs) -> None:
        docs["telemetry.yaml"] = []
        docs["mesh.yaml"][0]["spec"]["meshConfig"]["defaultProviders"] = {"tracing": ["otel-tracing"]}
        docs["mesh.yaml"][0]["spec"]["meshConfig"]["defaultConfig"] = {"tracing": {"sampling": 100}}

    assert not run(tmp_path, alone).failed

    def wrong(docs: Docs) -> None:
        alone(docs)
        docs["mesh.yaml"][0]["spec"]["meshConfig"]["defaultProviders"] = {"tracing": ["zipkin"]}

    finding = only(run(tmp_path, wrong), "provider-name")
    assert finding.where.endswith("spec.meshConfig.defaultProviders.tracing[0]")


@pytest.mark.parametrize(
    ("rule", "check", "level"),
    [
        ({"randomSamplingPercentage": None}, "sampling-default", Level.WARN),
        ({"randomSamplingPercentage": 0}, "sampling-zero", Level.FAIL),
        ({"disableSpanReporting": True}, "span-reporting-disabled", Level.FAIL),
        ({"match": {"mode": "CLIENT"}}, "match-mode", Level.WARN),
    ],
)
def test_sampling_and_reporting(tmp_path: Path, rule: dict[str, Any], check: str, level: Level) -> None:
    def change(docs: Docs) -> None:
        entry = docs["telemetry.yaml"][0]["spec"]["tracing"][0]
        for key, value in rule.items():
            if value is None:
                entry.pop(key)
            else:
                entry[key] = value

    finding = only(run(tmp_path, change), check, level)
    assert finding.where.split(": ")[-1].startswith("spec.tracing[0]")


def test_grpc_port_with_an_http_block(tmp_path: Path) -> None:
    finding = only(run(tmp_path, lambda d: otel(d).update(http={"path": "/v1/traces"})), "provider-protocol")
    assert finding.where.endswith("extensionProviders[0].opentelemetry.http")
    assert "port: 4318" in finding.fix


def test_http_port_without_an_http_block(tmp_path: Path) -> None:
    finding = only(run(tmp_path, lambda d: otel(d).update(port=4318)), "provider-protocol")
    assert finding.where.endswith("extensionProviders[0].opentelemetry.port")


def test_collector_port_not_named_grpc(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        docs["otel.yaml"][1]["spec"]["ports"][1]["name"] = "otlp"

    finding = only(run(tmp_path, change), "collector-port-name", Level.WARN)
    assert finding.where.endswith("(Service observability/opentelemetry-collector): spec.ports[1].name")
    assert "appProtocol: grpc" in finding.fix


def test_provider_service_typo(tmp_path: Path) -> None:
    change = lambda d: otel(d).update(service="opentelemetry-colector.observability.svc.cluster.local")  # noqa: E731
    finding = only(run(tmp_path, change), "provider-service-missing")
    assert "opentelemetry-collector.observability" in finding.fix


def test_short_service_name_in_two_namespaces(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        otel(docs)["service"] = "opentelemetry-collector"
        twin = copy.deepcopy(docs["otel.yaml"][1])
        twin["metadata"]["namespace"] = "monitoring"
        docs["otel.yaml"].append(twin)

    finding = only(run(tmp_path, change), "provider-service-ambiguous")
    assert "monitoring, observability" in finding.title
    assert finding.fix.startswith("service: ")


def test_mesh_service_left_as_the_guides_placeholder(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        docs["mesh.yaml"] = [d for d in yaml.safe_load_all((SEED / "istio-otel-config-grpc.yaml").read_text()) if d]

    finding = only(run(tmp_path, change), "provider-placeholder")
    assert "<service-name>" in finding.title


def test_collector_without_an_otlp_receiver(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        config = collector_config(docs)
        config["receivers"] = {"zipkin": {}}
        config["service"]["pipelines"]["traces"]["receivers"] = ["zipkin"]
        config["service"]["pipelines"]["logs"]["receivers"] = ["zipkin"]
        set_collector_config(docs, config)

    report = run(tmp_path, change)
    assert [f.check for f in report.findings if f.level is Level.FAIL] in (
        ["collector-otlp-receiver"],
        ["collector-config-invalid"],
    )


def test_receiver_without_the_providers_protocol(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        config = collector_config(docs)
        config["receivers"]["otlp"]["protocols"] = {"http": None}
        set_collector_config(docs, config)

    finding = only(run(tmp_path, change), "collector-protocol")
    assert "no grpc protocol" in finding.title


def test_receiver_bound_to_localhost(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        config = collector_config(docs)
        config["receivers"]["otlp"]["protocols"]["grpc"] = {"endpoint": "localhost:4317"}
        set_collector_config(docs, config)

    finding = only(run(tmp_path, change), "collector-localhost")
    assert finding.where.endswith("receivers.otlp.protocols.grpc.endpoint")


def test_newer_collector_image_defaults_to_localhost(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        container = docs["otel.yaml"][2]["spec"]["template"]["spec"]["containers"][0]
        container["image"] = "otel/opentelemetry-collector:0.110.0"

    report = run(tmp_path, change)
    assert len([f for f in report.findings if f.check == "collector-localhost" and f.level is Level.FAIL]) == 2
    assert "0.110" in report.of("collector-localhost")[0].title


def test_exporter_endpoint_still_a_placeholder(tmp_path: Path) -> None:
    report = run(tmp_path, placeholders={})
    finding = only(report, "exporter-placeholder")
    assert "<gRPC-Endpoint>" in finding.title
    assert only(report, "exporter-token-placeholder")


def test_insecure_tls_towards_a_public_endpoint(tmp_path: Path) -> None:
    report = run(tmp_path, placeholders={**FILL, "<gRPC-Endpoint>": "tracing.example.com:8090"})
    finding = only(report, "exporter-insecure", Level.WARN)
    assert finding.where.endswith("exporters.otlp.tls.insecure")
    assert not report.failed


def test_token_header_the_backend_does_not_read(tmp_path: Path) -> None:
    def change(docs: Docs) -> None:
        config = collector_config(docs)
        config["exporters"]["otlp"]["headers"] = {"X-Token": "s3cret"}
        set_collector_config(docs, config)

    finding = only(run(tmp_path, change), "exporter-token-header")
    assert "X-Token" in finding.title
    assert "Authentication" in finding.fix


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    app = build()  # the command as installed, doctor included
    runner = CliRunner()
    run(tmp_path)  # writes the files
    base = [
        "doctor",
        "-f",
        f"{tmp_path / 'mesh.yaml'}",
        "-f",
        f"{tmp_path / 'telemetry.yaml'}@istio-system",
        "-f",
        f"{tmp_path / 'otel.yaml'}@observability",
    ]
    sets = [arg for k, v in FILL.items() for arg in ("--set", f"{k}={v}")]
    ok = runner.invoke(app, [*base, *sets])
    assert ok.exit_code == 0, ok.output
    assert "0 failures" in ok.output
    failing = runner.invoke(app, [*base, "--json"])
    assert failing.exit_code == 1
    body = json.loads(failing.output)
    assert body["ok"] is False
    assert {f["check"] for f in body["findings"] if f["level"] == "fail"} == {
        "exporter-placeholder",
        "exporter-token-placeholder",
    }
    missing = runner.invoke(app, ["doctor", "-f", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert runner.invoke(app, ["doctor"]).exit_code == 2


def test_sidecar_egress_scope_leaves_the_collector_out(tmp_path: Path) -> None:
    sidecar = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]},
    }

    def change(docs: Docs) -> None:
        docs["bookinfo.yaml"].append(sidecar)

    finding = only(run(tmp_path, change), "sidecar-egress")
    assert "opentelemetry-collector.observability.svc.cluster.local" in finding.title
    assert '"observability/opentelemetry-collector.observability.svc.cluster.local"' in finding.fix

    def allowed(docs: Docs) -> None:
        sidecar["spec"]["egress"][0]["hosts"].append("observability/*")
        docs["bookinfo.yaml"].append(sidecar)

    assert not run(tmp_path, allowed).failed
