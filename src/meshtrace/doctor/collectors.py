"""Static checks of the OpenTelemetry Collector's config (the ConfigMap the Collector mounts), its image and
Service: what receives the proxies' spans and where they go."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from meshtrace.doctor.findings import Report
from meshtrace.doctor.static import PLACEHOLDER, Collector, Context, _fill, _get
from meshtrace.errors import ConfigError

_OTEL_IMAGE = re.compile(r"opentelemetry-collector(?:-contrib|-k8s)?:v?(\d+)\.(\d+)")


def _image_version(ctx: Context) -> tuple[int, int] | None:
    versions = []
    for doc in ctx.kind("Deployment", "DaemonSet", "StatefulSet", "Pod"):
        spec = _get(doc.spec, "template", "spec") if doc.kind != "Pod" else doc.spec
        for container in (spec or {}).get("containers") or []:
            match = _OTEL_IMAGE.search(str(container.get("image", "")))
            if match:
                versions.append((int(match.group(1)), int(match.group(2))))
    return min(versions) if versions else None


def _public(host: str) -> bool:
    host = host.split(":")[0].strip("[]")
    if host in ("localhost", "") or host.endswith((".svc", ".local", ".internal")) or ".svc." in host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." in host
    return not (address.is_private or address.is_loopback or address.is_link_local)


def check_collectors(ctx: Context, report: Report) -> None:
    from meshtrace.collector.config import build

    version = _image_version(ctx)
    transports = {
        "http" if _get(p, "opentelemetry", "http") is not None else "grpc"
        for m in ctx.meshes
        for p in m.providers
        if isinstance(p.get("opentelemetry"), dict)
    }
    for col in ctx.collectors:
        try:
            built = build(col.config)
        except ConfigError as exc:
            report.fail(
                "collector-config-invalid",
                f"the Collector rejects its config: {exc}",
                where=col.at(""),
                why="the Collector does not start",
                fix=getattr(exc, "fix", ""),
            )
            continue
        for warning in built.warnings:
            if "has no endpoint" in warning:
                continue  # judged below against the image version
            report.warn(
                "collector-deprecated",
                warning,
                where=col.at(".".join(warning.split(": ", 1)[0].split("::"))),
                why="deprecated: newer Collector images refuse this config",
                fix=_deprecation_fix(warning),
            )
        _check_receivers(report, col, transports, version)
        _check_exporters(ctx, report, col)
    for doc in ctx.kind("Service"):
        for i, port in enumerate(doc.spec.get("ports") or []):
            if isinstance(port, dict) and (port.get("port") == 55678 or "opencensus" in str(port.get("name", ""))):
                report.warn(
                    "collector-deprecated",
                    f"Service {doc.name} exposes OpenCensus port {port.get('port')}",
                    where=doc.at(f"spec.ports[{i}]"),
                    why="the OpenCensus receiver was removed from the Collector; nothing listens there",
                    fix="remove the port (Istio's OpenTelemetry provider uses 4317/4318)",
                )


def _deprecation_fix(warning: str) -> str:
    if "'logging' exporter" in warning:
        return "exporters:\n  debug:\n    verbosity: detailed   # and use 'debug' in the pipelines"
    if "loglevel" in warning:
        return "verbosity: detailed"
    if "health_check" in warning:
        return "extensions:\n  health_check:\n    endpoint: 0.0.0.0:13133"
    return ""


def _check_receivers(report: Report, col: Collector, transports: set[str], version: tuple[int, int] | None) -> None:
    pipelines = _get(col.config, "service", "pipelines") or {}
    traces = [p for name, p in pipelines.items() if str(name).split("/")[0] == "traces" and isinstance(p, dict)]
    receivers = {str(r) for p in traces for r in p.get("receivers") or []}
    otlp = [r for r in receivers if r.split("/")[0] == "otlp"]
    if not otlp:
        report.fail(
            "collector-otlp-receiver",
            "no otlp receiver in a traces pipeline",
            where=col.at("service.pipelines"),
            why="Istio's proxies export OTLP; nothing receives it",
            fix="receivers:\n  otlp:\n    protocols:\n      grpc:\n"
            "        endpoint: 0.0.0.0:4317\n      http:\n        endpoint: 0.0.0.0:4318",
        )
        return
    for name in otlp:
        protocols = _get(col.config, "receivers", name, "protocols") or {}
        for transport in sorted(transports):
            if transport not in protocols:
                report.fail(
                    "collector-protocol",
                    f"receiver {name} has no {transport} protocol, which the mesh provider uses",
                    where=col.at(f"receivers.{name}.protocols"),
                    why=f"the proxies' OTLP/{transport} exports are refused",
                    fix=f"protocols:\n  {transport}:\n    endpoint: 0.0.0.0:{4317 if transport == 'grpc' else 4318}",
                )
        for transport, settings in protocols.items():
            endpoint = str((settings or {}).get("endpoint") or "") if isinstance(settings, dict | type(None)) else ""
            where = col.at(f"receivers.{name}.protocols.{transport}.endpoint")
            port = 4317 if transport == "grpc" else 4318
            if endpoint.startswith(("localhost", "127.")):
                report.fail(
                    "collector-localhost",
                    f"receiver {name} {transport} listens on {endpoint}",
                    where=where,
                    why="proxies in other pods cannot reach a loopback address",
                    fix=f"endpoint: 0.0.0.0:{port}   # or ${{env:MY_POD_IP}}:{port}",
                )
            elif not endpoint and (version is None or version >= (0, 104)):
                seen = f"image {version[0]}.{version[1]}" if version else "an image of unknown version"
                report.fail(
                    "collector-localhost",
                    f"receiver {name} {transport} has no endpoint ({seen} listens on localhost)",
                    where=where,
                    why="since v0.104 the default is localhost: proxies in other pods cannot reach it",
                    fix=f"endpoint: 0.0.0.0:{port}",
                )
            elif not endpoint and version is not None:
                report.ok(
                    "collector-receiver",
                    f"receiver {name} {transport} on 0.0.0.0:{port} "
                    f"(the default of image {version[0]}.{version[1]}; set it before upgrading past 0.104)",
                    where,
                )
            else:
                report.ok("collector-receiver", f"receiver {name} {transport} on {endpoint}", where)


def _check_exporters(ctx: Context, report: Report, col: Collector) -> None:
    exporters = col.config.get("exporters") or {}
    for name, settings in exporters.items():
        base = str(name).split("/")[0]
        if base not in ("otlp", "otlphttp") or not isinstance(settings, dict):
            continue
        endpoint = _fill(str(settings.get("endpoint") or ""), ctx)
        where = col.at(f"exporters.{name}.endpoint")
        unset = not endpoint or bool(PLACEHOLDER.search(endpoint))
        if unset:
            report.fail(
                "exporter-placeholder",
                f"exporter {name}: endpoint is {endpoint or 'empty'!r}",
                where=where,
                why="the Collector cannot send anywhere: spans are dropped after retries",
                fix=f"endpoint: <your backend>:4317   # or doctor --set '{endpoint}=host:port' to check the rest",
            )
        headers = {str(k): _fill(str(v), ctx) for k, v in (settings.get("headers") or {}).items()}
        raw_tls = settings.get("tls")
        tls: dict[str, Any] = raw_tls if isinstance(raw_tls, dict) else {}
        host = re.sub(r"^[a-z]+://", "", endpoint)
        if not unset and tls.get("insecure") is True and _public(host):
            report.warn(
                "exporter-insecure",
                f"exporter {name}: tls.insecure towards public endpoint {host}",
                where=col.at(f"exporters.{name}.tls.insecure"),
                why="the token in the headers crosses the internet in clear text",
                fix="tls:\n  insecure: false",
            )
        keys = {k.lower(): v for k, v in headers.items()}
        token = keys.get("authentication") or (keys.get("authorization") or "")
        if any(PLACEHOLDER.search(v) for v in headers.values()):
            report.fail(
                "exporter-token-placeholder",
                f"exporter {name}: the token header is still a placeholder",
                where=col.at(f"exporters.{name}.headers"),
                why="the backend refuses the exports (401)",
                fix="headers:\n  Authentication: <your token>",
            )
        elif not keys.get("authentication") and not (keys.get("authorization") or "").lower().startswith("bearer "):
            named = ", ".join(headers) or "none"
            report.fail(
                "exporter-token-header",
                f"exporter {name}: no 'Authentication' or 'Authorization: Bearer' header (headers: {named})",
                where=col.at(f"exporters.{name}.headers"),
                why="the backend reads the tenant's token from one of those two headers: exports get 401",
                fix="headers:\n  Authentication: <token>",
            )
        elif token and not unset:
            report.ok("exporter", f"exporter {name} → {host} with a token header", where)
