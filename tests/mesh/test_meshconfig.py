"""The seed's IstioOperator files, and istiod's validation of extension providers."""

from __future__ import annotations

import pytest

from meshtrace.mesh.istio.meshconfig import from_istio_operator
from meshtrace.mesh.resources import ResourceError, parse


def operator(text: str, name: str = "op.yaml"):
    return from_istio_operator(parse(name, text).objects[0])


def test_tutorial_provider_is_otlp_grpc(seed):
    mesh = operator((seed / "istio-otel-config-tutorial.yaml").read_text())
    provider = mesh.provider("otel-tracing")
    assert provider is not None
    assert (provider.kind, provider.transport, provider.port) == ("opentelemetry", "grpc", 4317)
    assert provider.service == "opentelemetry-collector.observability.svc.cluster.local"
    assert provider.environment_detector  # written resource_detectors (snake_case) in the seed
    assert mesh.enable_tracing
    assert mesh.pilot_trace_sampling == 1.0
    assert mesh.provider("OTEL-TRACING") is provider  # Telemetry looks names up case-insensitively


def test_http_provider_has_path_timeout_and_headers(seed):
    provider = operator((seed / "istio-otel-config-http.yaml").read_text()).provider("otel-tracing")
    assert provider is not None
    assert (provider.transport, provider.port, provider.path, provider.timeout) == ("http", 4318, "/v1/traces", 5.0)
    assert provider.headers == (("custom-header", "custom value"),)


def test_placeholder_service_is_rejected_with_the_fix(seed):
    with pytest.raises(ResourceError) as err:
        operator((seed / "istio-otel-config-grpc.yaml").read_text(), "istio-otel-config-grpc.yaml")
    message = str(err.value)
    assert "istio-otel-config-grpc.yaml, document 1" in message
    assert "spec.meshConfig.extensionProviders[0].opentelemetry.service" in message
    assert "<service-name>.<namespace>.svc.cluster.local" in message
    assert "fix: use the collector Service's FQDN" in message
    assert (
        operator(
            (seed / "istio-otel-config-grpc.yaml").read_text().replace("<service-name>.<namespace>", "c.o")
        ).default_config.tracing_service_name
        == "APP_LABEL_AND_NAMESPACE"
    )


BASE = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  meshConfig:\n"


@pytest.mark.parametrize(
    ("mesh", "words"),
    [
        (
            "    extensionProviders:\n    - name: a\n"
            "      opentelemetry: {service: c.o.svc.cluster.local, port: 70000}\n",
            "is not a port",
        ),
        (
            "    extensionProviders:\n    - name: a\n      opentelemetry: {service: c.o, port: 4317}\n"
            "    - name: a\n      zipkin: {service: z.o, port: 9411}\n",
            "duplicate extension provider name",
        ),
        (
            "    extensionProviders:\n    - name: a\n"
            "      opentelemetry: {service: c.o, port: 4318, http: {path: /v1/traces}, grpc: {}}\n",
            "not both",
        ),
        (
            "    extensionProviders:\n    - name: a\n      opentelemetry: {service: c.o, port: 4317, servcie: x}\n",
            "unknown field 'servcie'",
        ),
        ("    extensionProviders:\n    - opentelemetry: {service: c.o, port: 4317}\n", "name: is required"),
        (
            "    extensionProviders:\n    - name: a\n      opentelemetry: {service: c.o, port: 4318, http: {}}\n",
            "path: is required",
        ),
        ("    defaultConfig: {tracingServiceName: APP_LABEL, serviceCluster: x}\n", "only one of"),
        ("    defaultConfig: {tracingServiceName: APP_LABEL}\n", "not a tracing service name mode"),
    ],
)
def test_validation_like_istiod(mesh, words):
    with pytest.raises(ResourceError, match=words):
        operator(BASE + mesh)


def test_sampling_fallbacks():
    demo = operator("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {profile: demo}\n")
    assert demo.pilot_trace_sampling == 100.0
    out_of_range = operator(BASE + "    defaultConfig: {tracing: {sampling: 150}}\n")
    assert out_of_range.default_config.sampling == 1.0
    zero = operator(BASE + "    defaultConfig: {tracing: {sampling: 0}}\n")
    assert zero.default_config.sampling is None  # 0 means unset
    values = operator(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  values: {pilot: {traceSampling: 30}}\n"
    )
    assert values.pilot_trace_sampling == 30.0
