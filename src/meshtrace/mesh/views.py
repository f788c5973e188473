"""What ``meshtrace get`` shows of pods and objects (JSON from the control API)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from meshtrace.mesh.pods import Pod
from meshtrace.mesh.resources import Obj

if TYPE_CHECKING:
    from meshtrace.mesh.daemon import Mesh


def pod_view(pod: Pod) -> dict[str, Any]:
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "ready": f"{sum(c.ready for c in pod.containers)}/{len(pod.containers)}",
        "status": pod.status,
        "restarts": sum(c.restarts for c in pod.containers),
        "age": time.time() - pod.created_at,
        "ip": pod.ip,
        "containers": [c.name for c in pod.containers],
        "sidecar": pod.injected,
        "labels": pod.labels,
        "annotations": pod.annotations,
        "details": [
            {
                "name": c.name,
                "image": c.image,
                "state": c.state,
                "reason": c.reason or c.error,
                "ready": c.ready,
                "restarts": c.restarts,
                "pid": c.pid,
                "exit_code": c.exit_code,
                "command": list(c.program.argv) if c.program else [],
                "log": str(c.log),
            }
            for c in pod.containers
        ],
    }


def object_view(obj: Obj, mesh: Mesh) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": obj.kind,
        "namespace": obj.namespace,
        "name": obj.name,
        "body": obj.body,
        "generation": obj.generation,
    }
    if obj.kind == "Telemetry":
        proxies = [
            f"{pod.namespace}/{pod.name}"
            for pod in mesh.cluster.pods_in(None)
            if pod.proxy is not None and not pod.deleting and _applies(obj, pod)
        ]
        out["applies_to"] = proxies
        telemetry = mesh.cluster.telemetries.get((obj.namespace, obj.name))
        providers = {r.provider for r in telemetry.rules if r.provider} if telemetry else set()
        missing = [p for p in providers if mesh.cluster.mesh.provider(p) is None]
        out["status"] = f"provider {missing[0]!r} not found: tracing off" if missing else "ok"
    if obj.kind == "Namespace":
        out["status"] = "Active"
    return out


def _applies(obj: Obj, pod: Pod) -> bool:
    from meshtrace.mesh.istio.telemetry import ROOT_NAMESPACE

    selector = (obj.spec.get("selector") or {}).get("matchLabels")
    if obj.namespace == ROOT_NAMESPACE and not selector:
        return True
    if obj.namespace != pod.namespace:
        return False
    return not selector or all(pod.labels.get(k) == str(v) for k, v in selector.items())
