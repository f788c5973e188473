"""Telemetry resources (``telemetry.istio.io``) and how Istio merges them into one tracing spec per side
of each proxy.

Reference: ``pilot/pkg/model/telemetry.go`` ``Tracing()`` and ``ValidateTelemetry``. The order is the root
namespace's selector-less Telemetry, then the proxy namespace's selector-less one, then selector
Telemetries of the proxy's own namespace that match it; only the oldest selector-less Telemetry of a
namespace counts. Each set field overwrites; unset fields are inherited; ``customTags`` are replaced
whole. A provider name that matches no extension provider disables tracing for that side, silently in
Istio; the local mesh says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshtrace.mesh.istio.fields import Fields
from meshtrace.mesh.istio.meshconfig import ExtensionProvider, MeshConfig, parse_custom_tag
from meshtrace.mesh.resources import Obj, Selector

ROOT_NAMESPACE = "istio-system"
MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")


@dataclass(frozen=True, slots=True)
class TracingRule:
    mode: str = "CLIENT_AND_SERVER"
    provider: str | None = None
    sampling: float | None = None
    disable_span_reporting: bool | None = None
    use_request_id: bool | None = None
    istio_tags: bool | None = None
    disable_context_propagation: bool | None = None
    custom_tags: tuple[tuple[str, str, str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class Telemetry:
    namespace: str
    name: str
    created: int
    selector: dict[str, str] | None
    target_refs: tuple[str, ...]
    rules: tuple[TracingRule, ...]
    warnings: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_telemetry(obj: Obj) -> Telemetry:
    """``ResourceError`` for what ``ValidateTelemetry`` rejects; its warnings are kept on the result."""
    spec = Fields(obj.spec, "spec", obj.source, obj.describe())
    warnings: list[str] = []
    selector = None
    if spec.has("selector"):
        labels = spec.sub("selector").get("matchLabels") or {}
        if not isinstance(labels, dict):
            raise spec.error("selector.matchLabels", "must be a mapping of label to value")
        selector = {str(k): str(v) for k, v in labels.items()}
    refs = []
    for index, ref in enumerate(spec.items("targetRefs") + ([spec.get("targetRef")] if spec.has("targetRef") else [])):
        ref_fields = Fields(ref, f"spec.targetRefs[{index}]", obj.source, obj.describe())
        refs.append(f"{ref_fields.string('kind')}/{ref_fields.string('name')}")
    if selector is not None and refs:
        raise spec.error("selector", "only one of targetRefs or selector can be set", "remove one of them")
    entries = spec.items("tracing")
    if len(entries) > 1:
        warnings.append("multiple tracing configurations are not currently supported; they are applied in order")
    rules = [
        _rule(Fields(raw, f"spec.tracing[{i}]", obj.source, obj.describe()), warnings) for i, raw in enumerate(entries)
    ]
    spec.get("metrics")
    spec.get("accessLogging")
    return Telemetry(obj.namespace, obj.name, obj.created, selector, tuple(refs), tuple(rules), tuple(warnings))


def _rule(entry: Fields, warnings: list[str]) -> TracingRule:
    mode = entry.sub("match").string("mode", "CLIENT_AND_SERVER")
    if mode not in MODES:
        raise entry.error("match.mode", f"{mode!r} is not a workload mode", f"use one of {', '.join(MODES)}")
    provider = None
    providers = entry.items("providers")
    if len(providers) > 1:
        warnings.append("multiple providers are not currently supported; only the first is used")
    if providers:
        first = Fields(providers[0], f"{entry.path}.providers[0]", entry.source, entry.what)
        provider = first.string("name")
        if not provider:
            raise first.error("name", "must not be empty", "name an extension provider from meshConfig")
    sampling = entry.number("randomSamplingPercentage")
    if sampling is not None and not 0 <= sampling <= 100:
        raise entry.error("randomSamplingPercentage", f"{sampling:g} is not within [0, 100]", "use a percentage")
    tags = None
    if entry.has("customTags"):
        raw = entry.get("customTags") or {}
        if not isinstance(raw, dict):
            raise entry.error("customTags", "must be a mapping of tag name to tag")
        parsed = []
        for name, tag in raw.items():
            if tag is None:
                raise entry.error(
                    f"customTags.{name}", "tag must have a type", "give it literal, environment or header"
                )
            parsed.append(
                parse_custom_tag(str(name), Fields(tag, f"{entry.path}.customTags.{name}", entry.source, entry.what))
            )
        tags = tuple(parsed)
    return TracingRule(
        mode=mode,
        provider=provider,
        sampling=sampling,
        disable_span_reporting=entry.boolean("disableSpanReporting"),
        use_request_id=entry.boolean("useRequestIdForTraceSampling"),
        istio_tags=entry.boolean("enableIstioTags"),
        disable_context_propagation=entry.boolean("disableContextPropagation"),
        custom_tags=tags,
    )


@dataclass(frozen=True, slots=True)
class SideSpec:
    """One side's merged tracing; ``provider is None`` means tracing is off for that side."""

    provider: ExtensionProvider | None
    sampling: float | None = None
    disable_span_reporting: bool = False
    use_request_id: bool = True
    istio_tags: bool = True
    disable_context_propagation: bool = False
    custom_tags: tuple[tuple[str, str, str, str], ...] | None = None
    missing_provider: str = ""  # a name that matched no extension provider


