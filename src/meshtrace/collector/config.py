"""OpenTelemetry Collector configuration: load, merge, substitute, validate — with upstream's error wording.

- Several ``--config`` files merge in order (maps merge key by key, anything else is replaced), then each
  ``--set a::b::c=value`` applies (value read as YAML).
- ``${env:NAME}``, ``${env:NAME:-default}`` and ``${NAME}`` are replaced; a value that is nothing but
  one reference takes the type of what it expands to (``${env:PORT}`` → 4317 as a number); ``$$`` is ``$``.
- Component ids are ``type[/name]``. Each type has a model that refuses unknown keys, as upstream does.
- Deprecated forms that upstream has removed are accepted, rewritten, and reported as warnings that say
  what replaced them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from meshtrace.collector.data import Signal
from meshtrace.errors import ConfigError

SECTIONS = ("receivers", "processors", "exporters", "extensions")
KINDS = {"receivers": "receiver", "processors": "processor", "exporters": "exporter", "extensions": "extension"}
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[^/\s]+)?$")
_REF_RE = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class CollectorConfigError(ConfigError):
    """A configuration upstream would refuse; the message is worded like upstream's."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    id: str
    type: str
    name: str
    settings: BaseModel


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    id: str
    signal: Signal
    receivers: list[str]
    processors: list[str]
    exporters: list[str]


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    metrics_level: str = "normal"
    metrics_address: str | None = "localhost:8888"
    log_level: str = "info"


@dataclass(slots=True)
class CollectorConfig:
    receivers: dict[str, ComponentConfig] = field(default_factory=dict)
    processors: dict[str, ComponentConfig] = field(default_factory=dict)
    exporters: dict[str, ComponentConfig] = field(default_factory=dict)
    extensions: dict[str, ComponentConfig] = field(default_factory=dict)
    service_extensions: list[str] = field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = field(default_factory=dict)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    warnings: list[str] = field(default_factory=list)


