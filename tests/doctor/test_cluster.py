"""Pod checks on a `kubectl get ns,pods -A -o yaml` dump, next to the seed's mesh config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from meshtrace.doctor import Level, diagnose_files

SEED = Path(__file__).parents[2].parent / "shared" / "seed" / "yaml"
LABELLED = "2026-11-20T10:00:00Z"


def pod(
    name: str,
    created: str,
    *,
    sidecar: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    replicaset: str = "",
) -> dict[str, Any]:
    containers = [{"name": name.split("-")[0], "image": f"docker.io/istio/examples-bookinfo-{name.split('-')[0]}"}]
    if sidecar is not None:
        containers.append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0", **sidecar})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "creationTimestamp": created,
            "labels": labels or {},
            "ownerReferences": [{"kind": "ReplicaSet", "name": replicaset}] if replicaset else [],
        },
        "spec": {"containers": containers},
    }


def dump() -> dict[str, Any]:
    proxy_config = {"env": [{"name": "PROXY_CONFIG", "value": json.dumps({"tracing": {"sampling": 1.0}})}]}
    current = {"env": [{"name": "PROXY_CONFIG", "value": json.dumps({"tracing": {"sampling": 100}})}]}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "default",
                    "labels": {"istio-injection": "enabled"},
                    "managedFields": [
                        {
                            "manager": "kubectl-label",
                            "operation": "Update",
                            "time": LABELLED,
                            "fieldsV1": {"f:metadata": {"f:labels": {"f:istio-injection": {}}}},
                        }
                    ],
                },
            },
            pod("reviews-v1-6d8f9c-abcde", "2026-11-20T09:00:00Z", replicaset="reviews-v1-6d8f9c"),
            pod("ratings-v1-77bc-xyz", "2026-11-20T11:00:00Z", labels={"sidecar.istio.io/inject": "false"}),
            pod("details-v1-5f4d-qqq", "2026-11-20T11:00:00Z", replicaset="details-v1-5f4d"),
            pod(
                "productpage-v1-54bd-ppp",
                "2026-11-20T09:30:00Z",
                sidecar=proxy_config,
                replicaset="productpage-v1-54bd",
            ),
            pod("reviews-v2-8c9d-rrr", "2026-11-20T11:00:00Z", sidecar=current),
        ],
    }


def test_pod_checks(tmp_path: Path) -> None:
    mesh = yaml.safe_load((SEED / "istio-otel-config-tutorial.yaml").read_text())
    mesh["spec"]["meshConfig"]["defaultConfig"] = {"tracing": {"sampling": 100}}
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(dump()))
    report = diagnose_files([str(tmp_path / "mesh.yaml"), str(tmp_path / "pods.yaml")])
    by_pod = {f.where.split(" ")[1]: f for f in report.findings if f.check.startswith(("pod-", "proxyconfig"))}
    before = by_pod["default/reviews-v1-6d8f9c-abcde"]
    assert (before.check, before.level) == ("pod-before-label", Level.FAIL)
    assert before.fix == "kubectl rollout restart deployment/reviews-v1 -n default"
    assert "09:00:00" in before.why
    assert "10:00:00" in before.why
    assert (by_pod["default/ratings-v1-77bc-xyz"].check, by_pod["default/ratings-v1-77bc-xyz"].level) == (
        "pod-opted-out",
        Level.WARN,
    )
    assert by_pod["default/details-v1-5f4d-qqq"].check == "pod-no-sidecar"
    stale = by_pod["default/productpage-v1-54bd-ppp"]
    assert (stale.check, stale.level) == ("proxyconfig-stale", Level.WARN)
    assert "tracing.sampling: 1.0 → 100" in stale.title
    assert stale.fix == "kubectl rollout restart deployment/productpage-v1 -n default"
    assert by_pod["default/reviews-v2-8c9d-rrr"].level is Level.OK
    assert report.of("proxy-version") == []


def test_old_proxies_name_their_spans_differently(tmp_path: Path) -> None:
    mesh = yaml.safe_load((SEED / "istio-otel-config-tutorial.yaml").read_text())
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    old = pod("details-v1-5f4d-qqq", "2026-11-20T11:00:00Z", sidecar={})
    old["spec"]["containers"][1]["image"] = "docker.io/istio/proxyv2:1.22.3"
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [old]}))
    [finding] = diagnose_files([str(tmp_path / "mesh.yaml"), str(tmp_path / "pods.yaml")]).of("proxy-version")
    assert finding.level is Level.WARN
    assert "1.22" in finding.title
    assert "ingress/egress" in finding.title