@dataclass(slots=True)
class Merged:
    client: SideSpec | None
    server: SideSpec | None
    applied: list[str] = field(default_factory=list)  # Telemetry ids, in order
    legacy: bool = False  # no Telemetry and no default provider: Istio's legacy path (no tracer)


def applicable(telemetries: list[Telemetry], namespace: str, labels: dict[str, str]) -> list[Telemetry]:
    """The Telemetry resources that apply to a proxy in ``namespace`` with pod ``labels``, in order."""
    ordered = sorted(telemetries, key=lambda t: (t.created, t.name))
    chosen: list[Telemetry] = []
    root = [t for t in ordered if t.namespace == ROOT_NAMESPACE and t.selector is None and not t.target_refs]
    if root:
        chosen.append(root[0])
    if namespace != ROOT_NAMESPACE:
        local = [t for t in ordered if t.namespace == namespace and t.selector is None and not t.target_refs]
        if local:
            chosen.append(local[0])
    for telemetry in ordered:
        selector = telemetry.selector
        if telemetry.namespace == namespace and selector is not None and Selector.from_labels(selector).matches(labels):
            chosen.append(telemetry)
    return chosen


def merge(telemetries: list[Telemetry], mesh: MeshConfig, namespace: str, labels: dict[str, str]) -> Merged:
    chosen = applicable(telemetries, namespace, labels)
    if not chosen and not mesh.default_tracing_providers:
        return Merged(None, None, [], legacy=True)
    default_name = mesh.default_tracing_providers[0] if mesh.default_tracing_providers else ""
    base = _with_provider(SideSpec(None), default_name, mesh) if default_name else SideSpec(None)
    client, server = base, base
    for telemetry in chosen:
        for rule in telemetry.rules:
            if rule.mode in ("CLIENT", "CLIENT_AND_SERVER"):
                client = _apply(client, rule, mesh)
            if rule.mode in ("SERVER", "CLIENT_AND_SERVER"):
                server = _apply(server, rule, mesh)
    return Merged(client, server, [t.id for t in chosen])


def _with_provider(spec: SideSpec, name: str, mesh: MeshConfig) -> SideSpec:
    provider = mesh.provider(name)
    if provider is None:
        return replace(spec, provider=None, missing_provider=name)
    if not provider.traces:
        return replace(spec, provider=None, missing_provider="")
    return replace(spec, provider=provider, missing_provider="")


def _apply(spec: SideSpec, rule: TracingRule, mesh: MeshConfig) -> SideSpec:
    if rule.provider is not None:
        spec = _with_provider(spec, rule.provider, mesh)
    changes: dict[str, object] = {}
    for name in (
        "sampling",
        "disable_span_reporting",
        "use_request_id",
        "istio_tags",
        "disable_context_propagation",
        "custom_tags",
    ):
        value = getattr(rule, name)
        if value is not None:
            changes[name] = value
    return replace(spec, **changes)  # type: ignore[arg-type]