# -- loading ---------------------------------------------------------------------------------------


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise CollectorConfigError(f"cannot read the configuration file {path}: no such file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise CollectorConfigError(f"cannot parse {path}{where}: {getattr(exc, 'problem', exc)}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise CollectorConfigError(f"{path}: the configuration must be a map of sections")
    return doc


def merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Maps merge key by key; a non-map value (lists included) replaces what was there."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def apply_set(doc: dict[str, Any], assignment: str) -> dict[str, Any]:
    """``--set exporters::otlp::endpoint=backend:4317`` (``::`` separates levels, as upstream)."""
    path, sep, value = assignment.partition("=")
    if not sep or not path:
        raise CollectorConfigError(f"--set {assignment!r}: expected key::path=value")
    keys = path.split("::")
    nested: Any = yaml.safe_load(value) if value else None
    for key in reversed(keys):
        nested = {key: nested}
    return merge(doc, nested)


def expand_env(value: Any, env: Mapping[str, str], missing: list[str]) -> Any:
    """Replace ``${env:X}``/``${X}`` references in every string of the document."""
    if isinstance(value, dict):
        return {k: expand_env(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, missing) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    whole = _REF_RE.fullmatch(value)
    expanded = _REF_RE.sub(replace, value)
    if whole and whole.group(0) != "$$":
        try:
            return yaml.safe_load(expanded) if expanded else None
        except yaml.YAMLError:
            return expanded
    return expanded


def load_documents(paths: list[str], sets: list[str], env: Mapping[str, str] | None = None) -> tuple[dict, list]:
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    for path in paths:
        doc = merge(doc, _read(path))
    for assignment in sets:
        doc = apply_set(doc, assignment)
    missing: list[str] = []
    doc = expand_env(doc, env, missing)
    warnings = [f"environment variable {name!r} is not set; it was replaced with an empty string" for name in missing]
    return doc, warnings


# -- validation ------------------------------------------------------------------------------------


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = "::".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"'{'::'.join(str(p) for p in item['loc'][:-1])}' has invalid keys: {item['loc'][-1]}")
        else:
            lines.append(f"'{where}' {item['msg'].removeprefix('Value error, ')}")
    return "decoding failed due to the following error(s):\n\n" + "\n".join(lines)


def _split_id(section: str, component_id: Any) -> tuple[str, str]:
    text = str(component_id)
    if not _ID_RE.match(text):
        raise CollectorConfigError(f"'{section}' has invalid id {text!r}: expected type[/name]")
    type_, _, name = text.partition("/")
    return type_, name


def build(doc: dict[str, Any], warnings: list[str] | None = None) -> CollectorConfig:
    """Validate a merged document against the registered component types."""
    from meshtrace.collector.registry import load_builtins

    FACTORIES = load_builtins()
    config = CollectorConfig(warnings=list(warnings or []))
    unknown = set(doc) - {*SECTIONS, "service", "connectors"}
    if unknown:
        raise CollectorConfigError(f"'' has invalid keys: {', '.join(sorted(map(str, unknown)))}")
    if doc.get("connectors"):
        raise CollectorConfigError("'connectors' are not supported by meshtrace collector")
    for section in SECTIONS:
        entries = doc.get(section) or {}
        if not isinstance(entries, dict):
            raise CollectorConfigError(f"'{section}' expected a map, got '{type(entries).__name__}'")
        target: dict[str, ComponentConfig] = getattr(config, section)
        for component_id, raw in entries.items():
            type_, name = _split_id(section, component_id)
            factory = FACTORIES.get((KINDS[section], type_))
            if factory is None:
                valid = sorted(t for kind, t in FACTORIES if kind == KINDS[section])
                raise CollectorConfigError(
                    f'\'{section}\' unknown type: "{type_}" for id: "{component_id}" '
                    f"(valid values: [{' '.join(valid)}])"
                )
            settings = dict(raw) if isinstance(raw, dict) else {}
            if raw is not None and not isinstance(raw, dict):
                raise CollectorConfigError(
                    f"error decoding '{section}': error reading configuration for \"{component_id}\": "
                    f"expected a map, got '{type(raw).__name__}'"
                )
            if factory.migrate is not None:
                settings, notes = factory.migrate(settings)
                config.warnings += [f"{section}::{component_id}: {note}" for note in notes]
            try:
                model = factory.config_model.model_validate(settings)
            except ValidationError as exc:
                raise CollectorConfigError(
                    f"error decoding '{section}': error reading configuration for \"{component_id}\": {_describe(exc)}"
                ) from None
            target[str(component_id)] = ComponentConfig(str(component_id), factory.type, name, model)
    _build_service(doc.get("service") or {}, config)
    return config


def _map(value: Any, where: str) -> dict[Any, Any]:
    """``value`` as a map (None is empty), or the Collector's error for ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CollectorConfigError(f"'{where}' expected a map, got '{type(value).__name__}'")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CollectorConfigError(f"'{where}' source data must be an array or slice, got {type(value).__name__}")
    return value


def _build_service(service: Any, config: CollectorConfig) -> None:
    from meshtrace.collector.registry import load_builtins

    FACTORIES = load_builtins()
    if not isinstance(service, dict):
        raise CollectorConfigError("'service' expected a map")
    unknown = set(service) - {"extensions", "pipelines", "telemetry"}
    if unknown:
        raise CollectorConfigError(f"'service' has invalid keys: {', '.join(sorted(map(str, unknown)))}")
    for ext in _list(service.get("extensions"), "service::extensions"):
        if str(ext) not in config.extensions:
            raise CollectorConfigError(f'service::extensions: references extension "{ext}" which is not configured')
        config.service_extensions.append(str(ext))
    pipelines = _map(service.get("pipelines"), "service::pipelines")
    if not pipelines:
        raise CollectorConfigError("service must have at least one pipeline")
    for pipeline_id, spec in pipelines.items():
        signal_name, _, _ = str(pipeline_id).partition("/")
        try:
            signal = Signal(signal_name)
        except ValueError:
            raise CollectorConfigError(
                f'service::pipelines: unknown signal "{signal_name}" for pipeline "{pipeline_id}" '
                "(valid values: [logs metrics traces])"
            ) from None
        where = f"service::pipelines::{pipeline_id}"
        spec = _map(spec, where)
        extra = set(spec) - {"receivers", "processors", "exporters"}
        if extra:
            raise CollectorConfigError(f"'{where}' has invalid keys: {', '.join(sorted(map(str, extra)))}")
        lists: dict[str, list[str]] = {}
        for section in ("receivers", "processors", "exporters"):
            items = [str(x) for x in _list(spec.get(section), f"{where}::{section}")]
            known: dict[str, ComponentConfig] = getattr(config, section)
            for item in items:
                if item not in known:
                    raise CollectorConfigError(f'{where}: references {KINDS[section]} "{item}" which is not configured')
                factory = FACTORIES[(KINDS[section], known[item].type)]
                if signal not in factory.signals:
                    raise CollectorConfigError(
                        f'failed to build pipelines: failed to create "{item}" {KINDS[section]} '
                        f'for data type "{signal}": telemetry type is not supported'
                    )
            lists[section] = items
        for section in ("receivers", "exporters"):
            if not lists[section]:
                raise CollectorConfigError(f"{where}: must have at least one {KINDS[section]}")
        config.pipelines[str(pipeline_id)] = PipelineConfig(
            str(pipeline_id), signal, lists["receivers"], lists["processors"], lists["exporters"]
        )
    config.telemetry = _telemetry(service.get("telemetry") or {})


def _telemetry(spec: Any) -> TelemetryConfig:
    spec = _map(spec, "service::telemetry")
    metrics = _map(spec.get("metrics"), "service::telemetry::metrics")
    logs = _map(spec.get("logs"), "service::telemetry::logs")
    level = str(metrics.get("level", "normal")).lower()
    if level not in ("none", "basic", "normal", "detailed"):
        raise CollectorConfigError(f'service::telemetry::metrics::level: unknown level "{level}"')
    address: str | None = metrics.get("address")
    for i, reader in enumerate(_list(metrics.get("readers"), "service::telemetry::metrics::readers")):
        where = f"service::telemetry::metrics::readers::{i}"
        pull = _map(_map(reader, where).get("pull"), f"{where}::pull")
        exporter = _map(pull.get("exporter"), f"{where}::pull::exporter")
        prometheus = _map(exporter.get("prometheus"), f"{where}::pull::exporter::prometheus")
        if prometheus:
            address = f"{prometheus.get('host', 'localhost')}:{prometheus.get('port', 8888)}"
    if address is None and not metrics.get("readers"):
        address = "localhost:8888"
    return TelemetryConfig(
        metrics_level=level,
        metrics_address=None if level == "none" else address,
        log_level=str(logs.get("level", "info")).lower(),
    )


def load(paths: list[str], sets: list[str] | None = None, env: Mapping[str, str] | None = None) -> CollectorConfig:
    """Files + ``--set`` + environment → a validated configuration (or ``CollectorConfigError``)."""
    if not paths:
        raise CollectorConfigError("at least one --config file is required")
    doc, warnings = load_documents(paths, sets or [], env)
    return build(doc, warnings)
