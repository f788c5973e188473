"""`meshtrace doctor --live` against a running mesh whose reviews service does not forward trace headers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.mesh_helpers import tutorial_mesh
from tests.mesh.conftest import SEED

pytestmark = pytest.mark.slow


def _forgetful_reviews(target: Path) -> Path:
    """The seed's bookinfo.yaml, every reviews version told not to forward the trace headers."""
    docs = [d for d in yaml.safe_load_all((SEED / "bookinfo.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("reviews-"):
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container.setdefault("env", []).append({"name": "BOOKINFO_FORWARD_HEADERS", "value": "false"})
    target.write_text(yaml.safe_dump_all(docs))
    return target


def test_live_doctor_names_the_service_that_drops_headers(tmp_path: Path, backend: ServerProcess) -> None:
    mesh = tutorial_mesh(tmp_path / "mesh", backend)
    try:
        mesh.cli("create", "namespace", "observability")
        mesh.cli("apply", "-f", str(SEED / "otel.yaml"), "-n", "observability")
        mesh.cli("apply", "-f", str(SEED / "istio-telemetry.yaml"), "-n", "istio-system")
        mesh.cli("label", "namespace", "default", "istio-injection=enabled")
        mesh.cli("apply", "-f", str(_forgetful_reviews(tmp_path / "bookinfo.yaml")))
        mesh.cli("apply", "-f", str(SEED / "bookinfo-gateway.yaml"))
        page = f"http://{mesh.addresses['gateway_url']}/productpage"
        wait_until(lambda: httpx.get(page, trust_env=False, timeout=30).status_code == 200, timeout=120, interval=1)
        result = mesh.cli("doctor", "--live", "--json", check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        findings = json.loads(result.stdout)["findings"]
        by_check = {}
        for f in findings:
            by_check.setdefault(f["check"], []).append(f)
        assert [f["level"] for f in by_check["backend-token"]] == ["ok"]
        assert [f["level"] for f in by_check["collector-health"]] == ["ok"]
        assert [f["level"] for f in by_check["collector-receives"]] == ["ok"], by_check["collector-receives"]
        assert by_check["probe-trace"][0]["level"] == "ok", findings
        [dropped] = by_check["headers-dropped"]
        assert dropped["level"] == "fail"
        assert dropped["title"] == "reviews.default does not forward the trace headers on its calls to ratings.default"
        assert "traceparent" in dropped["fix"]

        # Fixed app, restarted: nothing fails any more.
        def reviews_pods() -> set[str]:
            return {
                p["name"] for p in mesh.pods("default") if p["name"].startswith("reviews-") and p["status"] == "Running"
            }

        old = reviews_pods()
        mesh.cli("apply", "-f", str(SEED / "bookinfo.yaml"))
        for version in ("v1", "v2", "v3"):
            mesh.cli("rollout", "restart", f"deployment/reviews-{version}")
        wait_until(lambda: len(reviews_pods() - old) == 3 and not (reviews_pods() & old), timeout=120, interval=0.5)
        wait_until(lambda: httpx.get(page, trust_env=False, timeout=30).status_code == 200, timeout=120, interval=1)
        again = mesh.cli("doctor", "--live", "--json", check=False)
        checks = {f["check"]: f["level"] for f in json.loads(again.stdout)["findings"]}
        assert again.returncode == 0, again.stdout
        assert checks["headers-forwarded"] == "ok"
    finally:
        assert mesh.stop(timeout=120) == 0, mesh.log()[-3000:]
