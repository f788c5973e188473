"""Pods of the local mesh: containers as processes, an IP of their own on the loopback range, sidecar
injection decided when the pod is created (as Istio's webhook does).

Networking: each pod gets ``127.B.x.y`` as its IP and ``127.(B+1).x.y`` as its own "localhost". Without a
sidecar the application listens on the pod IP. With one, the sidecar takes the pod IP's ports (inbound)
and ``:15001`` (outbound, the application's ``HTTP_PROXY``), and the application listens on the pod's
localhost: every pod keeps port 9080, as in Kubernetes. A container finds its addresses in
``MESHTRACE_POD_IP``, ``MESHTRACE_POD_LOCALHOST`` and ``MESHTRACE_LISTEN_HOST`` (where a server that would
bind 0.0.0.0 in Kubernetes should bind here).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshtrace.mesh.images import ImageNotRunnable, Program, expand, local_path, program_for
from meshtrace.mesh.istio import naming
from meshtrace.mesh.istio.fields import Fields
from meshtrace.mesh.istio.meshconfig import MeshConfig, ProxyConfig, parse_proxy_config
from meshtrace.mesh.resources import Obj

INJECT = "sidecar.istio.io/inject"
PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
PROXY_IMAGE = "docker.io/istio/proxyv2:1.28.0"


@dataclass(slots=True)
class Container:
    name: str
    image: str
    program: Program | None
    env: dict[str, str]
    ports: list[int]
    is_proxy: bool = False
    named_ports: dict[str, int] = field(default_factory=dict)
    error: str = ""  # why it cannot run (image without a program)
    state: str = "Waiting"
    reason: str = "ContainerCreating"
    ready: bool = False
    restarts: int = 0
    pid: int | None = None
    exit_code: int | None = None
    started_at: float = 0.0
    log: Path = Path()


@dataclass(slots=True)
class Pod:
    namespace: str
    name: str
    owner: str  # the Deployment
    template_hash: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ip: str
    local_ip: str
    created: int
    injected: bool
    service_account: str
    containers: list[Container]
    directory: Path
    proxy: dict[str, Any] | None = None  # the proxy's bootstrap (node identity, ProxyConfig)
    router: bool = False  # an ingress gateway pod
    deleting: bool = False
    phase: str = "Pending"
    created_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ready(self) -> bool:
        return not self.deleting and bool(self.containers) and all(c.ready for c in self.containers)

    @property
    def has_proxy(self) -> bool:
        return self.proxy is not None

    @property
    def status(self) -> str:
        if self.deleting:
            return "Terminating"
        for container in self.containers:
            if container.error:
                return "ErrImageNeverPull"
            if container.reason == "CrashLoopBackOff":
                return "CrashLoopBackOff"
        if all(c.state == "Running" for c in self.containers):
            return "Running"
        return "ContainerCreating" if self.phase == "Pending" else self.phase


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 20, 2))


def pod_name(deployment: str, hash_: str) -> str:
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))  # noqa: S311 - a name
    return f"{deployment}-{hash_}-{suffix}"


def should_inject(namespace: Obj | None, labels: dict[str, str], annotations: dict[str, str]) -> bool:
    """Istio's webhook selectors: the namespace label (or a revision), unless the pod opts out."""
    ns_labels = namespace.labels if namespace is not None else {}
    pod_choice = labels.get(INJECT, annotations.get(INJECT, "")).lower()
    if pod_choice == "false":
        return False
    if ns_labels.get("istio-injection") == "disabled":
        return False
    if ns_labels.get("istio-injection") == "enabled" or "istio.io/rev" in ns_labels:
        return True
    return pod_choice == "true"


def proxy_config_for(mesh: MeshConfig, annotations: dict[str, str]) -> ProxyConfig:
    """``meshConfig.defaultConfig``, overridden field by field by ``proxy.istio.io/config``."""
    base = mesh.default_config
    raw = annotations.get(PROXY_CONFIG_ANNOTATION)
    if not raw:
        return base
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError:
        return base
    override = parse_proxy_config(Fields(data, "proxy.istio.io/config", None, "pod annotation"))
    fields = Fields(data, "", None, "")
    sampling = override.sampling if fields.sub("tracing").has("sampling") else base.sampling
    return ProxyConfig(
        tracing_service_name=override.tracing_service_name
        if fields.has("tracingServiceName")
        else base.tracing_service_name,
        service_cluster=override.service_cluster or base.service_cluster,
        sampling=sampling,
        custom_tags=override.custom_tags or base.custom_tags,
        proxy_metadata=base.proxy_metadata + override.proxy_metadata,
        max_path_tag_length=override.max_path_tag_length or base.max_path_tag_length,
    )


def bootstrap(pod: Pod, mesh: MeshConfig, kind: str) -> dict[str, Any]:
    """What Istio fixes in the proxy at pod creation: identity, service name, ProxyConfig."""
    config = proxy_config_for(mesh, pod.annotations)
    service = naming.service_cluster(
        config.tracing_service_name, config.service_cluster, pod.labels, pod.owner, pod.namespace
    )
    env = {
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
        "INSTANCE_IP": pod.ip,
        "SERVICE_ACCOUNT": pod.service_account,
        "ISTIO_META_WORKLOAD_NAME": pod.owner,
        "ISTIO_META_MESH_ID": mesh.mesh_id,
        "ISTIO_META_CLUSTER_ID": mesh.cluster_id,
        **dict(config.proxy_metadata),
    }
    return {
        "node": {
            "id": naming.node_id(kind, pod.ip, pod.name, pod.namespace),
            "kind": kind,
            "pod": pod.name,
            "namespace": pod.namespace,
            "pod_ip": pod.ip,
            "service_cluster": service,
            "canonical_service": naming.canonical_name(pod.labels, pod.owner),
            "canonical_revision": naming.canonical_revision(pod.labels),
            "mesh_id": mesh.mesh_id,
            "cluster_id": mesh.cluster_id,
            "env": env,
            "sampling": config.sampling,
        },
        "custom_tags": [list(t) for t in config.custom_tags],
        "max_path_tag_length": config.max_path_tag_length,
        "tracing_service_name": config.tracing_service_name,
    }


