"""The local mesh's API server and controllers: objects as applied, Deployments turned into pods, Istio's
installation (mesh config, the ingress gateway) from an IstioOperator.

Everything here is plain state changed under one event loop; the supervisor runs what it describes and
the control plane derives each proxy's configuration from it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshtrace.mesh import pods as podlib
from meshtrace.mesh.istio.meshconfig import MeshConfig, from_istio_operator
from meshtrace.mesh.istio.routing import Gateway, VirtualService, parse_gateway, parse_virtual_service
from meshtrace.mesh.istio.telemetry import Telemetry, parse_telemetry
from meshtrace.mesh.resources import Obj, ResourceError, Selector

log = logging.getLogger("meshtrace.mesh")

ISTIO_NAMESPACE = "istio-system"
GATEWAY_NAME = "istio-ingressgateway"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
INITIAL_NAMESPACES = ("default", ISTIO_NAMESPACE)


@dataclass(slots=True)
class Applied:
    """What one apply did, for the caller to print."""

    results: list[str] = field(default_factory=list)  # "deployment.apps/details-v1 created"
    warnings: list[str] = field(default_factory=list)


def _plural(kind: str) -> str:
    group = {
        "Deployment": ".apps",
        "Telemetry": ".telemetry.istio.io",
        "Gateway": ".networking.istio.io",
        "VirtualService": ".networking.istio.io",
        "IstioOperator": ".install.istio.io",
    }.get(kind, "")
    return f"{kind.lower()}{group}"


class Cluster:
    def __init__(self, directory: Path, ip_block: int) -> None:
        self.directory = directory
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.pods: dict[tuple[str, str], podlib.Pod] = {}
        self.mesh = MeshConfig()
        self.telemetries: dict[tuple[str, str], Telemetry] = {}
        self.gateways: dict[tuple[str, str], Gateway] = {}
        self.virtual_services: dict[tuple[str, str], VirtualService] = {}
        self._seq = itertools.count(1)
        self._ips = itertools.count(2)
        self.block = ip_block
        self.placeholders: dict[str, str] = {}  # "<gRPC-Endpoint>" -> value, filled in ConfigMaps
        self.proxy_url_for: Callable[[podlib.Pod], str] = lambda pod: f"http://{pod.ip}:15001"
        self.node_proxy_for: Callable[[str], str] = lambda namespace: ""
        self.on_change: Callable[[], None] = lambda: None
        for name in INITIAL_NAMESPACES:
            self._store(Obj({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        self.install_istio(None)

    # -- objects ------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get((kind, namespace, name))

    def objects_of(self, kind: str, namespace: str | None = None) -> list[Obj]:
        return sorted(
            (o for (k, ns, _), o in self.objects.items() if k == kind and (namespace is None or ns == namespace)),
            key=lambda o: (o.namespace, o.name),
        )

    def _store(self, obj: Obj) -> str:
        existing = self.objects.get(obj.key)
        if existing is None:
            obj.created = next(self._seq)
            obj.uid = f"{obj.created:08d}"
            obj.metadata["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.objects[obj.key] = obj
            return "created"
        comparable = {k: v for k, v in obj.body.items() if k != "metadata"}
        before = {k: v for k, v in existing.body.items() if k != "metadata"}
        same_meta = all(existing.metadata.get(k) == obj.metadata.get(k) for k in ("labels", "annotations"))
        if comparable == before and same_meta:
            return "unchanged"
        obj.created = existing.created
        obj.uid = existing.uid
        obj.generation = existing.generation + 1
        obj.metadata["creationTimestamp"] = existing.metadata.get("creationTimestamp")
        self.objects[obj.key] = obj
        return "configured"

    def apply(self, objects: list[Obj]) -> Applied:
        """Validate everything first, then store: a bad document leaves the mesh unchanged."""
        applied = Applied()
        parsed: list[tuple[Obj, Any]] = []
        for obj in objects:
            if obj.namespace and obj.kind != "Namespace" and not self.get("Namespace", "", obj.namespace):
                pending = any(o.kind == "Namespace" and o.name == obj.namespace for o in objects)
                if not pending:
                    raise ResourceError(
                        obj.source,
                        obj.describe(),
                        "metadata.namespace",
                        f'namespaces "{obj.namespace}" not found',
                        f"create it first: meshtrace create namespace {obj.namespace}",
                    )
            parsed.append((obj, self._validate(obj)))
        for obj, value in parsed:
            self._fill_placeholders(obj, applied)
            action = self._store(obj)
            if obj.kind == "IstioOperator":
                self.install_istio(value)
                applied.results.append(f"istiooperator.install.istio.io/{obj.name} {action} (Istio installed)")
                continue
            self._index(obj, value)
            if value is not None and getattr(value, "warnings", None):
                applied.warnings += [f"{obj.describe()}: {w}" for w in value.warnings]
            applied.results.append(f"{_plural(obj.kind)}/{obj.name} {action}")
        self.reconcile()
        return applied

    def _validate(self, obj: Obj) -> Any:
        if obj.kind == "IstioOperator":
            return from_istio_operator(obj)
        if obj.kind == "Telemetry":
            return parse_telemetry(obj)
        if obj.kind == "Gateway":
            return parse_gateway(obj)
        if obj.kind == "VirtualService":
            return parse_virtual_service(obj)
        if obj.kind == "Deployment":
            _check_deployment(obj)
        if obj.kind == "Service":
            _check_service(obj)
        return None

    def _index(self, obj: Obj, value: Any) -> None:
        key = (obj.namespace, obj.name)
        stored = self.objects[obj.key]
        if obj.kind == "Telemetry":
            self.telemetries[key] = parse_telemetry(stored)
        elif obj.kind == "Gateway":
            self.gateways[key] = value
        elif obj.kind == "VirtualService":
            self.virtual_services[key] = parse_virtual_service(stored)

    def _fill_placeholders(self, obj: Obj, applied: Applied) -> None:
        if obj.kind != "ConfigMap" or not self.placeholders:
            return
        data = obj.body.get("data") or {}
        for key, value in list(data.items()):
            text = str(value)
            for placeholder, replacement in self.placeholders.items():
                if placeholder in text:
                    text = text.replace(placeholder, replacement)
                    applied.warnings.append(
                        f"{obj.describe()}: filled {placeholder} in data.{key} with the local backend's value"
                    )
            data[key] = text

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is None:
            return False
        self.telemetries.pop((namespace, name), None) if kind == "Telemetry" else None
        self.gateways.pop((namespace, name), None) if kind == "Gateway" else None
        self.virtual_services.pop((namespace, name), None) if kind == "VirtualService" else None
        self.reconcile()
        return True

    def label(self, kind: str, namespace: str, name: str, changes: dict[str, str | None]) -> str:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise ResourceError(None, "", "", f'{kind.lower()}s "{name}" not found', "check the name")
        labels = dict(obj.metadata.get("labels") or {})
        for key, value in changes.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        if labels == (obj.metadata.get("labels") or {}):
            return f"{kind.lower()}/{name} not labeled"
        obj.metadata["labels"] = labels
        if kind == "Telemetry":
            self.telemetries[(namespace, name)] = parse_telemetry(obj)
        self.reconcile()
        return f"{kind.lower()}/{name} labeled"

    def restart(self, namespace: str, deployment: str) -> str:
        obj = self.get("Deployment", namespace, deployment)
        if obj is None:
            raise ResourceError(None, "", "", f'deployments.apps "{deployment}" not found', "check the name and -n")
        template = obj.spec.setdefault("template", {})
        annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[RESTARTED_AT] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"#{next(self._seq)}"
        obj.generation += 1
        self.reconcile()
        return f"deployment.apps/{deployment} restarted"

    # -- Istio installation -------------------------------------------------------------------

    def install_istio(self, mesh: MeshConfig | None) -> None:
        """``istioctl install``: the mesh config in ConfigMap ``istio`` and the ingress gateway."""
        if mesh is not None:
            self.mesh = mesh
        mesh_yaml = yaml.safe_dump(self.mesh.as_yaml_dict(), sort_keys=False)
        self._store(
            Obj(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "istio", "namespace": ISTIO_NAMESPACE, "labels": {"istio.io/rev": "default"}},
                    "data": {"mesh": mesh_yaml},
                }
            )
        )
        labels = {"app": GATEWAY_NAME, "istio": "ingressgateway"}
        if self.get("Deployment", ISTIO_NAMESPACE, GATEWAY_NAME) is None:
            self._store(
                Obj(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": GATEWAY_NAME, "namespace": ISTIO_NAMESPACE, "labels": dict(labels)},
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": dict(labels)},
                            "template": {
                                "metadata": {"labels": {**labels, podlib.INJECT: "false"}},
                                "spec": {
                                    "containers": [
                                        {
                                            "name": "istio-proxy",
                                            "image": podlib.PROXY_IMAGE,
                                            "args": ["proxy", "router"],
                                            "ports": [
                                                {"containerPort": 8080},
                                                {"containerPort": 8443},
                                                {"containerPort": 15021},
                                            ],
                                        }
                                    ]
                                },
                            },
                        },
                    }
                )
            )
            self._store(
                Obj(
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": GATEWAY_NAME, "namespace": ISTIO_NAMESPACE, "labels": dict(labels)},
                        "spec": {
                            "type": "LoadBalancer",
                            "selector": dict(labels),
                            "ports": [
                                {"name": "status-port", "port": 15021, "targetPort": 15021},
                                {"name": "http2", "port": 80, "targetPort": 8080},
                                {"name": "https", "port": 443, "targetPort": 8443},
                            ],
                        },
                    }
                )
            )

    # -- controllers --------------------------------------------------------------------------

    def reconcile(self) -> None:
        self.reconcile_quiet()
        self.on_change()

    def reconcile_quiet(self) -> None:
        """Deployments → pods (new template: new pods first, old ones go once the new are ready)."""
        for deployment in self.objects_of("Deployment"):
            self._reconcile_deployment(deployment)
        owners = {(d.namespace, d.name) for d in self.objects_of("Deployment")}
        for pod in list(self.pods.values()):
            if (pod.namespace, pod.owner) not in owners and not pod.deleting:
                pod.deleting = True

    def _reconcile_deployment(self, deployment: Obj) -> None:
        spec = deployment.spec
        template = spec.get("template") or {}
        replicas = int(spec.get("replicas", 1))
        current_hash = podlib.template_hash(template)
        mine = [
            p
            for p in self.pods.values()
            if p.namespace == deployment.namespace and p.owner == deployment.name and not p.deleting
        ]
        new = [p for p in mine if p.template_hash == current_hash]
        old = [p for p in mine if p.template_hash != current_hash]
        for _ in range(replicas - len(new)):
            new.append(self._create_pod(deployment, template, current_hash))
        for extra in new[replicas:]:
            extra.deleting = True
        if old and all(p.ready for p in new[:replicas]):
            for pod in old:
                pod.deleting = True

    def next_ip(self) -> tuple[str, str]:
        n = next(self._ips)
        return f"127.{self.block}.{n // 250}.{n % 250 + 1}", f"127.{self.block + 1}.{n // 250}.{n % 250 + 1}"

    def _create_pod(self, deployment: Obj, template: dict[str, Any], hash_: str) -> podlib.Pod:
        metadata = template.get("metadata") or {}
        labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
        annotations = {str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()}
        pod_spec = copy.deepcopy(template.get("spec") or {})
        namespace = deployment.namespace
        router = deployment.namespace == ISTIO_NAMESPACE and deployment.name == GATEWAY_NAME
        injected = not router and podlib.should_inject(self.get("Namespace", "", namespace), labels, annotations)
        ip, local_ip = self.next_ip()
        name = podlib.pod_name(deployment.name, hash_)
        pod = podlib.Pod(
            namespace=namespace,
            name=name,
            owner=deployment.name,
            template_hash=hash_,
            labels=labels,
            annotations=annotations,
            ip=ip,
            local_ip=local_ip,
            created=next(self._seq),
            injected=injected,
            service_account=str(pod_spec.get("serviceAccountName") or "default"),
            containers=[],
            directory=self.directory / "pods" / namespace / name,
            router=router,
            created_at=time.time(),
        )
        pod.directory.mkdir(parents=True, exist_ok=True)
        if injected:
            from meshtrace.mesh.istio import naming

            pod.labels.setdefault(naming.CANONICAL_NAME, naming.canonical_name(labels, deployment.name))
            pod.labels.setdefault(naming.CANONICAL_REVISION, naming.canonical_revision(labels))
            pod.labels["security.istio.io/tlsMode"] = "istio"
            pod.annotations["sidecar.istio.io/status"] = '{"containers":["istio-proxy"]}'
        configmaps = {(o.namespace, o.name): o for o in self.objects_of("ConfigMap")}
        pod.containers = podlib.build_containers(
            pod_spec, pod, configmaps, self.proxy_url_for(pod), self.node_proxy_for(namespace)
        )
        if injected or router:
            pod.proxy = podlib.bootstrap(pod, self.mesh, "router" if router else "sidecar")
        if router:
            for container in pod.containers:
                if container.program is not None and container.program.kind == "proxy":
                    container.program = podlib.Program(
                        (*container.program.argv, str(pod.directory / "proxy.json")), "proxy"
                    )
        if injected:
            pod.containers.append(podlib.proxy_container(pod))
        self.pods[pod.key] = pod
        log.info("pod %s/%s created%s", namespace, name, " with a sidecar" if injected else "")
        return pod

    def remove_pod(self, pod: podlib.Pod) -> None:
        self.pods.pop(pod.key, None)

    # -- queries ------------------------------------------------------------------------------

    def service_pods(self, service: Obj, ready_only: bool = True) -> list[podlib.Pod]:
        selector = service.spec.get("selector") or {}
        if not selector:
            return []
        matcher = Selector.from_labels({str(k): str(v) for k, v in selector.items()})
        return sorted(
            (
                p
                for p in self.pods.values()
                if p.namespace == service.namespace
                and matcher.matches(p.labels)
                and not p.deleting
                and (p.ready or not ready_only)
            ),
            key=lambda p: p.created,
        )

    def pods_in(self, namespace: str | None) -> list[podlib.Pod]:
        return sorted(
            (p for p in self.pods.values() if namespace is None or p.namespace == namespace),
            key=lambda p: (p.namespace, p.name),
        )


def _check_deployment(obj: Obj) -> None:
    spec = obj.spec
    where = obj.describe()
    selector = (spec.get("selector") or {}).get("matchLabels")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict) or not selector:
        raise ResourceError(obj.source, where, "spec.selector.matchLabels", "is required", "select the pods' labels")
    if any(labels.get(k) != v for k, v in selector.items()):
        raise ResourceError(
            obj.source,
            where,
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
            "give the pod template every label of spec.selector.matchLabels",
        )
    containers = (template.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise ResourceError(obj.source, where, "spec.template.spec.containers", "is required", "add a container")
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            raise ResourceError(
                obj.source, where, f"spec.template.spec.containers[{index}]", "needs a name and an image", ""
            )
        for port_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 1 <= number <= 65535:
                raise ResourceError(
                    obj.source,
                    where,
                    f"spec.template.spec.containers[{index}].ports[{port_index}].containerPort",
                    f"{number!r} is not a port number",
                    "use 1..65535",
                )
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise ResourceError(obj.source, where, "spec.replicas", f"{replicas!r} is not a replica count", "use 0 or more")


def _check_service(obj: Obj) -> None:
    where = obj.describe()
    ports = obj.spec.get("ports")
    if not isinstance(ports, list) or not ports:
        raise ResourceError(obj.source, where, "spec.ports", "is required", "add a port, e.g. {port: 9080, name: http}")
    for index, port in enumerate(ports):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 1 <= number <= 65535:
            raise ResourceError(
                obj.source, where, f"spec.ports[{index}].port", f"{number!r} is not a port number", "use 1..65535"
            )
