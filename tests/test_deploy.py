"""The deploy/ manifests are valid objects for meshtrace's own loader, the Collector config in them loads
without a warning, and the doctor finds nothing wrong with them next to the guide's Istio config."""

from __future__ import annotations

from pathlib import Path

import yaml

from meshtrace.collector.config import build
from meshtrace.doctor import diagnose_files
from meshtrace.mesh.resources import parse
from meshtrace.store.engine import parse_server_url

DEPLOY = Path(__file__).parents[1] / "deploy" / "kubernetes"
SEED = Path(__file__).parents[1].parent / "shared" / "seed" / "yaml"


def test_manifests_load_as_kubernetes_objects() -> None:
    kinds = []
    for file in sorted(DEPLOY.glob("*.yaml")):
        loaded = parse(str(file), file.read_text())
        kinds += [o.kind for o in loaded.objects]
        not_run = ("Secret", "PersistentVolumeClaim", "StatefulSet", "Job")  # shape-checked, not run locally
        assert all(any(kind in s for kind in not_run) for s in loaded.skipped), loaded.skipped
    assert {"Namespace", "Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(kinds)


def test_backend_deployment_matches_the_server() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "meshtrace.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["containerPort"] for p in container["ports"]} == {4317, 4318, 16686}
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc-otlp", "http-otlp", "http-query"}


def test_collector_config_loads_without_warnings() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "otel-collector.yaml").read_text()) if d]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    config = build(yaml.safe_load(configmap["data"]["opentelemetry-collector-config"]))
    assert config.warnings == []


def test_the_doctor_finds_nothing_wrong() -> None:
    report = diagnose_files(
        [
            str(SEED / "istio-otel-config-tutorial.yaml"),
            f"{SEED / 'istio-telemetry.yaml'}@istio-system",
            str(DEPLOY / "otel-collector.yaml"),
            str(DEPLOY / "meshtrace.yaml"),
        ]
    )
    assert report.problems() == []
    assert report.of("provider-service")[0].title.endswith("Service observability/opentelemetry-collector port 4317")


def test_cluster_manifests_run_the_schema_job_and_replicas_on_one_store() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "meshtrace-cluster.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    url = next(d for d in docs if d["metadata"]["name"] == "meshtrace-store")["stringData"]["MESHTRACE_STORE"]
    address = parse_server_url(url)
    assert (address.database, address.cluster, address.replicated) == ("otel", "meshtrace", True)
    job = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:2] == ["schema", "migrate"]
    sts = by_kind["StatefulSet"]["spec"]
    assert sts["replicas"] > 1
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "wal"  # a write-ahead log per replica
    # The pod template is the one meshtrace's loader validates as a Deployment's.
    as_deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "meshtrace", "namespace": "meshtrace"},
        "spec": {"selector": sts["selector"], "template": sts["template"]},
    }
    assert [o.kind for o in parse("as-deployment.yaml", yaml.safe_dump(as_deployment)).objects] == ["Deployment"]
    serve = sts["template"]["spec"]["containers"][0]["args"]
    assert serve[0] == "serve"
    assert by_kind["Service"]["spec"]["ports"][0]["name"] == "grpc-otlp"