def _env(container: dict[str, Any], pod: Pod, configmaps: dict[tuple[str, str], Obj]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if "value" in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item.get("valueFrom") or {}
        field_ref = (source.get("fieldRef") or {}).get("fieldPath")
        if field_ref:
            env[name] = _field_ref(str(field_ref), pod)
        ref = source.get("configMapKeyRef")
        if ref:
            cm = configmaps.get((pod.namespace, str(ref.get("name"))))
            value = ((cm.body.get("data") or {}) if cm else {}).get(ref.get("key"))
            if value is not None:
                env[name] = str(value)
    return env


def _field_ref(path: str, pod: Pod) -> str:
    if path == "metadata.name":
        return pod.name
    if path == "metadata.namespace":
        return pod.namespace
    if path in ("status.podIP", "status.podIPs"):
        return pod.ip
    if path == "spec.serviceAccountName":
        return pod.service_account
    if path in ("spec.nodeName", "status.hostIP"):
        return "meshtrace-node"
    if path.startswith("metadata.labels['"):
        return pod.labels.get(path[len("metadata.labels['") : -2], "")
    if path.startswith("metadata.annotations['"):
        return pod.annotations.get(path[len("metadata.annotations['") : -2], "")
    return ""


def _volumes(spec: dict[str, Any], pod: Pod, configmaps: dict[tuple[str, str], Obj]) -> dict[str, Path]:
    """Materialize ConfigMap and emptyDir volumes as directories; ``{volume name: directory}``."""
    out = {}
    for volume in spec.get("volumes") or []:
        name = str(volume.get("name"))
        directory = pod.directory / "volumes" / name
        directory.mkdir(parents=True, exist_ok=True)
        source = volume.get("configMap")
        if source:
            cm = configmaps.get((pod.namespace, str(source.get("name"))))
            data = (cm.body.get("data") or {}) if cm else {}
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                key = item.get("key")
                if key in data:
                    target = directory / str(item.get("path", key))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(str(data[key]))
        out[name] = directory
    return out


def build_containers(
    spec: dict[str, Any], pod: Pod, configmaps: dict[tuple[str, str], Obj], proxy_url: str, node_proxy: str
) -> list[Container]:
    """The pod's containers with their local programs, environments and log files."""
    volumes = _volumes(spec, pod, configmaps)
    raw_containers = list(spec.get("containers") or [])
    containers = []
    for raw in raw_containers:
        name = str(raw.get("name", "app"))
        env = _env(raw, pod, configmaps)
        mounts = {
            str(m.get("mountPath")): str(volumes[m["name"]])
            for m in raw.get("volumeMounts") or []
            if m.get("name") in volumes
        }
        listen = pod.local_ip if pod.injected else pod.ip
        env.update(
            {
                "HOSTNAME": pod.name,
                "MESHTRACE_POD_IP": pod.ip,
                "MESHTRACE_POD_LOCALHOST": pod.local_ip,
                "MESHTRACE_LISTEN_HOST": listen,
                "MESHTRACE_POD_NAME": pod.name,
                "MESHTRACE_POD_NAMESPACE": pod.namespace,
            }
        )
        for key, value in list(env.items()):
            env[key] = local_path(value, mounts) if value.startswith("/") else value
        proxy = proxy_url if pod.injected else node_proxy
        if proxy and not pod.router:
            env.update({"HTTP_PROXY": proxy, "http_proxy": proxy})
            env["NO_PROXY"] = env["no_proxy"] = f"localhost,127.0.0.1,{pod.local_ip}"
        ports = [int(p["containerPort"]) for p in raw.get("ports") or [] if "containerPort" in p]
        container = Container(name, str(raw.get("image", "")), None, env, ports, log=pod.directory / f"{name}.log")
        container.named_ports = {
            str(p["name"]): int(p["containerPort"]) for p in raw.get("ports") or [] if p.get("name")
        }
        try:
            container.program = program_for(
                container.image,
                name,
                [str(a) for a in raw.get("command") or []],
                [str(a) for a in raw.get("args") or []],
                pod.annotations,
                env,
                mounts,
                single=len(raw_containers) == 1,
            )
        except ImageNotRunnable as exc:
            container.error = str(exc)
            container.reason = "ErrImageNeverPull"
        if container.program is not None and container.program.kind == "proxy":
            container.is_proxy = True
        containers.append(container)
    return containers


def proxy_container(pod: Pod) -> Container:
    """The injected ``istio-proxy`` container."""
    env = {"MESHTRACE_POD_IP": pod.ip, "MESHTRACE_POD_LOCALHOST": pod.local_ip, "POD_NAME": pod.name}
    config = str(pod.directory / "proxy.json")
    program = Program((*program_for(PROXY_IMAGE, "istio-proxy", [], [], {}, env, {}, True).argv, config), "proxy")
    return Container(
        "istio-proxy", PROXY_IMAGE, program, env, [15000, 15001], is_proxy=True, log=pod.directory / "istio-proxy.log"
    )
