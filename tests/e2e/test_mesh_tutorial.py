"""The seed's tutorial, step by step, with its own YAML files applied unchanged, on the local mesh.

One mesh for the module; the tests run in order and build on each other, as the tutorial's steps do:
Istio with the OpenTelemetry provider, the Collector in ``observability``, the seed's Telemetry (which
lands in ``default``), Bookinfo (deployed here before the injection label, to show that only new pods get
sidecars), the gateway; then the Telemetry moved to ``istio-system``, sampling, a missing provider, the
three tracingServiceName modes and the OTLP/HTTP provider.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshtrace.testing.mesh import MeshProcess
from tests.e2e.conftest import TOKENS, ServerProcess, wait_until
from tests.e2e.mesh_helpers import (
    FULL_TREE,
    GW,
    WITHOUT_RATINGS,
    complete_traces,
    settled_count,
    shape,
    shifted,
    tags,
    tutorial_mesh,
)
from tests.mesh.conftest import SEED

pytestmark = pytest.mark.slow
DEPLOYMENTS = ["details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "productpage-v1"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, backend: ServerProcess) -> Iterator[MeshProcess]:
    proc = tutorial_mesh(tmp_path_factory.mktemp("mesh"), backend)
    proc.cli("create", "namespace", "observability")
    proc.cli("apply", "-f", str(SEED / "otel.yaml"), "-n", "observability")
    proc.cli("apply", "-f", str(SEED / "istio-telemetry.yaml"))
    proc.cli("apply", "-f", str(SEED / "bookinfo.yaml"))
    proc.cli("apply", "-f", str(SEED / "bookinfo-gateway.yaml"))
    yield proc
    assert proc.stop(timeout=120) == 0, proc.log()[-3000:]


def traffic(mesh: MeshProcess, n: int, concurrency: int = 1) -> float:
    """``meshtrace traffic`` through the gateway; the time it started."""
    since = time.time()
    result = mesh.cli("traffic", "-n", str(n), "-c", str(concurrency))
    assert "200" in result.stderr
    return since


def test_the_collector_config_placeholders_are_filled(mesh):
    body = yaml.safe_load(
        mesh.cli("get", "configmap", "opentelemetry-collector-conf", "-n", "observability", "-o", "yaml").stdout
    )
    config = body["data"]["opentelemetry-collector-config"]
    assert "<gRPC-Endpoint>" not in config
    assert TOKENS["acme"] in config


def test_pods_created_before_the_injection_label_have_no_sidecar(mesh):
    pods = mesh.pods()
    assert len(pods) == 6
    assert all(p["containers"] == [p["containers"][0]] and not p["sidecar"] for p in pods)
    page = httpx.get(f"{mesh.gateway}/productpage", timeout=30)
    assert "<title>Simple Bookstore App</title>" in page.text  # Bookinfo works without a mesh, as in Kubernetes
    listed = mesh.cli("get", "pods").stdout
    assert "istio-proxy" not in listed
    mesh.cli("label", "namespace", "default", "istio-injection=enabled")
    assert [p["name"] for p in mesh.pods()] == [p["name"] for p in pods]  # existing pods keep running unchanged
    assert all(not p["sidecar"] for p in mesh.pods())


def test_a_restart_gives_them_sidecars(mesh):
    for deployment in DEPLOYMENTS:
        mesh.cli("rollout", "restart", f"deployment/{deployment}", "--no-wait")
    mesh.cli("rollout", "status", "deployment/productpage-v1")
    pods = mesh.pods()
    assert len(pods) == 6
    assert all(p["sidecar"] and p["containers"][-1] == "istio-proxy" and p["ready"] == "2/2" for p in pods), pods
    assert "productpage,istio-proxy" in mesh.cli("get", "pods").stdout


def test_the_seed_telemetry_in_default_leaves_the_gateway_untraced(mesh, backend):
    warnings = " ".join(mesh.status()["warnings"])
    assert "ingress gateway istio-system/istio-ingressgateway is not traced" in warnings
    assert "meshtrace apply -f <telemetry.yaml> -n istio-system" in warnings
    since = traffic(mesh, 10)
    traces = complete_traces(backend, "productpage.default", since, 10, {5, 7})
    assert len(traces) == 10
    for trace in traces:
        expected = shifted(WITHOUT_RATINGS if len(trace["spans"]) == 5 else FULL_TREE, 2)[2:]
        # No decorator header arrives from an untraced gateway: the inbound route names the root.
        expected[0] = (0, "productpage.default", "server", "productpage.default.svc.cluster.local:9080/*")
        assert shape(trace) == expected
        assert all(trace["processes"][s["processID"]]["serviceName"] != GW for s in trace["spans"])


def test_the_telemetry_in_istio_system_traces_the_whole_mesh(mesh, backend):
    result = mesh.cli("apply", "-f", str(SEED / "istio-telemetry.yaml"), "-n", "istio-system")
    assert "telemetry.telemetry.istio.io/otel-demo created" in result.stdout
    assert "is not traced" not in " ".join(mesh.status()["warnings"])
    since = traffic(mesh, 10)
    traces = complete_traces(backend, GW, since, 10, {7, 9})
    sizes = sorted(len(t["spans"]) for t in traces)
    assert len(traces) == 10
    assert set(sizes) <= {7, 9}
    for trace in traces:
        assert shape(trace) == (FULL_TREE if len(trace["spans"]) == 9 else WITHOUT_RATINGS)
        processes = trace["processes"]
        for span in trace["spans"]:
            t = tags(span)
            service = processes[span["processID"]]["serviceName"]
            resource = {tag["key"]: tag["value"] for tag in processes[span["processID"]]["tags"]}
            assert resource["telemetry.sdk.name"] == "envoy"
            assert resource["telemetry.sdk.language"] == "cpp"
            assert t["component"] == "proxy"
            assert t["http.status_code"] == "200"
            assert t["response_flags"] == "-"
            assert "upstream_cluster" in t
            assert "http.protocol" in t
            if span["operationName"].startswith("router "):
                assert t["upstream_cluster"] == "outbound|9080||productpage.default.svc.cluster.local"
                assert t["peer.address"] == t["upstream_address"]
                continue
            kind = "router" if service == GW else "sidecar"
            assert t["node_id"].startswith(f"{kind}~")
            assert t["zone"] == ""
            assert t["istio.mesh_id"] == "cluster.local"
            assert t["istio.cluster_id"] == "Kubernetes"
            assert t["istio.namespace"] == service.split(".")[1]
            assert t["guid:x-request-id"]
            assert t["http.method"] == "GET"
            assert t["downstream_cluster"] == "-"
            assert t["http.url"].startswith("http://")
            if t["span.kind"] == "server" and service != GW:
                assert t["upstream_cluster"] == "inbound|9080||"
        request_ids = {tags(s).get("guid:x-request-id") for s in trace["spans"]} - {None}
        assert len(request_ids) == 1
        assert next(iter(request_ids))[14] == "9"
    revisions = {
        tags(s)["istio.canonical_revision"]
        for t in traces
        for s in t["spans"]
        if t["processes"][s["processID"]]["serviceName"] == "reviews.default" and "istio.canonical_revision" in tags(s)
    }
    assert revisions <= {"v1", "v2", "v3"}
    assert len(revisions) >= 2


def _root_telemetry(mesh: MeshProcess, tmp_path: Path, spec: dict) -> str:
    doc = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "otel-demo", "namespace": "istio-system"},
        "spec": spec,
    }
    path = tmp_path / "telemetry.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = mesh.cli("apply", "-f", str(path))
    return result.stdout + result.stderr


@pytest.mark.parametrize(
    ("percentage", "requests", "low", "high"), [(0, 40, 0, 0), (50, 400, 160, 240), (100, 40, 40, 40)]
)
def test_sampling_percentage_applies_live(mesh, backend, tmp_path, percentage, requests, low, high):
    _root_telemetry(
        mesh, tmp_path, {"tracing": [{"providers": [{"name": "otel-tracing"}], "randomSamplingPercentage": percentage}]}
    )
    before = settled_count(backend, at_least=0.5, quiet=1.0)
    traffic(mesh, requests, concurrency=8)
    traced = settled_count(backend) - before
    # The gateway decides; every sidecar follows the sampled flag it receives (50%: ±4 sd over 400).
    assert low <= traced <= high


def test_a_missing_provider_gives_no_spans_and_a_warning(mesh, backend, tmp_path):
    mesh.cli("delete", "-f", str(SEED / "istio-telemetry.yaml"))  # the one in default
    output = _root_telemetry(
        mesh, tmp_path, {"tracing": [{"providers": [{"name": "otel-tracin"}], "randomSamplingPercentage": 100}]}
    )
    assert "provider 'otel-tracin'" in output
    assert "matches no meshConfig.extensionProviders entry" in output
    assert "otel-tracing" in output  # the names that do exist
    telemetry = mesh.cli("get", "telemetry", "-n", "istio-system").stdout
    assert "not found" in telemetry
    before = settled_count(backend, at_least=0.5, quiet=1.0)
    traffic(mesh, 20, concurrency=4)
    assert settled_count(backend) == before
    _root_telemetry(
        mesh, tmp_path, {"tracing": [{"providers": [{"name": "otel-tracing"}], "randomSamplingPercentage": 100}]}
    )


def productpage_services(traces: list[dict]) -> set[str]:
    """The service.name of productpage's proxy in ``traces``."""
    return {
        t["processes"][s["processID"]]["serviceName"]
        for t in traces
        for s in t["spans"]
        if tags(s).get("istio.canonical_service") in ("storefront", "productpage")
    }


