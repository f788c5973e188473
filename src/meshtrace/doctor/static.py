"""The static checks of Istio's side: the mesh config, Telemetry, the provider's Service and Sidecar scopes, as
files, against the causes of "no traces" the reference lists (istio-tracing-spec §6); the Collector's side is
``collectors``. Also where both read their inputs from (``context``).

Each check adds findings to the report; none raises on bad input (a config istiod or the Collector would
reject is itself a finding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshtrace.doctor.findings import Report
from meshtrace.doctor.inputs import Doc
from meshtrace.mesh.istio.fields import snake

ROOT_NAMESPACE = "istio-system"
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


@dataclass(slots=True)
class Mesh:
    """One mesh config found: an IstioOperator's ``spec.meshConfig`` or the ``istio`` ConfigMap's ``mesh``."""

    doc: Doc
    config: dict[str, Any]
    prefix: str  # the path of meshConfig inside the document

    def at(self, path: str) -> str:
        return self.doc.at(f"{self.prefix}.{path}" if path else self.prefix)

    @property
    def providers(self) -> list[dict[str, Any]]:
        raw = self.config.get("extensionProviders") or []
        return [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []

    def provider(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """Telemetry looks names up case-insensitively (``strings.EqualFold``)."""
        for i, p in enumerate(self.providers):
            if str(p.get("name", "")).lower() == name.lower():
                return i, p
        return None

    @property
    def default_tracing(self) -> list[str]:
        defaults = self.config.get("defaultProviders") or {}
        tracing = defaults.get("tracing") if isinstance(defaults, dict) else None
        return [str(n) for n in tracing] if isinstance(tracing, list) else []


@dataclass(slots=True)
class Collector:
    doc: Doc
    key: str
    config: dict[str, Any]

    def at(self, path: str) -> str:
        return self.doc.at(f"data.{self.key} → {path}" if path else f"data.{self.key}")


@dataclass(slots=True)
class Context:
    docs: list[Doc]
    placeholders: dict[str, str] = field(default_factory=dict)
    meshes: list[Mesh] = field(default_factory=list)
    collectors: list[Collector] = field(default_factory=list)

    def kind(self, *kinds: str) -> list[Doc]:
        return [d for d in self.docs if d.kind in kinds]


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key, data.get(snake(key)))
    return data


def context(docs: list[Doc], placeholders: dict[str, str] | None = None) -> Context:
    ctx = Context(docs, dict(placeholders or {}))
    for doc in ctx.kind("IstioOperator"):
        ctx.meshes.append(Mesh(doc, _get(doc.body, "spec", "meshConfig") or {}, "spec.meshConfig"))
    for doc in ctx.kind("ConfigMap"):
        raw = doc.body.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        istio = doc.name == "istio" or (doc.name.startswith("istio-") and doc.namespace == ROOT_NAMESPACE)
        if istio and "mesh" in data:
            try:
                mesh = yaml.safe_load(str(data["mesh"])) or {}
            except yaml.YAMLError:
                mesh = {}
            ctx.meshes.append(Mesh(doc, mesh if isinstance(mesh, dict) else {}, "data.mesh"))
            continue
        for key, value in data.items():
            try:
                parsed = yaml.safe_load(str(value)) if isinstance(value, str) else None
            except yaml.YAMLError:
                continue
            if isinstance(parsed, dict) and "receivers" in parsed and "service" in parsed:
                ctx.collectors.append(Collector(doc, str(key), parsed))
    return ctx


def _fill(text: str, ctx: Context) -> str:
    for placeholder, value in ctx.placeholders.items():
        text = text.replace(placeholder, value)
    return text


# -- Istio ----------------------------------------------------------------------------------------


def check_mesh(ctx: Context, report: Report) -> None:
    from meshtrace.mesh.istio.fields import Fields
    from meshtrace.mesh.istio.meshconfig import parse_mesh
    from meshtrace.mesh.resources import ResourceError, Source

    if not ctx.meshes:
        report.warn(
            "mesh-config-missing",
            "no IstioOperator or istio ConfigMap given: provider checks skipped",
            why="the extension providers live in the mesh config; without it the Telemetry cannot be checked",
            fix="kubectl get cm istio -n istio-system -o yaml > mesh.yaml   # then add -f mesh.yaml",
        )
        return
    for mesh in ctx.meshes:
        try:
            parse_mesh(Fields(mesh.config, mesh.prefix, Source(mesh.doc.file, mesh.doc.number), mesh.doc.kind))
        except ResourceError as exc:
            if not PLACEHOLDER.search(str(exc)):
                report.fail(
                    "mesh-config-invalid",
                    f"istiod rejects the mesh config: {exc.message}",
                    where=mesh.doc.at(exc.path),
                    why="an invalid meshConfig is not applied at all",
                    fix=exc.fix,
                )
        if not mesh.providers:
            report.fail(
                "extension-providers-missing",
                "the mesh config has no extensionProviders",
                where=mesh.at("extensionProviders"),
                why="no tracer can be configured without a provider",
                fix="meshConfig:\n  extensionProviders:\n  - name: otel-tracing\n    opentelemetry:\n"
                "      service: opentelemetry-collector.observability.svc.cluster.local\n      port: 4317",
            )
            continue
        names = ", ".join(str(p.get("name")) for p in mesh.providers)
        report.ok("extension-providers", f"extensionProviders: {names}", mesh.at("extensionProviders"))
        for i, provider in enumerate(mesh.providers):
            _check_provider(ctx, report, mesh, i, provider)


def _check_provider(ctx: Context, report: Report, mesh: Mesh, i: int, provider: dict[str, Any]) -> None:
    path = f"extensionProviders[{i}]"
    otel, zipkin = provider.get("opentelemetry"), provider.get("zipkin")
    body = otel if isinstance(otel, dict) else zipkin if isinstance(zipkin, dict) else None
    if body is None:
        return
    kind = "opentelemetry" if body is otel else "zipkin"
    service = _fill(str(body.get("service") or ""), ctx)
    if PLACEHOLDER.search(service):
        report.fail(
            "provider-placeholder",
            f"provider {provider.get('name')!r}: service is still a placeholder ({service})",
            where=mesh.at(f"{path}.{kind}.service"),
            why="istiod cannot find that service: no tracer is configured",
            fix=f"{kind}:\n  service: opentelemetry-collector.observability.svc.cluster.local",
        )
        return
    port = body.get("port")
    http = body.get("http")
    if kind == "opentelemetry":
        if port == 4317 and http is not None:
            report.fail(
                "provider-protocol",
                f"provider {provider.get('name')!r}: an 'http' block on port 4317",
                where=mesh.at(f"{path}.opentelemetry.http"),
                why="with 'http' Envoy sends OTLP/HTTP, but 4317 is the Collector's gRPC port",
                fix="opentelemetry:\n  port: 4318\n  http:\n    path: /v1/traces",
            )
        elif port == 4318 and http is None:
            report.fail(
                "provider-protocol",
                f"provider {provider.get('name')!r}: port 4318 without an 'http' block",
                where=mesh.at(f"{path}.opentelemetry.port"),
                why="without 'http' Envoy speaks OTLP/gRPC, but 4318 is the Collector's OTLP/HTTP port",
                fix="opentelemetry:\n  port: 4317      # or keep 4318 and add:  http: {path: /v1/traces}",
            )
        elif isinstance(http, dict) and str(http.get("path", "")).strip("/") not in ("v1/traces",):
            report.warn(
                "provider-http-path",
                f"provider {provider.get('name')!r}: http.path is {http.get('path')!r}",
                where=mesh.at(f"{path}.opentelemetry.http.path"),
                why="the Collector's OTLP/HTTP receiver serves traces on /v1/traces",
                fix="http:\n  path: /v1/traces",
            )
    _check_service(ctx, report, mesh, path, kind, str(provider.get("name")), service, port, http is not None)


def _check_service(
    ctx: Context, report: Report, mesh: Mesh, path: str, kind: str, name: str, service: str, port: Any, http: bool
) -> None:
    services = ctx.kind("Service")
    if not services:
        return
    where = mesh.at(f"{path}.{kind}.service")
    if "/" in service:
        namespace, host = service.split("/", 1)
        short = host.split(".")[0]
        matches = [s for s in services if s.name == short and s.namespace == namespace]
    else:
        labels = service.split(".")
        short = labels[0]
        if len(labels) >= 2 and ".svc." in f"{service}.":
            matches = [s for s in services if s.name == short and s.namespace == labels[1]]
        else:
            matches = [s for s in services if s.name == short]
            if len({s.namespace for s in matches}) > 1:
                spaces = ", ".join(sorted({s.namespace for s in matches}))
                report.fail(
                    "provider-service-ambiguous",
                    f"provider {name!r}: service {service!r} exists in {spaces}",
                    where=where,
                    why="istiod: 'found in multiple namespaces'; the provider is not configured",
                    fix=f"service: {matches[0].namespace}/{service}   # or the full name.namespace.svc.cluster.local",
                )
                return
    if not matches:
        known = ", ".join(sorted(f"{s.name}.{s.namespace}" for s in services))
        report.fail(
            "provider-service-missing",
            f"provider {name!r}: no Service {service!r} among the files",
            where=where,
            why="istiod logs 'could not find service … in Istio service registry': no tracing",
            fix=f"point 'service' at the Collector's Service (<name>.<namespace>.svc.cluster.local); given: {known}",
        )
        return
    svc = matches[0]
    ports = [p for p in svc.spec.get("ports") or [] if isinstance(p, dict)]
    match = next((p for p in ports if p.get("port") == port), None)
    if match is None:
        have = ", ".join(str(p.get("port")) for p in ports)
        report.fail(
            "provider-port-missing",
            f"provider {name!r}: Service {svc.name} has no port {port}",
            where=where,
            why="Envoy's cluster for the collector would have no endpoints on that port",
            fix=f"use one of the Service's ports ({have}) or add port {port} to it",
        )
        return
    if kind == "opentelemetry" and not http:
        port_name = str(match.get("name") or "")
        if not (port_name.startswith("grpc") or match.get("appProtocol") == "grpc"):
            report.warn(
                "collector-port-name",
                f"Service {svc.name} port {port} is named {port_name or '(no name)'!r}",
                where=svc.at(f"spec.ports[{ports.index(match)}].name"),
                why="Istio treats an unnamed or non-grpc port as TCP/HTTP1; OTLP/gRPC needs HTTP/2",
                fix=f"- name: grpc-otlp\n  port: {port}\n  appProtocol: grpc",
            )
            return
    report.ok("provider-service", f"provider {name!r} → Service {svc.namespace}/{svc.name} port {port}", where)


def check_telemetry(ctx: Context, report: Report) -> None:
    telemetries = ctx.kind("Telemetry")
    tracing_on = False
    for mesh in ctx.meshes:
        defaults = mesh.default_tracing
        if defaults:
            tracing_on = True
            if mesh.provider(defaults[0]) is None:
                report.fail(
                    "provider-name",
                    f"defaultProviders.tracing names {defaults[0]!r}, no extension provider",
                    where=mesh.at("defaultProviders.tracing[0]"),
                    why="the default tracing provider is nil: no spans",
                    fix=f"defaultProviders:\n  tracing: [{_first_name(mesh)}]",
                )
    for doc in telemetries:
        rules = doc.spec.get("tracing")
        if not isinstance(rules, list):
            continue
        if doc.namespace != ROOT_NAMESPACE and not doc.spec.get("selector") and not doc.spec.get("targetRefs"):
            report.warn(
                "telemetry-scope",
                f"Telemetry {doc.name} applies to namespace {doc.namespace} only",
                where=doc.at("metadata.namespace"),
                why="the ingress gateway (istio-system) and other namespaces get no spans from it",
                fix=f"kubectl apply -n {ROOT_NAMESPACE} -f <this file>   # mesh-wide, as Istio recommends",
            )
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            _check_rule(ctx, report, doc, i, rule)
            if rule.get("providers"):
                tracing_on = True
    if not tracing_on:
        report.fail(
            "tracing-off",
            "no Telemetry tracing provider and no defaultProviders.tracing",
            why="Istio then configures no tracer (and since 1.22 no bootstrap tracer exists): tracing is silently off",
            fix="apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
            "metadata: {name: mesh-default, namespace: istio-system}\n"
            "spec:\n  tracing:\n  - providers: [{name: otel-tracing}]\n    randomSamplingPercentage: 100",
        )
    elif not report.of("tracing-off"):
        report.ok("tracing-on", "tracing has a provider (Telemetry or defaultProviders)")


def _first_name(mesh: Mesh) -> str:
    return str(mesh.providers[0].get("name")) if mesh.providers else "otel-tracing"


def _check_rule(ctx: Context, report: Report, doc: Doc, i: int, rule: dict[str, Any]) -> None:
    path = f"spec.tracing[{i}]"
    for j, provider in enumerate(rule.get("providers") or []):
        name = str(provider.get("name", "")) if isinstance(provider, dict) else ""
        for mesh in ctx.meshes:
            found = mesh.provider(name)
            if found is None:
                names = ", ".join(str(p.get("name")) for p in mesh.providers) or "none"
                report.fail(
                    "provider-name",
                    f"Telemetry {doc.name} names provider {name!r}, which the mesh does not define",
                    where=doc.at(f"{path}.providers[{j}].name"),
                    why="a provider name that matches no extensionProvider disables tracing, silently",
                    fix=f"providers:\n- name: {mesh.providers[0].get('name') if mesh.providers else name}"
                    f"   # extensionProviders: {names}",
                )
            elif found[1].get("name") != name:
                report.ok(
                    "provider-name",
                    f"Telemetry {doc.name}: provider {name!r} matches "
                    f"{found[1].get('name')!r} (Istio compares names case-insensitively)",
                    doc.at(f"{path}.providers[{j}].name"),
                )
            else:
                report.ok("provider-name", f"Telemetry {doc.name} → provider {name!r}")
    sampling = rule.get("randomSamplingPercentage")
    mesh_sampling = [_get(m.config, "defaultConfig", "tracing", "sampling") for m in ctx.meshes]
    if sampling is None and not any(mesh_sampling):
        report.warn(
            "sampling-default",
            f"Telemetry {doc.name}: no randomSamplingPercentage (the mesh default is 1%)",
            where=doc.at(path),
            why="99 of 100 requests leave no trace: a few test requests often show nothing",
            fix="randomSamplingPercentage: 100",
        )
    elif sampling is not None and float(sampling) == 0:
        report.fail(
            "sampling-zero",
            f"Telemetry {doc.name}: randomSamplingPercentage is 0",
            where=doc.at(f"{path}.randomSamplingPercentage"),
            why="no request is sampled",
            fix="randomSamplingPercentage: 100",
        )
    if rule.get("disableSpanReporting") is True:
        report.fail(
            "span-reporting-disabled",
            f"Telemetry {doc.name}: disableSpanReporting is true",
            where=doc.at(f"{path}.disableSpanReporting"),
            why="spans are created but never sent",
            fix="disableSpanReporting: false",
        )
    mode = _get(rule, "match", "mode")
    if mode in ("CLIENT", "SERVER"):
        other = "server" if mode == "CLIENT" else "client"
        report.warn(
            "match-mode",
            f"Telemetry {doc.name}: match.mode {mode} leaves {other} spans out",
            where=doc.at(f"{path}.match.mode"),
            why=f"only {mode.lower()} sides report: each hop shows one span, and gateways use the client side",
            fix="match:\n  mode: CLIENT_AND_SERVER",
        )


def _host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def check_sidecar_scopes(ctx: Context, report: Report) -> None:
    """A Sidecar resource's egress hosts must include the provider's service, or the proxies it governs have
    no cluster for the Collector (istiod logs ``cluster … is not configured``, istio/istio#53701)."""
    targets = []
    for mesh in ctx.meshes:
        for provider in mesh.providers:
            body = provider.get("opentelemetry") or provider.get("zipkin")
            if isinstance(body, dict) and body.get("service"):
                service = _fill(str(body["service"]), ctx)
                namespace, _, host = service.rpartition("/")
                if not namespace:
                    labels = host.split(".")
                    namespace = labels[1] if len(labels) > 1 else ""
                targets.append((str(provider.get("name")), namespace, host))
    for doc in ctx.kind("Sidecar"):
        for name, namespace, host in targets:
            hosts = [str(h) for e in doc.spec.get("egress") or [] if isinstance(e, dict) for h in e.get("hosts") or []]
            if not hosts:
                continue
            allowed = False
            for entry in hosts:
                ns, _, pattern = entry.partition("/")
                ns = doc.namespace if ns == "." else ns
                if ns != "~" and (ns in ("*", namespace)) and _host_matches(pattern, host):
                    allowed = True
            scope = "every namespace's default" if doc.namespace == ROOT_NAMESPACE else f"namespace {doc.namespace}"
            if not allowed:
                report.fail(
                    "sidecar-egress",
                    f"Sidecar {doc.name} ({scope}) leaves provider {name!r}'s service {host} out of its egress hosts",
                    where=doc.at("spec.egress[0].hosts"),
                    why="its proxies get no cluster for the Collector: spans cannot be exported",
                    fix=f'egress:\n- hosts:\n  - "./*"\n  - "{namespace}/{host}"',
                )
