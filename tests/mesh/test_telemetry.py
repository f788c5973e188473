"""Istio's Telemetry hierarchy and merge rules (root namespace, namespace, selector; modes; inheritance)."""

from __future__ import annotations

import itertools

import pytest

from meshtrace.mesh.istio.meshconfig import ExtensionProvider, MeshConfig
from meshtrace.mesh.istio.telemetry import merge, parse_telemetry
from meshtrace.mesh.resources import ResourceError, parse

MESH = MeshConfig(
    providers=(
        ExtensionProvider("otel", "opentelemetry", "c.o.svc.cluster.local", 4317),
        ExtensionProvider("zip", "zipkin", "z.o.svc.cluster.local", 9411),
    )
)
_created = itertools.count(1)


def telemetry(namespace: str, spec: str, name: str = "t"):
    text = (
        f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
    obj = parse("t.yaml", text).objects[0]
    obj.created = next(_created)
    return parse_telemetry(obj)


def test_seed_telemetry_without_namespace_reaches_only_its_namespace(seed):
    obj = parse("istio-telemetry.yaml", (seed / "istio-telemetry.yaml").read_text()).objects[0]
    assert obj.namespace == "default"
    rules = [parse_telemetry(obj)]
    mesh = MeshConfig(providers=(ExtensionProvider("otel-tracing", "opentelemetry", "c.o.svc.cluster.local", 4317),))
    app = merge(rules, mesh, "default", {"app": "productpage"})
    assert app.client
    assert app.client.provider
    assert app.client.sampling == 100
    gateway = merge(rules, mesh, "istio-system", {"istio": "ingressgateway"})
    assert gateway.legacy
    assert gateway.client is None


def test_root_then_namespace_then_selector_each_overwriting_what_they_set():
    rules = [
        telemetry("istio-system", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 10\n"),
        telemetry("default", "  tracing:\n  - randomSamplingPercentage: 50\n"),
        telemetry(
            "default",
            "  selector: {matchLabels: {app: reviews}}\n"
            "  tracing:\n  - match: {mode: SERVER}\n    disableSpanReporting: true\n",
            "r",
        ),
    ]
    reviews = merge(rules, MESH, "default", {"app": "reviews"})
    assert reviews.client
    assert reviews.client.sampling == 50
    assert not reviews.client.disable_span_reporting
    assert reviews.server
    assert reviews.server.disable_span_reporting
    assert reviews.server.provider.name == "otel"
    other = merge(rules, MESH, "default", {"app": "details"})
    assert other.server
    assert not other.server.disable_span_reporting
    elsewhere = merge(rules, MESH, "shop", {"app": "reviews"})
    assert elsewhere.client
    assert elsewhere.client.sampling == 10


def test_only_the_oldest_selectorless_telemetry_of_a_namespace_counts():
    rules = [
        telemetry("default", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 5\n", "old"),
        telemetry("default", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 95\n", "new"),
    ]
    assert merge(rules, MESH, "default", {}).client.sampling == 5  # type: ignore[union-attr]


def test_selector_telemetry_in_root_namespace_only_matches_root_workloads():
    rules = [
        telemetry(
            "istio-system", "  selector: {matchLabels: {app: reviews}}\n  tracing:\n  - providers: [{name: otel}]\n"
        )
    ]
    assert merge(rules, MESH, "default", {"app": "reviews"}).legacy


def test_missing_provider_disables_and_is_named():
    rules = [telemetry("istio-system", "  tracing:\n  - providers: [{name: nope}]\n")]
    merged = merge(rules, MESH, "default", {})
    assert merged.client
    assert merged.client.provider is None
    assert merged.client.missing_provider == "nope"


def test_sampling_only_telemetry_without_default_provider_disables():
    merged = merge([telemetry("istio-system", "  tracing:\n  - randomSamplingPercentage: 100\n")], MESH, "default", {})
    assert merged.client
    assert merged.client.provider is None


def test_default_providers_trace_without_any_telemetry():
    mesh = MeshConfig(default_tracing_providers=("otel",), providers=MESH.providers)
    merged = merge([], mesh, "default", {})
    assert merged.client
    assert merged.client.provider
    assert merged.client.sampling is None


def test_custom_tags_are_replaced_whole_and_modes_split():
    rules = [
        telemetry(
            "istio-system",
            "  tracing:\n  - providers: [{name: otel}]\n    customTags:\n      a: {literal: {value: x}}\n",
        ),
        telemetry(
            "default",
            "  tracing:\n  - match: {mode: CLIENT}\n"
            "    customTags:\n      b: {header: {name: x-b}}\n    providers: [{name: zip}]\n",
        ),
    ]
    merged = merge(rules, MESH, "default", {})
    assert merged.client
    assert merged.client.custom_tags == (("b", "header", "x-b", ""),)
    assert merged.client.provider
    assert merged.client.provider.name == "zip"
    assert merged.server
    assert merged.server.custom_tags == (("a", "literal", "x", ""),)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("  tracing:\n  - randomSamplingPercentage: 101\n", "not within"),
        ("  tracing:\n  - providers: [{name: ''}]\n", "must not be empty"),
        ("  tracing:\n  - customTags:\n      a: {literal: {value: ''}}\n", "may not be empty"),
        ("  tracing:\n  - match: {mode: BOTH}\n", "not a workload mode"),
        (
            "  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Gateway, name: g}]\n",
            "only one of targetRefs or selector",
        ),
    ],
)
def test_validation(spec, words):
    with pytest.raises(ResourceError, match=words):
        telemetry("default", spec)


def test_warnings_for_several_tracing_entries_or_providers():
    t = telemetry(
        "default", "  tracing:\n  - providers: [{name: otel}, {name: zip}]\n  - randomSamplingPercentage: 1\n"
    )
    assert len(t.warnings) == 2