def test_tracing_service_name_modes_take_effect_after_a_restart(mesh, backend, tmp_path):
    operator = yaml.safe_load((SEED / "istio-otel-config-tutorial.yaml").read_text())
    deployment = next(
        d
        for d in yaml.safe_load_all((SEED / "bookinfo.yaml").read_text())
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "productpage-v1"
    )
    deployment["spec"]["template"]["metadata"]["labels"]["service.istio.io/canonical-name"] = "storefront"
    (tmp_path / "productpage.yaml").write_text(yaml.safe_dump(deployment))
    mesh.cli("apply", "-f", str(tmp_path / "productpage.yaml"))
    expected = {
        "CANONICAL_NAME_ONLY": "storefront",
        "CANONICAL_NAME_AND_NAMESPACE": "storefront.default",
        "APP_LABEL_AND_NAMESPACE": "productpage.default",
    }
    previous = "productpage.default"
    for mode, service in expected.items():
        operator["spec"]["meshConfig"]["defaultConfig"] = {"tracingServiceName": mode}
        (tmp_path / "operator.yaml").write_text(yaml.safe_dump(operator))
        mesh.cli("apply", "-f", str(tmp_path / "operator.yaml"))
        since = traffic(mesh, 2)
        names = productpage_services(complete_traces(backend, GW, since, 2, {7, 9}))
        assert names == {previous}  # ProxyConfig is fixed when the pod is created
        mesh.cli("rollout", "restart", "deployment/productpage-v1")
        since = traffic(mesh, 2)
        names = productpage_services(complete_traces(backend, GW, since, 2, {7, 9}))
        assert names == {service}, mode
        previous = service


