"""Names Istio derives for a proxy: the ``service.name`` of its spans (``tracingServiceName``), the
canonical service and revision labels the injector writes, and Envoy's node id.

Reference: ``pkg/bootstrap/config.go getServiceCluster`` (Istio 1.30: the app name comes from ``app``, then
``app.kubernetes.io/name``, then ``service.istio.io/canonical-name``) and ``files/injection-template.yaml``.
"""

from __future__ import annotations

CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"


def canonical_name(labels: dict[str, str], workload: str) -> str:
    return labels.get(CANONICAL_NAME) or labels.get("app.kubernetes.io/name") or labels.get("app") or workload


def canonical_revision(labels: dict[str, str]) -> str:
    return (
        labels.get(CANONICAL_REVISION) or labels.get("app.kubernetes.io/version") or labels.get("version") or "latest"
    )


def _or_default(name: str, labels: dict[str, str], workload: str, namespace: str) -> str:
    if name and name != "istio-proxy":
        return name
    app = labels.get("app") or labels.get("app.kubernetes.io/name") or labels.get(CANONICAL_NAME)
    if app:
        return f"{app}.{namespace}"
    if workload:
        return f"{workload}.{namespace}"
    return f"istio-proxy.{namespace}" if namespace else "istio-proxy"


def service_cluster(mode: str, explicit: str, labels: dict[str, str], workload: str, namespace: str) -> str:
    """The proxy's ``service_cluster``, which Envoy's OpenTelemetry tracer reports as ``service.name``."""
    if explicit:
        return _or_default(explicit, labels, workload, namespace)
    if mode == "CANONICAL_NAME_ONLY":
        return _or_default(canonical_name(labels, workload), labels, workload, namespace)
    if mode == "CANONICAL_NAME_AND_NAMESPACE":
        canonical = canonical_name(labels, workload)
        return _or_default(f"{canonical}.{namespace}" if canonical else "", labels, workload, namespace)
    return _or_default("istio-proxy", labels, workload, namespace)


def node_id(kind: str, ip: str, pod: str, namespace: str) -> str:
    return f"{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"
