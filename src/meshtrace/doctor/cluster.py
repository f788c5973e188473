"""Checks on a cluster dump (``kubectl get ns,pods -A -o yaml``): sidecars, injection timing, opt-outs and
proxy configs that changed after the pods started.

Injection happens only when a pod is created: a pod older than its namespace's injection label has no
sidecar until restarted. The label's time comes from the namespace's ``managedFields`` (the entry that
set the label), as ``kubectl get ns -o yaml --show-managed-fields`` dumps it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from meshtrace.doctor.findings import Report
from meshtrace.doctor.inputs import Doc
from meshtrace.doctor.static import Context, _get

_INJECT_LABELS = ("istio-injection", "istio.io/rev")


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _label_time(ns: Doc) -> datetime | None:
    """When the namespace got its injection label: the latest managedFields entry that sets it."""
    times = []
    for entry in ns.metadata.get("managedFields") or []:
        fields = json.dumps(entry.get("fieldsV1") or {})
        if any(f'"f:{label}"' in fields for label in _INJECT_LABELS):
            moment = _time(entry.get("time"))
            if moment is not None:
                times.append(moment)
    return max(times) if times else None


def _injected(ns: Doc) -> bool:
    return ns.labels.get("istio-injection") == "enabled" or (
        "istio.io/rev" in ns.labels and ns.labels.get("istio-injection") != "disabled"
    )


def _containers(pod: Doc) -> list[dict[str, Any]]:
    spec = pod.spec
    return [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) if isinstance(c, dict)]


def _owner(pod: Doc) -> str:
    refs = pod.metadata.get("ownerReferences") or []
    if refs and refs[0].get("kind") == "ReplicaSet":
        name = str(refs[0].get("name", ""))
        return "deployment/" + name.rsplit("-", 1)[0] if "-" in name else "deployment/" + name
    if refs:
        return f"{str(refs[0].get('kind', '')).lower()}/{refs[0].get('name', '')}"
    return f"pod/{pod.name}"


def check_pods(ctx: Context, report: Report) -> None:
    namespaces = {d.name: d for d in ctx.kind("Namespace")}
    pods = ctx.kind("Pod")
    if not pods:
        return
    mesh_defaults: Any = next(
        (_get(m.config, "defaultConfig") for m in ctx.meshes if _get(m.config, "defaultConfig")), {}
    )
    for pod in pods:
        where = f"pod {pod.namespace}/{pod.name} ({pod.file})"
        ns = namespaces.get(pod.namespace)
        sidecar = next((c for c in _containers(pod) if c.get("name") == "istio-proxy"), None)
        opted_out = "false" in (
            pod.labels.get("sidecar.istio.io/inject"),
            pod.annotations.get("sidecar.istio.io/inject"),
        )
        if sidecar is None:
            if ns is None or not _injected(ns):
                continue
            restart = f"kubectl rollout restart {_owner(pod)} -n {pod.namespace}"
            if opted_out:
                report.warn(
                    "pod-opted-out",
                    f'{where}: sidecar.istio.io/inject is "false"',
                    where=where,
                    why="the pod opted out of injection: its hops are not traced",
                    fix='remove the sidecar.istio.io/inject: "false" label/annotation from the pod template',
                )
                continue
            created, labelled = _time(pod.metadata.get("creationTimestamp")), _label_time(ns)
            if created and labelled and created < labelled:
                report.fail(
                    "pod-before-label",
                    f"{where} was created before namespace {ns.name} was labelled for injection",
                    where=where,
                    why=f"injection happens only at pod creation (pod {created:%H:%M:%S}, label "
                    f"{labelled:%H:%M:%S}): no istio-proxy, no spans",
                    fix=restart,
                )
            else:
                report.fail(
                    "pod-no-sidecar",
                    f"{where} has no istio-proxy container in injected namespace {ns.name}",
                    where=where,
                    why="without the sidecar the pod's hops leave no spans",
                    fix=f"{restart}   # then check the injector: kubectl get mutatingwebhookconfiguration",
                )
            continue
        report.ok("pod-sidecar", f"{where} has istio-proxy", where)
        _check_proxy_config(report, pod, sidecar, mesh_defaults if isinstance(mesh_defaults, dict) else {}, where)
        _check_proxy_version(ctx, report, sidecar, where)


def _check_proxy_config(report: Report, pod: Doc, sidecar: dict[str, Any], mesh: dict[str, Any], where: str) -> None:
    """The sidecar's ``PROXY_CONFIG`` env is the mesh's defaultConfig at injection time."""
    if not mesh:
        return
    env = {str(e.get("name")): e.get("value") for e in sidecar.get("env") or [] if isinstance(e, dict)}
    try:
        injected = json.loads(str(env.get("PROXY_CONFIG") or "{}"))
    except ValueError:
        return
    changed = []
    for key, path in (("tracingServiceName", ("tracingServiceName",)), ("tracing.sampling", ("tracing", "sampling"))):
        want, have = _get(mesh, *path), _get(injected, *path)
        if want is not None and want != have:
            changed.append(f"{key}: {have!r} → {want!r}")
    if changed:
        report.warn(
            "proxyconfig-stale",
            f"{where} runs an older proxy config ({'; '.join(changed)})",
            where=where,
            why="ProxyConfig is fixed when the sidecar is injected: the change applies only to new pods",
            fix=f"kubectl rollout restart {_owner(pod)} -n {pod.namespace}",
        )


_PROXY_TAG = re.compile(r"proxyv2:(\d+)\.(\d+)")


def _check_proxy_version(ctx: Context, report: Report, sidecar: dict[str, Any], where: str) -> None:
    """Version quirks that change what the traces look like (istio-tracing-spec §6.10)."""
    match = _PROXY_TAG.search(str(sidecar.get("image", "")))
    if match is None:
        return
    version = (int(match.group(1)), int(match.group(2)))
    shown = f"{version[0]}.{version[1]}"
    if version < (1, 23):
        report.warn(
            "proxy-version",
            f"{where} runs istio-proxy {shown}: its OpenTelemetry spans are named ingress/egress",
            where=where,
            why="proxies before 1.23 do not name spans after the route (envoyproxy/envoy#34063): "
            "searches by the usual operation names find nothing",
            fix="upgrade Istio to 1.23 or later",
        )
    zipkin_options = [
        str(p.get("name"))
        for m in ctx.meshes
        for p in m.providers
        if isinstance(p.get("zipkin"), dict)
        and (p["zipkin"].get("traceContextOption") or p["zipkin"].get("timeout") or p["zipkin"].get("headers"))
    ]
    if zipkin_options and version < (1, 28):
        report.warn(
            "proxy-version",
            f"{where} runs istio-proxy {shown}, which ignores zipkin provider options",
            where=where,
            why=f"traceContextOption, timeout and headers of {', '.join(zipkin_options)} need proxies "
            "from 1.28 (1.29 for timeout and headers)",
            fix="upgrade Istio, or drop the options",
        )