def test_the_http_provider_sends_otlp_http_with_its_headers(mesh, backend, tmp_path):
    collector = list(yaml.safe_load_all((SEED / "otel.yaml").read_text()))
    config = yaml.safe_load(collector[0]["data"]["opentelemetry-collector-config"])
    config["receivers"]["otlp"]["protocols"]["http"] = {"endpoint": "0.0.0.0:4318", "include_metadata": True}
    config["processors"]["attributes/header"] = {
        "actions": [{"key": "custom-header", "action": "insert", "from_context": "metadata.custom-header"}]
    }
    config["service"]["pipelines"]["traces"]["processors"] = ["attributes/header"]
    collector[0]["data"]["opentelemetry-collector-config"] = yaml.safe_dump(config)
    (tmp_path / "otel.yaml").write_text(yaml.safe_dump_all(collector))
    mesh.cli("apply", "-f", str(tmp_path / "otel.yaml"), "-n", "observability")
    mesh.cli("rollout", "restart", "deployment/opentelemetry-collector", "-n", "observability")
    mesh.cli("apply", "-f", str(SEED / "istio-otel-config-http.yaml"))
    since = traffic(mesh, 3)
    traces = complete_traces(backend, GW, since, 3, {7, 9})
    for trace in traces:
        assert all(tags(s)["custom-header"] == "custom value" for s in trace["spans"])


def test_cli_reports_invalid_files_and_skipped_kinds(mesh, tmp_path):
    bad = mesh.cli("apply", "-f", str(SEED / "istio-otel-config-grpc.yaml"), check=False)
    assert bad.returncode == 1
    assert "istio-otel-config-grpc.yaml, document 1 (IstioOperator installed-state)" in bad.stderr
    assert "opentelemetry.service" in bad.stderr
    assert "fix:" in bad.stderr
    (tmp_path / "dr.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n"
    )
    skipped = mesh.cli("apply", "-f", str(tmp_path / "dr.yaml"))
    assert "DestinationRule r (networking.istio.io/v1) is not run by the local mesh: skipped" in skipped.stderr
    missing = mesh.cli("apply", "-f", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 1
    assert "no such file" in missing.stderr


def test_get_and_logs(mesh):
    services = mesh.cli("get", "services").stdout
    assert all(name in services for name in ("details", "ratings", "reviews", "productpage"))
    pod = next(p["name"] for p in mesh.pods() if p["name"].startswith("productpage"))
    proxy_log = mesh.cli("logs", pod, "-c", "istio-proxy").stdout
    assert "ready (configuration version" in proxy_log
    app_log = mesh.cli("logs", pod).stdout
    assert "listening on" in app_log
    wrong = mesh.cli("logs", pod, "-c", "nope", check=False)
    assert wrong.returncode == 1
    assert "istio-proxy" in wrong.stderr
    as_yaml = yaml.safe_load(mesh.cli("get", "pods", pod, "-o", "yaml").stdout)
    assert [c["name"] for c in as_yaml["spec"]["containers"]] == ["productpage", "istio-proxy"]
    wait_until(lambda: "Running" in mesh.cli("get", "pods", "-A").stdout)
