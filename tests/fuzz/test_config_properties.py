"""Wrong YAML gets a clear error and nothing else: generated and mutated configurations for the
Collector, the mesh's Kubernetes and Istio resources, and ``meshtrace serve`` raise only ``ConfigError``
(which names the file, the path and the fix), never a crash."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshtrace.collector.config import build
from meshtrace.config import build_config
from meshtrace.errors import ConfigError
from meshtrace.mesh.resources import parse

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["", "0.0.0.0:4317", "localhost:4318", "${env:X}", "otlp", "batch", "traces", "1h", "-1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# The tutorial's manifests as meshtrace ships them (the same documents as the guide's YAML).
MANIFESTS = resources.files("meshtrace.mesh").joinpath("manifests")
RESOURCES = [
    d
    for f in sorted(MANIFESTS.iterdir(), key=lambda f: f.name)
    if f.name.endswith(".yaml")
    for d in yaml.safe_load_all(f.read_text())
    if d
]
COLLECTOR = yaml.safe_load(
    next(d for d in RESOURCES if d["kind"] == "ConfigMap" and "opentelemetry-collector-config" in d.get("data", {}))[
        "data"
    ]["opentelemetry-collector-config"]
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """A valid document with one to three values anywhere in it replaced by anything."""
    doc = base
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        doc = _replace(doc, draw(st.sampled_from(paths)), draw(VALUES))
    return doc


def _error_of(fn: Any, *args: Any) -> str | None:
    """The ConfigError's text, or None when the input was valid; any other exception fails the test."""
    try:
        fn(*args)
    except ConfigError as exc:
        return str(exc)
    return None


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.one_of(mutated(COLLECTOR), VALUES))
def test_collector_configs_fail_only_with_a_config_error(doc: Any) -> None:
    message = _error_of(build, doc if isinstance(doc, dict) else {"receivers": doc})
    assert message is None or message


@FAST
@given(st.sampled_from(RESOURCES).flatmap(mutated))
def test_kubernetes_and_istio_resources_fail_only_with_a_config_error(doc: Any) -> None:
    message = _error_of(parse, "mutated.yaml", yaml.safe_dump(doc))
    assert message is None or "mutated.yaml" in message


@FAST
@given(st.dictionaries(st.sampled_from(["grpc", "retention", "max_body", "tokens", "writers", "store", "x"]), VALUES))
def test_serve_settings_fail_only_with_a_config_error(values: dict[str, Any]) -> None:
    message = _error_of(build_config, values, "meshtrace.yaml", {})
    assert message is None or "meshtrace.yaml" in message
